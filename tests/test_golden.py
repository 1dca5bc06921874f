"""Golden exposition of the replayed seed call, and `promtool check metrics` over it.

Regenerate after an intended change with `make golden`; never edit the file by hand.
"""

from __future__ import annotations

import subprocess

from prometheus_client import generate_latest

from mtt_exporter.metrics import render
from mtt_exporter.server import METRICS, tick

from .conftest import DATA

GOLDEN = DATA / "golden_seed.prom"


async def _replayed_seed(make_client, seed_call, clock):
    client, app = await make_client()
    for item in seed_call:
        assert (await client.post("/notify", json=item)).status == 200
    clock.now += 60  # past the grace period: the caller's wait is measured then
    tick(app, clock.now)
    return app[METRICS].registry


async def test_golden_exposition(make_client, seed_call, clock, request):
    registry = await _replayed_seed(make_client, seed_call, clock)
    text = generate_latest(registry).decode()
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "exposition changed: review, then `make golden`"
    # the exporter's own renderer (what /metrics serves) writes the same bytes, twice over:
    # the second time from what it kept of the first
    assert render(registry).decode() == text
    assert render(registry).decode() == text


async def test_promtool_check_metrics(make_client, seed_call, clock, promtool):
    # promtool lints the text format (it does not read OpenMetrics exemplars)
    exposition = generate_latest(await _replayed_seed(make_client, seed_call, clock))
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == "" and result.stderr.decode().strip() == ""
