"""The package and the image: one version, metadata PyPI accepts, an sdist without half the
tests, and a Docker build that installs exactly the locked packages (hadolint-clean)."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
from email.parser import HeaderParser

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from trove_classifiers import classifiers as KNOWN_CLASSIFIERS

import mtt_exporter

from .conftest import need_binary
from .grafana import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "deploy" / "requirements.lock"
DOCKERFILE = ROOT / "Dockerfile"


def locked() -> dict[str, tuple[str, int]]:
    """name -> (pinned version, number of hashes) of deploy/requirements.lock."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            current = canonicalize_name(match[1])
            pins[current] = (match[2], 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            pins[current] = (pins[current][0], pins[current][1] + 1)
    return pins


def test_version_has_one_source():
    assert PYPROJECT["project"]["dynamic"] == ["version"] and "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mtt_exporter.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", mtt_exporter.__version__)
    assert mtt_exporter.__version__ not in DOCKERFILE.read_text()  # `make image` passes it


def test_classifiers_are_known_and_urls_set():
    project = PYPROJECT["project"]
    assert set(project["classifiers"]) <= KNOWN_CLASSIFIERS, set(project["classifiers"]) - KNOWN_CLASSIFIERS
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]  # SPDX `license` instead
    assert {"Homepage", "Changelog", "Issues"} <= set(project["urls"])


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """`python -m build --sdist` (no isolation: the test extra has setuptools; offline)."""
    out = tmp_path_factory.mktemp("sdist")
    result = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = out.glob("*.tar.gz")
    return path


def test_sdist_has_the_package_and_no_tests(sdist):
    with tarfile.open(sdist) as tar:
        names = {name.partition("/")[2] for name in tar.getnames()}
        metadata = HeaderParser().parsestr(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("/PKG-INFO") and m.name.count("/") == 1)).read().decode())
    assert {"pyproject.toml", "README.md", "LICENSE", "mtt_exporter/__main__.py", "mtt_exporter/healthcheck.py"} <= names
    # the tests need rules/, dashboards/, deploy/ and bench/: they stay out rather than ship broken
    assert not [n for n in names if n.startswith("tests")]
    assert metadata["Version"] == mtt_exporter.__version__
    assert set(metadata.get_all("Classifier")) == set(PYPROJECT["project"]["classifiers"])
    assert metadata["License-Expression"] == "Apache-2.0"


def test_lock_pins_every_dependency_with_hashes():
    pins = locked()
    project = PYPROJECT["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["redis"]]
    wanted += [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]]
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} not in {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(pins[name][0]), f"{name}=={pins[name][0]} outside {requirement}: `make lock`"
    assert all(count > 0 for _, count in pins.values()), "every pin needs its hashes"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_image_is_built_from_the_lock_on_a_pinned_base():
    instructions = dockerfile_instructions()
    (base,) = [rest for op, rest in instructions if op == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    # a Python patch release and a Debian suite, not `3.11-slim` (whatever it points at today)
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.\d+\.\d+-slim-(bookworm|trixie)", base), base
    assert [rest for op, rest in instructions if op == "FROM"] == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    runs = " ".join(rest for op, rest in instructions if op == "RUN")
    assert "--require-hashes --no-deps -r requirements.lock" in runs  # only the locked packages
    assert "--no-deps --no-build-isolation --no-index ." in runs  # the exporter: no other download
    labels = " ".join(rest for op, rest in instructions if op == "LABEL")
    for key, arg in [("revision", "REVISION"), ("created", "CREATED"), ("version", "VERSION")]:
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in labels
    makefile = (ROOT / "Makefile").read_text()
    assert all(f"--build-arg {arg}=" in makefile for arg in ("VERSION", "REVISION", "CREATED"))


def test_healthcheck_needs_no_flags_or_environment():
    (healthcheck,) = [rest for op, rest in dockerfile_instructions() if op == "HEALTHCHECK"]
    assert healthcheck.endswith('CMD ["mtt-exporter", "healthcheck"]')  # reads PID 1's flags (test_healthcheck)


def hadolint(path) -> subprocess.CompletedProcess:
    return subprocess.run([need_binary("hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_dockerfile_passes_hadolint():
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("line, rule", [
    pytest.param("FROM python:latest", "DL3007", id="latest tag"),
    pytest.param("FROM python:3.11.14-slim-bookworm\nRUN pip install redis", "DL3013", id="unpinned pip install"),
])
def test_hadolint_can_fail(tmp_path, line, rule):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(line + "\n")
    result = hadolint(dockerfile)
    assert result.returncode != 0 and rule in result.stdout, result.stdout + result.stderr
