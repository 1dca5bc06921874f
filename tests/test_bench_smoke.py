"""Seconds-long runs of the long scripts in bench/, so they keep working (results: docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .process import ROOT


def run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_fuzz_smoke(tmp_path):
    result = run("fuzz.py", "--smoke", "--out", str(tmp_path / "fuzz.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "fuzz.json").read_text())
    assert summary["requests"] == 2000 and summary["passed"]
    assert not any(status.startswith("5") for status in summary["statuses"])


@pytest.mark.parametrize("restarts", [0, 1])
def test_soak_smoke(tmp_path, restarts):
    result = run("soak.py", "--notifications", "1500", "--restarts", str(restarts), "--grace", "4",
                 "--out", str(tmp_path / "soak.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "soak.json").read_text())
    assert summary["difference_count"] == 0 and summary["notifications_posted"] >= 1400


def test_state_smoke():
    result = run("state.py", "--calls", "2000")
    assert result.returncode == 0, result.stderr
    assert "| 2,000 |" in result.stdout
