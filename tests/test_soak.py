"""Soak against ground truth: ~20,000 notifications with 10 % malformed, 5 % duplicated and
5 % reordered, posted one a request to a real exporter; /metrics must equal the truth.

The 1,000,000-notification run is `bench/soak.py` (result in docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import time

from mtt_exporter.replay import post_all
from mtt_exporter.simulate import EXPECTED_STATUS, SimConfig, diff, generate

from .process import Exporter

GRACE = 2
SOAK = SimConfig(calls=2750, seed=20, malformed_pct=10, duplicate_pct=5, reorder_pct=5)


def test_soak_matches_the_truth_exactly(tmp_path):
    workload = generate(SOAK)
    assert 19_000 <= len(workload.deliveries) <= 21_000
    exporter = Exporter(tmp_path, "--call-end-grace", str(GRACE)).start()
    try:
        stats = asyncio.run(post_all(workload.deliveries, exporter.base + "/notify", speed=None, concurrency=8))
        time.sleep(GRACE + 1.5)  # the last unanswered calls are decided after the grace period
        exposition = exporter.metrics()
        assert exporter.request("GET", "/-/healthy")[0] == 200
    finally:
        assert exporter.stop() == 0
    assert stats.sent == len(workload.deliveries)
    # every event and duplicate answered 200, every malformed body 400: no 5xx, no transport error
    assert stats.failures(EXPECTED_STATUS.__getitem__) == 0, stats.results
    assert diff(workload.truth, exposition) == []
