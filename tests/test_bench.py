"""Seconds-long runs of bench/run.py and bench/callgrind.py, so the benchmarks keep working (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import need_binary

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke(tmp_path):
    need_binary("wrk")
    out = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(out.read_text())
    assert results["smoke"] is True
    for loop in ("asyncio", "uvloop"):
        assert results["throughput"][loop]["exporter_rps"][0] > 0 and results["throughput"][loop]["bare_rps"][0] > 0
    assert results["latency"]["scrapes_50k"]["series"] > 40_000
    assert results["latency"]["scrapes_own"]["scrapes"] >= 1
    assert results["record"]["rps_on"][0] > 0 and results["record"]["flushes"] >= 1
    assert results["render"]["1000"]["series"] >= 900
    assert results["memory"]["talking_1000"]["calls"] == 1000
    assert results["startup"]["median"] > 0


def test_callgrind_smoke(tmp_path):
    need_binary("valgrind")
    out = tmp_path / "callgrind.json"
    result = subprocess.run([sys.executable, "bench/callgrind.py", "--smoke", "--kinds", "exporter", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    exporter = json.loads(out.read_text())["exporter"]
    assert exporter["requests"] == 40 and exporter["instructions_per_request"] > 0


def test_where_smoke():
    need_binary("wrk")
    result = subprocess.run([sys.executable, "bench/where.py", "--seconds", "1", "--top", "20"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| mtt_exporter/model.py |" in result.stdout
