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
    assert sorted(p.name for p in tmp_path.iterdir()) == [".state.json.lock", "state.json"]  # no temp file left
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


def test_failed_write_removes_the_old_file(tmp_path, monkeypatch):
    """Never a mix, no temp file; and the older snapshot no longer at the path, where a
    start after a hard kill would take it for current (#9 item 8: any failed save, periodic too).
    Changed in attack round 2 (finding 4): removed, no longer renamed aside, which kept its
    blocks allocated on the full disk that made the save fail."""
    state = saved(tmp_path)
    before = state.path.read_bytes()
    state.correlator.apply(note("o", 0, B2, conf="C2"), NOW)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        state.write(state.snapshot())
    assert before and sorted(p.name for p in tmp_path.iterdir()) == [".state.json.lock"]


def _truncated(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _flipped(path):
    text = path.read_text()
    assert f'"version":{STATE_VERSION}' in text
    path.write_text(text.replace(f'"version":{STATE_VERSION}', '"version":99'))


HUGE = "1" + "0" * 400  # a JSON number that overflows float()


def _raw(where: str, token: str):
    """Put the JSON token `token` (401 digits, NaN: no Python value writes it) at `where` in the file."""

    def damage(path):
        data = json.loads(path.read_text())
        call = data["calls"][0][1]
        if where == "saved_at":
            data["saved_at"] = "RAW"
        elif where == "leg time":
            call["legs"][0][1] = "RAW"
        else:
            call[where] = "RAW"
        path.write_text(json.dumps(data).replace('"RAW"', token))

    return damage


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
        # every time read from the file is bounded before it is converted (#9 attack round)
        pytest.param(_raw("saved_at", HUGE), id="saved_at of 401 digits"),
        pytest.param(_raw("saved_at", "NaN"), id="saved_at NaN"),
        pytest.param(_raw("saved_at", "-Infinity"), id="saved_at -Infinity"),
        pytest.param(_raw("last_seen", HUGE), id="last_seen of 401 digits"),
        pytest.param(_raw("last_seen", "-" + HUGE), id="last_seen of -401 digits"),
        pytest.param(_raw("deadline", HUGE), id="deadline of 401 digits"),
        pytest.param(_raw("leg time", HUGE), id="leg time of 401 digits"),
        pytest.param(_raw("last_seen", "1e300"), id="last_seen 1e300"),
        pytest.param(_raw("last_seen", "true"), id="last_seen a bool"),
        pytest.param(_raw("last_seen", "9e9"), id="last_seen after the snapshot"),
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


def _symlink_to(target):
    def make(path):
        path.unlink()
        path.symlink_to(target if target != "the state" else path.with_name("real.json"))
    return make


def _moved_then_linked(path):
    os.replace(path, path.with_name("real.json"))
    path.symlink_to(path.with_name("real.json"))


@pytest.mark.parametrize(("make", "reason"), [
    pytest.param(lambda p: (p.unlink(), p.mkdir()), SetAside.UNREADABLE, id="directory"),
    pytest.param(lambda p: (p.unlink(), os.mkfifo(p)), SetAside.UNREADABLE, id="FIFO: would block"),
    pytest.param(_symlink_to("/dev/zero"), SetAside.UNREADABLE, id="symlink to /dev/zero: endless"),
    pytest.param(_moved_then_linked, SetAside.UNREADABLE, id="symlink to a good state file"),
    pytest.param(lambda p: os.truncate(p, 64 << 20), SetAside.OVERSIZE, id="larger than the cap (sparse)"),
])
def test_anything_but_a_small_regular_file_is_set_aside_unread(tmp_path, caplog, make, reason):
    """Opened without following a link or blocking, checked to be a regular file of at most
    max_bytes before a byte is read; what is there is renamed aside (a link, not its
    target), so the saves of this run can write the path."""
    state = saved(tmp_path)
    make(state.path)
    fresh = Correlator(max_calls=1000)  # cap: MIN_MAX_BYTES (16 MiB)
    loader = StateFile(state.path, fresh)
    assert loader.load() == [] and len(fresh) == 0
    assert loader.set_aside is reason and not os.path.lexists(state.path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f"state.json.{reason.value}-")]
    assert "set aside" in caplog.text
    if (tmp_path / "real.json").exists():
        assert (tmp_path / "real.json").stat().st_size > 0  # the link's target is left alone
    StateFile(state.path, fresh).save()  # the path is free again for this run's saves
    assert state.path.is_file() and not state.path.is_symlink()


def test_restored_calls_are_put_in_last_seen_order(tmp_path):
    """TTL expiry stops at the first call not due: a file in another order (edited, or
    hostile) must not keep older calls from expiring."""
    correlator, _, _ = run(SEED[:4])
    (conf_id, call), = dump_state(correlator)["calls"]
    data = {"format": "mtt-exporter-state", "version": STATE_VERSION,
            "calls": [["NEWER", {**call, "last_seen": NOW + 1000}], [conf_id, call]]}
    restored = Correlator()
    load_state(data, restored, not_after=NOW + 1000)
    assert list(restored.calls) == [conf_id, "NEWER"]
    restored.expire(NOW + restored.ttl + 500)
    assert list(restored.calls) == ["NEWER"]


def test_stale_temp_files_are_removed_at_start_and_nothing_else(tmp_path):
    (tmp_path / ".state.json.abc123.tmp").write_bytes(b"x" * 1000)  # a save killed mid-write
    (tmp_path / ".other.json.abc123.tmp").write_bytes(b"keep")  # another file's
    (tmp_path / "state.json.tmp").write_bytes(b"keep")  # not our pattern
    loader = StateFile(tmp_path / "state.json", Correlator())
    loader.load()  # without the lock (attack round 2, finding 7): another exporter's save may be in flight
    assert (tmp_path / ".state.json.abc123.tmp").exists()
    loader.acquire()  # as the server does before loading
    loader.load()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".other.json.abc123.tmp", ".state.json.lock", "state.json.tmp"]


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


def test_failed_final_save_removes_the_older_snapshot(tmp_path, caplog, monkeypatch):
    """Changed in attack round 2 (finding 4): removed rather than renamed aside."""
    state = saved(tmp_path, SEED[:4])  # a periodic snapshot: the call answered, in progress
    for offset, n in SEED[4:]:  # the call ends after it
        state.correlator.apply(n, NOW + offset)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    state.save()  # the final save fails
    assert not state.path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".state.json.lock"]
    assert "cannot write the state file" in caplog.text and "older state file is removed" in caplog.text
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
