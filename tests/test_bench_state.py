"""A seconds-long smoke of bench/state_backend.py (the full run's results: BENCHMARKS.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import need_binary

BENCH = Path(__file__).resolve().parent.parent / "bench" / "state_backend.py"


def test_state_backend_benchmark_smoke():
    for binary in ("redis-server", "redis-cli", "wrk"):
        need_binary(binary)
    result = subprocess.run([sys.executable, str(BENCH), "--duration", "1", "--rounds", "1", "--connections", "4"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^\| (memory|Redis), (\d) replicas? \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) ms \|", result.stdout, re.M)
    assert [(kind, n) for kind, n, *_ in rows] == [("memory", "1"), ("Redis", "1"), ("Redis", "2")]
    assert all(int(per.replace(",", "")) > 0 for _, _, per, _, _ in rows)
