"""Saved state: per-call data round trips, damaged files are set aside, restarts keep calls."""

from __future__ import annotations

import json
import os
import stat

import pytest

from mtt_exporter.correlator import (
    MAX_NOTIFICATIONS_PER_CALL,
    STATE_VERSION,
    CallRestored,
    Correlator,
    Evicted,
    EvictionReason,
    StateError,
    call_from_dict,
    call_to_dict,
    dump_state,
    load_state,
)
from mtt_exporter.model import PayloadError, Reason
from mtt_exporter.clock import ProcessClock
from mtt_exporter.server import CORRELATOR, METRICS, STATE
from mtt_exporter.statefile import SetAside, StateFile

from .conftest import Clock
from .test_correlator import B1, B2, NOW, SEED, SEED_DURATIONS, calls, durations, legs, note, run


def restarted(correlator: Correlator) -> Correlator:
    """A new correlator loaded from `correlator`'s state, through JSON text as on disk."""
    again = Correlator(ttl=correlator.ttl, max_calls=correlator.max_calls, grace=correlator.grace)
    load_state(json.loads(json.dumps(dump_state(correlator))), again)
    return again


@pytest.mark.parametrize("cut", range(len(SEED) + 1))
def test_seed_call_survives_a_restart_at_any_point(cut):
    first, facts, _ = run(SEED[:cut], until=SEED[cut - 1][0] if cut else 0)
    correlator = restarted(first)
    for offset, n in SEED[cut:]:
        facts += correlator.apply(n, NOW + offset)[1]
    facts += correlator.expire(NOW + 200)
    assert durations(facts) == sorted(SEED_DURATIONS)
    assert legs(facts) == {"answered": 1}
    assert calls(facts) == {"answered": 1}
    # what was seen before the restart is still a duplicate after it
    assert all(correlator.apply(n, NOW + 201)[0] for _, n in SEED)


def test_call_round_trip_keeps_every_field():
    correlator, _, _ = run(
        [(0, note("sp", 0, side="A")), (1, note("o", 1, B1)), (2, note("o", 2, B2)),
         (3, note("h", 5, B1, side="B", cause=17)), (4, note("h", 6, side="A", cause=16))],
        until=4,
    )
    call = correlator.calls["C1"]
    data = call_to_dict(call)
    assert json.loads(json.dumps(data)) == data
    back = call_from_dict(data)
    assert call_to_dict(back) == data
    assert back.premedia == call.premedia and back.seen == call.seen and back.seen.typecode == "q" and back.a_hangup and back.deadline == NOW + 4 + 15
    assert [(leg.number, leg.o, leg.h, leg.cause, leg.side, leg.done) for leg in back.legs] == [
        (leg.number, leg.o, leg.h, leg.cause, leg.side, leg.done) for leg in call.legs]


def test_restored_deadlines_and_ttl_still_fire():
    correlator, _, _ = run([(0, note("o", 0, B1)), (2, note("h", 2, B1, side="B", cause=17)),
                            (3, note("o", 0, B1, conf="C2"))], until=3)
    again = restarted(correlator)
    assert calls(again.expire(NOW + 2 + 15)) == {"unanswered": 1}
    # C2 never ends: expired a TTL after its last notification, on the wall clock
    assert calls(again.expire(NOW + 3 + 3600)) == {"expired": 1}


def test_load_reports_in_progress_and_evicts_above_the_cap():
    correlator, _, _ = run([(i, note("o", 0, B1, conf=f"C{i}")) for i in range(5)]
                           + [(5, note("s", 1, B1, conf="C4")), (6, note("h", 9, B1, side="B", cause=16, conf="C4"))], until=6)
    small = Correlator(max_calls=3)
    facts = load_state(dump_state(correlator), small)
    assert sum(isinstance(f, CallRestored) for f in facts) == 4  # C4 had ended
    assert [f for f in facts if isinstance(f, Evicted)] == [Evicted(EvictionReason.CAPACITY)] * 2
    assert calls(facts) == {"expired": 2}
    assert list(small.calls) == ["C2", "C3", "C4"]  # the least recently seen went first


DAMAGED = {
    "not an object": [],
    "foreign": {"calls": []},
    "other version": {"format": "mtt-exporter-state", "version": STATE_VERSION + 1, "calls": []},
    "calls not a list": {"format": "mtt-exporter-state", "version": STATE_VERSION, "calls": {}},
    "entry not a pair": {"format": "mtt-exporter-state", "version": STATE_VERSION, "calls": [["C1"]]},
    "call without legs": {"legs": None, "seen": [], "last_seen": 1},
    "legs of the old format": {"legs": {"7900": [1, None, None, 2, 16, "B", False]}, "seen": [], "last_seen": 1},
    "last_seen missing": {"legs": [], "seen": []},
    "last_seen not finite": {"legs": [], "seen": [], "last_seen": float("nan")},
    "leg too short": {"legs": [["7900", 1, None, None]], "seen": [], "last_seen": 1},
    "leg number not text": {"legs": [[7900, 1, None, None, 2, 16, "B", False]], "seen": [], "last_seen": 1},
    "leg time a string": {"legs": [["7900", "1", None, None, None, None, "B", False]], "seen": [], "last_seen": 1},
    "leg cause out of range": {"legs": [["7900", 1, None, None, 2, 128, "B", False]], "seen": [], "last_seen": 1},
    "leg side unknown": {"legs": [["7900", 1, None, None, 2, 16, "C", False]], "seen": [], "last_seen": 1},
    "leg done not a bool": {"legs": [["7900", 1, None, None, 2, 16, "B", 0]], "seen": [], "last_seen": 1},
    "seen key too big": {"legs": [], "seen": [2**63], "last_seen": 1},
    "seen key too small": {"legs": [], "seen": [-(2**63) - 1], "last_seen": 1},
    "seen key a bool": {"legs": [], "seen": [True], "last_seen": 1},
    "too many seen keys": {"legs": [], "seen": list(range(MAX_NOTIFICATIONS_PER_CALL + 1)), "last_seen": 1},
    "premedia side unhashable": {"legs": [], "seen": [], "last_seen": 1, "premedia": [[["A"], "7900", 1, None]]},
    "premedia number not text": {"legs": [], "seen": [], "last_seen": 1, "premedia": [["A", 7900, 1, None]]},
    "ended not a bool": {"legs": [], "seen": [], "last_seen": 1, "ended": "yes"},
}


@pytest.mark.parametrize("data", [pytest.param(v, id=k) for k, v in DAMAGED.items()])
def test_damaged_state_is_refused_and_changes_nothing(data):
    if "legs" in data:  # a damaged call inside a good file, after a good call
        good = call_to_dict(run(SEED[:3])[0].calls["C1"])
        data = {"format": "mtt-exporter-state", "version": STATE_VERSION, "calls": [["C0", good], ["C1", data]]}
    correlator = Correlator()
    with pytest.raises(StateError):
        load_state(data, correlator)
    assert len(correlator) == 0 and correlator._deadlines == []


def test_a_call_takes_a_bounded_number_of_notifications():
    correlator = Correlator()
    for i in range(MAX_NOTIFICATIONS_PER_CALL):
        correlator.apply(note("o", i, B1), NOW)
    assert correlator.apply(note("o", 0, B1), NOW)[0]  # a duplicate is still recognised
    with pytest.raises(PayloadError) as raised:
        correlator.apply(note("o", -1, B1), NOW + 1)
    assert raised.value.reason is Reason.TOO_MANY_ITEMS
    assert correlator.calls["C1"].last_seen == NOW  # a refused notification keeps nothing alive


# --- the file ----------------------------------------------------------------------------


def saved(tmp_path, steps=SEED[:4]) -> StateFile:
    correlator, _, _ = run(steps)
    state = StateFile(tmp_path / "state.json", correlator)
    state.save()
    return state


def test_save_is_atomic_private_and_loads_back(tmp_path):
    state = saved(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp file left
    assert stat.S_IMODE(os.stat(state.path).st_mode) == 0o600
    fresh = Correlator()
    facts = StateFile(state.path, fresh).load()
    assert facts == [CallRestored()] and fresh.in_progress() == 1
    assert call_to_dict(fresh.calls["C1"]) == call_to_dict(state.correlator.calls["C1"])
    # used once: after a hard kill it would bring back calls that have ended since
    assert not state.path.exists()


def test_an_older_snapshot_never_replaces_a_newer_one(tmp_path):
    state = saved(tmp_path, [])
    old = state.snapshot()
    state.correlator.apply(note("o", 0, B1), NOW)
    assert state.write(state.snapshot())
    assert not state.write(old)  # e.g. a periodic write that finished after the final one
    assert len(json.loads(state.path.read_text())["calls"]) == 1


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    state = saved(tmp_path)
    before = state.path.read_bytes()
    state.correlator.apply(note("o", 0, B2, conf="C2"), NOW)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        state.write(state.snapshot())
    assert state.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def _truncated(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _flipped(path):
    text = path.read_text()
    assert f'"version":{STATE_VERSION}' in text
    path.write_text(text.replace(f'"version":{STATE_VERSION}', '"version":99'))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_truncated, id="truncated"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(b"\xff\xfe garbage"), id="binary"),
        pytest.param(lambda p: p.write_text("[" * 100_000), id="deeply nested"),
        pytest.param(_flipped, id="other version"),
        pytest.param(lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "calls": [["C1", {"legs": []}]]})), id="damaged call"),
        pytest.param(lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "saved_at": "now"})), id="saved_at not a number"),
    ],
)
def test_unusable_file_is_set_aside_and_start_is_empty(tmp_path, caplog, damage):
    state = saved(tmp_path)
    damage(state.path)
    content = state.path.read_bytes()
    fresh = Correlator()
    assert StateFile(state.path, fresh).load() == []
    assert len(fresh) == 0
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert aside.read_bytes() == content and not state.path.exists()
    assert "set aside" in caplog.text
    assert B1 not in caplog.text and "7900" not in caplog.text  # the file holds numbers; the log does not


def test_missing_file_starts_empty(tmp_path):
    assert StateFile(tmp_path / "none.json", Correlator()).load() == []


# --- the app -----------------------------------------------------------------------------


def value(app, name, **labels):
    """Sum of the samples `name` whose labels include `labels` (over lines, destinations)."""
    return sum(
        sample.value
        for metric in app[METRICS].registry.collect()
        for sample in metric.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_app_saves_on_shutdown_and_restores_in_progress(make_client, seed_call, tmp_path):
    client, app = await make_client(state_file=tmp_path / "state.json")
    await client.post("/notify", json=seed_call[:4])  # sp, ep, o, s: answered, not ended
    await client.post("/notify", json={**seed_call[2], "h323_conf_id": "OTHER", "redirect_number": "79000000009"})
    assert value(app, "mtt_calls_in_progress") == 2
    await client.close()  # runs the app's cleanup: the state is saved
    assert len(json.loads((tmp_path / "state.json").read_text())["calls"]) == 2

    client, app = await make_client(state_file=tmp_path / "state.json")
    assert len(app[CORRELATOR]) == 2
    assert value(app, "mtt_calls_in_progress") == 2  # CallEnded will decrement it
    again = await client.post("/notify", json=seed_call)
    assert (await again.json())["duplicates"] == 4
    assert value(app, "mtt_calls_in_progress") == 1
    assert value(app, "mtt_calls_total", outcome="answered") == 1
    assert value(app, "mtt_answered_duration_seconds_sum") == 89
    assert value(app, "mtt_ring_duration_seconds_count", outcome="answered") == 0  # measured before the restart


async def test_data_dir_holds_a_relative_state_file(make_client, seed_call, tmp_path):
    client, app = await make_client(data_dir=tmp_path, state_file="calls.json")
    await client.post("/notify", json=seed_call[2])
    await client.close()
    assert json.loads((tmp_path / "calls.json").read_text())["calls"][0][0] == "BC5F236C5AD211E981BA5CB901FED6FC"


# --- the snapshot's date (a stale file is not taken for the current state) -------------------


def dated(tmp_path, saved_at: float | None) -> StateFile:
    """A state file of one open call, dated `saved_at` (None: undated, as older versions wrote)."""
    state = saved(tmp_path)
    data = json.loads(state.path.read_text())
    data.pop("saved_at")
    if saved_at is not None:
        data["saved_at"] = saved_at
    state.path.write_text(json.dumps(data))
    return state


@pytest.mark.parametrize(("age", "aside"), [
    pytest.param(0.0, None, id="just saved"),
    pytest.param(119.0, None, id="within --state-max-age"),
    pytest.param(-3.0, None, id="a little ahead (clocks of two hosts)"),
    pytest.param(121.0, SetAside.STALE, id="older than --state-max-age"),
    pytest.param(-60.0, SetAside.FUTURE, id="ahead: the clock went back"),
    pytest.param(None, SetAside.UNDATED, id="undated"),
])
def test_start_refuses_a_snapshot_older_than_it_can_trust(tmp_path, caplog, age, aside):
    now = Clock(NOW + 500)
    state = dated(tmp_path, None if age is None else now() - age)
    fresh = Correlator()
    loader = StateFile(state.path, fresh, ProcessClock(now, now), max_age=120)
    facts = loader.load()
    assert loader.set_aside is aside
    if aside is None:
        assert facts == [CallRestored()] and fresh.in_progress() == 1
        return
    assert facts == [] and len(fresh) == 0
    (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith(f"state.json.{aside.value}-")]
    assert not state.path.exists() and kept.stat().st_size > 0
    assert [r.reason for r in caplog.records if "set aside" in r.getMessage()] == [aside.value]


def test_failed_final_save_sets_the_older_snapshot_aside(tmp_path, caplog, monkeypatch):
    state = saved(tmp_path, SEED[:4])  # a periodic snapshot: the call answered, in progress
    for offset, n in SEED[4:]:  # the call ends after it
        state.correlator.apply(n, NOW + offset)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    state.save()  # the final save fails
    assert not state.path.exists()
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == ["state.json.stale"]
    assert "cannot write the state file" in caplog.text and "older state file is set aside" in caplog.text
    fresh = Correlator()
    assert StateFile(state.path, fresh).load() == [] and len(fresh) == 0  # no phantom call at the next start


async def test_app_counts_a_stale_state_file_and_starts_empty(make_client, clock, tmp_path):
    state = dated(tmp_path, clock() - 61)
    client, app = await make_client(state_file=state.path, state_max_age=60)
    assert value(app, "mtt_state_file_set_aside_total", reason="stale") == 1
    assert value(app, "mtt_state_file_set_aside_total", reason="corrupt") == 0
    assert len(app[CORRELATOR]) == 0 and value(app, "mtt_calls_in_progress") == 0


async def test_app_whose_final_save_fails_brings_back_no_ended_call(make_client, seed_call, tmp_path, monkeypatch):
    # the case: a periodic snapshot, calls end after it, the final save fails (disk full)
    client, app = await make_client(state_file=tmp_path / "state.json")
    await client.post("/notify", json=seed_call[:4])
    app[STATE].write(app[STATE].snapshot())
    await client.post("/notify", json=seed_call[4:])
    assert value(app, "mtt_calls_total", outcome="answered") == 1
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    await client.close()
    monkeypatch.undo()
    client, app = await make_client(state_file=tmp_path / "state.json")
    assert value(app, "mtt_calls_in_progress") == 0 and len(app[CORRELATOR]) == 0
