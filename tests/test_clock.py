"""Wall-clock steps: in-process timing runs on the process clock; the state file maps between the clocks."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from mtt_exporter.clock import ProcessClock
from mtt_exporter.correlator import Correlator
from mtt_exporter.model import parse
from mtt_exporter.server import CORRELATOR, METRICS, TIMER, create_app, run_tick
from mtt_exporter.settings import Settings
from mtt_exporter.statefile import StateFile

from .conftest import NOW, Clock
from .test_correlator import B1, note

HOUR = 3600.0


def value(app, name, **labels):
    """Sum of the samples `name` whose labels include `labels` (over lines, destinations)."""
    return sum(
        sample.value
        for metric in app[METRICS].registry.collect()
        for sample in metric.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_process_clock_follows_the_monotonic_clock_only():
    wall, monotonic = Clock(NOW), Clock(50.0)
    clock = ProcessClock(wall, monotonic)
    assert clock() == NOW and clock.step() == 0.0
    wall.now += 7 * HOUR
    assert clock() == NOW and clock.step() == 7 * HOUR
    monotonic.now += 10
    wall.now += 10
    assert clock() == NOW + 10 and clock.step() == 7 * HOUR


# (wall-clock step, calls still open right after it, unanswered calls decided after the grace period)
STEPS = [
    pytest.param(7 * HOUR, 2, 1, id="+7 h (VM resume): nothing expires"),
    pytest.param(-HOUR, 2, 1, id="-1 h: decisions still come"),
    pytest.param(0.0, 2, 1, id="no step"),
]


@pytest.mark.parametrize(("step", "open_after_step", "decided_after_grace"), STEPS)
async def test_wall_clock_step_neither_decides_nor_freezes_open_calls(aiohttp_client, seed_call, step,
                                                                      open_after_step, decided_after_grace):
    wall, monotonic = Clock(NOW), Clock(1000.0)
    settings = Settings(_cli_parse_args=[], call_ttl=HOUR)  # type: ignore[call-arg]
    app = create_app(settings, registry=CollectorRegistry(), clock=wall, monotonic=monotonic)
    client = await aiohttp_client(app)
    # an answered call still talking, and a leg that hung up unanswered (decided after the grace period)
    assert (await client.post("/notify", json=seed_call[:4])).status == 200
    unanswered = {**seed_call[2], "h323_conf_id": "OTHER"}
    hangup = {**seed_call[-1], "h323_conf_id": "OTHER", "redirect_number": unanswered["redirect_number"]}
    assert (await client.post("/notify", json=[unanswered, hangup])).status == 200
    assert value(app, "mtt_calls_in_progress") == 2

    wall.now += step
    await run_tick(app)  # what the ticker runs every second
    assert value(app, "mtt_calls_in_progress") == open_after_step
    assert value(app, "mtt_calls_total", outcome="expired") == 0

    wall.now += settings.call_end_grace + 1
    monotonic.now += settings.call_end_grace + 1
    await run_tick(app)
    assert value(app, "mtt_calls_total", outcome="unanswered") == decided_after_grace
    assert value(app, "mtt_calls_in_progress") == open_after_step - decided_after_grace

    monotonic.now += HOUR  # the TTL, on the process clock, still expires the call left open
    wall.now += HOUR
    await run_tick(app)
    assert value(app, "mtt_calls_total", outcome="expired") == 1


@pytest.mark.parametrize("step", [pytest.param(7 * HOUR, id="+7 h"), pytest.param(-HOUR, id="-1 h")])
async def test_delay_is_measured_on_the_wall_clock(aiohttp_client, seed_call, step):
    # the receipt time compared with MTT's event time stays the wall clock's (a step shows there)
    wall, monotonic = Clock(seed_call[2]["date_time"] + 1.0), Clock(5.0)
    app = create_app(Settings(_cli_parse_args=[]), registry=CollectorRegistry(), clock=wall, monotonic=monotonic)  # type: ignore[call-arg]
    client = await aiohttp_client(app)
    wall.now += step
    await client.post("/notify", json=seed_call[2])
    assert value(app, "mtt_notification_delay_seconds_sum") == max(wall.now - parse(seed_call[2]).time, 0)
    assert app[TIMER]() == seed_call[2]["date_time"] + 1.0  # decisions did not move


@pytest.mark.parametrize("saved_step", [pytest.param(7 * HOUR, id="+7 h"), pytest.param(-HOUR, id="-1 h"),
                                        pytest.param(0.0, id="none")])
@pytest.mark.parametrize("loaded_step", [pytest.param(60.0, id="then +60 s"), pytest.param(0.0, id="then none")])
def test_state_file_maps_between_the_clocks(tmp_path, saved_step, loaded_step):
    """A call seen just before the save is as old after the restart as the time between them,
    whichever way the wall clock stepped before the save or after the start."""
    wall, monotonic = Clock(NOW), Clock(10.0)
    clock = ProcessClock(wall, monotonic)
    correlator = Correlator(ttl=HOUR)  # one open call, seen now
    correlator.apply(note("o", 0, B1), clock())
    wall.now += saved_step  # the step happens while running
    state = StateFile(tmp_path / "state.json", correlator, clock)
    state.save()
    assert json.loads(state.path.read_text())["calls"][0][1]["last_seen"] == NOW + saved_step  # wall time in the file

    wall.now += 20  # down for 20 s
    restarted_clock = ProcessClock(wall, Clock(3.0))  # a new process: a new monotonic origin
    wall.now += loaded_step  # and a step between its start and the load
    again = Correlator(ttl=HOUR)
    StateFile(state.path, again, restarted_clock).load()
    assert restarted_clock() - again.calls["C1"].last_seen == pytest.approx(20.0)
    assert again.expire(restarted_clock()) == []
