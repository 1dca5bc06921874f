# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test system-deps lint clean golden dashboards bench

run: $(VENV)/.installed
	$(VENV)/bin/mtt-exporter $(ARGS)

test: $(VENV)/.test-installed system-deps $(SCHEMA_CHECK)/node_modules/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

# Regenerate the golden exposition after an intended change of the metrics.
golden: $(VENV)/.test-installed
	$(PY) -m pytest tests/test_golden.py --update-golden

# Regenerate dashboards/*.json, rules/*.yml and the runbook's threshold table from CONFIG (a YAML
# file merged over dashboards/config.yml), into OUT (default: this repository).
CONFIG ?= dashboards/config.yml
OUT ?=
dashboards: $(VENV)/.test-installed
	$(PY) dashboards/generate.py --config $(CONFIG) $(if $(OUT),--out $(OUT))

# The benchmarks of BENCHMARKS.md (minutes; needs wrk and taskset). ARGS="--only render" etc.
bench: $(VENV)/.test-installed system-deps
	$(PY) bench/run.py $(ARGS)

# Grafana's schema and tsc for the dashboards' type check (tests/test_dashboards.py), from the lock file;
# without npm the check skips (and fails in CI).
SCHEMA_CHECK := dashboards/schema-check
$(SCHEMA_CHECK)/node_modules/.installed: $(SCHEMA_CHECK)/package.json $(SCHEMA_CHECK)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(SCHEMA_CHECK) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm missing: the dashboards' Grafana schema check will skip" >&2; fi

# promtool (Debian's prometheus) and friends; installs only where apt-get and root allow.
system-deps:
	@sh scripts/system-deps.sh

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
	rm -rf $(VENV) build dist *.egg-info .pytest_cache $(SCHEMA_CHECK)/node_modules
