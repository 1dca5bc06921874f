# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test system-deps node-deps lint clean golden dashboards bench bench-state lock image demo pictures

run: $(VENV)/.installed
	$(VENV)/bin/mtt-exporter $(ARGS)

test: $(VENV)/.test-installed system-deps node-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# Regenerate the golden exposition after an intended change of the metrics.
golden: $(VENV)/.test-installed
	$(PY) -m pytest tests/test_golden.py --update-golden

# Regenerate dashboards/*.json, rules/*.yml and the runbook's threshold table from CONFIG (a YAML
# file merged over dashboards/config.yml), into OUT (default: this repository); then the
# Kubernetes objects that embed them (deploy/kubernetes/base).
CONFIG ?= dashboards/config.yml
OUT ?=
dashboards: $(VENV)/.test-installed
	$(PY) dashboards/generate.py --config $(CONFIG) $(if $(OUT),--out $(OUT))
	$(PY) deploy/kubernetes/generate.py $(if $(OUT),--root $(OUT) --out $(OUT)/deploy/kubernetes/base)

# Post 20 simulated calls, timed now, to the exporter of `make run` (token: MTT_EXPORTER_TOKEN) and
# print the numbers it must show.
demo: $(VENV)/.installed
	$(VENV)/bin/mtt-exporter simulate --calls 20 --rate 2 --speed 20 --talk-max 300 $(ARGS)

# docs/pictures/*.png: every dashboard panel's PromQL on a real Prometheus fed by the simulator
# (about 6 minutes; needs prometheus, see system-deps). ARGS="--minutes 2" for a quicker run.
pictures: $(VENV)/.test-installed system-deps
	$(PY) scripts/render_dashboards.py $(ARGS)

# The benchmarks of BENCHMARKS.md (minutes; needs wrk, taskset and valgrind). ARGS="--only render" etc.
# BASELINE=dir: an older checkout measured beside this one (git archive b0344c1 | tar -x -C dir).
BASELINE ?=
bench: $(VENV)/.test-installed system-deps
	$(PY) bench/run.py $(if $(BASELINE),--baseline-path $(BASELINE)) $(ARGS)
	$(PY) bench/callgrind.py --out bench/callgrind.json
	$(PY) bench/callgrind.py --loop uvloop --out bench/callgrind-uvloop.json
	$(if $(BASELINE),$(PY) bench/callgrind.py --kinds exporter --exporter-path $(BASELINE) --out bench/callgrind-baseline.json)
	$(MAKE) bench-state

# BENCHMARKS.md, *Shared state on Redis*: loopback vs memory, and Redis 200 ms away (~5 min).
bench-state: $(VENV)/.test-installed system-deps
	$(PY) bench/state_backend.py --duration 5 --rounds 3
	$(PY) bench/state_backend.py --rtt 0.2 --calls 1500 --rounds 3

# deploy/requirements.lock: every package of the image, pinned with hashes (the Dockerfile
# installs only it). Rerun after changing dependencies; ARGS=--upgrade moves every pin.
lock: $(VENV)/.test-installed
	$(PY) -m pip install -q pip-tools
	$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --extra redis \
	    --build-deps-for wheel --no-emit-index-url --no-emit-find-links \
	    --output-file deploy/requirements.lock $(ARGS) pyproject.toml

# The container image, labelled with the version, the commit and its time (not the build's:
# two builds of one commit get the same labels).
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' mtt_exporter/__init__.py)
image:
	docker build --build-arg VERSION=$(VERSION) --build-arg REVISION="$$(git rev-parse HEAD)" \
	    --build-arg CREATED="$$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ)" \
	    -t mtt-call-exporter:$(VERSION) .

# promtool (Debian's prometheus) and friends; installs only where apt-get and root allow.
system-deps:
	@sh scripts/system-deps.sh

# npm packages of the Kubernetes and Grafana schema checks, exactly as locked; skipped
# without npm (the tests needing them then skip locally and fail in CI).
NODE_DIRS := tests/kubernetes dashboards/schema-check
node-deps:
	@if command -v npm >/dev/null 2>&1; then for d in $(NODE_DIRS); do \
	    [ $$d/node_modules/.package-lock.json -nt $$d/package-lock.json ] || \
	    npm ci --prefix $$d --no-audit --no-fund --loglevel=error || \
	    echo "node-deps: npm ci failed in $$d; tests needing it will skip (fail in CI)" >&2; done; \
	else echo "node-deps: npm missing (apt-get install nodejs npm); tests needing it will skip" >&2; fi

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	@touch $@

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis $(NODE_DIRS:%=%/node_modules)
