"""Correlator scenarios: each a list of (receipt second, notification) and the facts expected."""

from __future__ import annotations

from collections import Counter

import pytest

from mtt_exporter.cause import LegOutcome
from mtt_exporter.correlator import (
    CallEnded,
    CallOutcome,
    CallStarted,
    Correlator,
    Duration,
    Evicted,
    EvictionReason,
    LegEnded,
    Phase,
)
from mtt_exporter.model import EVENT_BY_CODE, Notification, Side, parse

NOW = 1_000_000.0
CONF = "C1"
B1, B2, B3 = "79000000001", "79000000002", "79000000003"
CALLER = "79154368886"


def note(code: str, t: float, number: str = "", side: str = "", cause: int | None = None, conf: str = CONF) -> Notification:
    """A notification at event second `t` (event times start at 0)."""
    side_ = Side(side) if side else Side.UNKNOWN
    premedia_a = side == "A" and code in ("sp", "ep")
    return Notification(
        conf_id=conf, event=EVENT_BY_CODE[code], time=float(t), side=side_, cause=cause,
        redirect_number="" if premedia_a else number, number_a=CALLER,
    )


def run(steps, grace: float = 15, ttl: float = 3600, max_calls: int = 100, until: float | None = None):
    """Apply (receipt offset, notification) steps, then tick to `until`; returns (correlator, facts, duplicates)."""
    correlator = Correlator(ttl=ttl, max_calls=max_calls, grace=grace)
    facts, duplicates = [], 0
    for offset, n in steps:
        facts += correlator.expire(NOW + offset)
        duplicate, more = correlator.apply(n, NOW + offset)
        duplicates += duplicate
        facts += more
    last = steps[-1][0] if steps else 0
    for offset in range(int(last), int(last if until is None else until) + 1):
        facts += correlator.expire(NOW + offset)
    return correlator, facts, duplicates


def durations(facts):
    return sorted((f.phase.value, f.label, f.seconds) for f in facts if isinstance(f, Duration))


def legs(facts):
    return Counter(f.outcome.value for f in facts if isinstance(f, LegEnded))


def calls(facts):
    return Counter(f.outcome.value for f in facts if isinstance(f, CallEnded))


SEED = [
    (0, note("sp", 0, side="A")),
    (7, note("ep", 7, side="A")),
    (8, note("o", 8, B1)),
    (19, note("s", 19, B1)),
    (19, note("sp", 19, B1, side="B")),
    (28, note("ep", 28, B1, side="B")),
    (29, note("t", 29, B1)),
    (108, note("h", 108, B1, side="B", cause=16)),
]
SEED_DURATIONS = [("answered", "", 89.0), ("premedia", "A", 7.0), ("premedia", "B", 9.0), ("ring", "answered", 11.0), ("talk", "", 79.0)]


def test_seed_call_from_payloads(seed_call):
    correlator = Correlator()
    facts = []
    for i, item in enumerate(seed_call):
        duplicate, more = correlator.apply(parse(item), NOW + i)
        assert not duplicate
        facts += more
    assert durations(facts) == SEED_DURATIONS
    assert legs(facts) == {"answered": 1}
    assert calls(facts) == {"answered": 1}
    assert correlator.in_progress() == 0


SCENARIOS = {
    "seed call in order": dict(
        steps=SEED, durations=SEED_DURATIONS, legs={"answered": 1}, calls={"answered": 1}),
    "seed call reversed": dict(
        steps=[(i, n) for i, (_, n) in enumerate(reversed(SEED))],
        durations=SEED_DURATIONS, legs={"answered": 1}, calls={"answered": 1}),
    "seed call sent twice": dict(
        steps=SEED + [(200 + i, n) for i, (_, n) in enumerate(SEED)],
        durations=SEED_DURATIONS, legs={"answered": 1}, calls={"answered": 1}, duplicates=8),
    "busy": dict(
        steps=[(0, note("o", 0, B1)), (3, note("h", 3, B1, side="B", cause=17))],
        durations=[("ring", "unanswered", 3.0)], legs={"busy": 1}, calls={"unanswered": 1}),
    "caller gives up while ringing": dict(
        steps=[(0, note("o", 0, B1)), (9, note("h", 9, B1, side="A", cause=16))],
        durations=[("ring", "unanswered", 9.0)], legs={"abandoned": 1}, calls={"abandoned": 1}),
    "ring no answer, cause 16 from B": dict(
        steps=[(0, note("o", 0, B1)), (30, note("h", 30, B1, side="B", cause=16))],
        durations=[("ring", "unanswered", 30.0)], legs={"no_answer": 1}, calls={"unanswered": 1}),
    "caller hangs up during premedia, no leg": dict(
        steps=[(0, note("sp", 0, side="A")), (4, note("h", 4, side="A", cause=16))],
        durations=[], legs={}, calls={"abandoned": 1}),
    "follow-me: busy, no answer, answered": dict(
        steps=[
            (0, note("o", 0, B1)), (2, note("h", 2, B1, side="B", cause=17)),
            (3, note("o", 3, B2)), (23, note("h", 23, B2, side="B", cause=19)),
            (24, note("o", 24, B3)), (30, note("s", 30, B3)), (90, note("h", 90, B3, side="A", cause=16)),
        ],
        durations=[("answered", "", 60.0), ("ring", "answered", 6.0), ("ring", "unanswered", 2.0), ("ring", "unanswered", 20.0)],
        legs={"busy": 1, "no_answer": 1, "answered": 1}, calls={"answered": 1}),
    "follow-me: all fail, grace ends the call": dict(
        steps=[
            (0, note("o", 0, B1)), (2, note("h", 2, B1, side="B", cause=17)),
            (10, note("o", 10, B2)), (12, note("h", 12, B2, side="B", cause=41)),
        ],
        durations=[("ring", "unanswered", 2.0), ("ring", "unanswered", 2.0)],
        legs={"busy": 1, "network_failure": 1}, calls={"unanswered": 1}),
    "parallel ringing: losers end with 26 before the winner hangs up": dict(
        steps=[
            (0, note("o", 0, B1)), (0, note("o", 0, B2)), (0, note("o", 0, B3)),
            (5, note("s", 5, B2)), (5, note("h", 5, B1, side="B", cause=26)), (5, note("h", 5, B3, side="B", cause=26)),
            (65, note("h", 65, B2, side="B", cause=16)),
        ],
        durations=[("answered", "", 60.0), ("ring", "answered", 5.0), ("ring", "unanswered", 5.0), ("ring", "unanswered", 5.0)],
        legs={"answered": 1, "not_selected": 2}, calls={"answered": 1}),
    "parallel ringing: a loser's 26 arrives after the call ended": dict(
        steps=[
            (0, note("o", 0, B1)), (0, note("o", 0, B2)), (5, note("s", 5, B2)),
            (65, note("h", 65, B2, side="B", cause=16)), (66, note("h", 5, B1, side="B", cause=26)),
        ],
        durations=[("answered", "", 60.0), ("ring", "answered", 5.0), ("ring", "unanswered", 5.0)],
        legs={"answered": 1, "not_selected": 1}, calls={"answered": 1}),
    "hangup before answer (out of order) within grace": dict(
        steps=[(0, note("o", 0, B1)), (50, note("h", 50, B1, side="B", cause=16)), (52, note("s", 10, B1))],
        durations=[("answered", "", 40.0), ("ring", "answered", 10.0)], legs={"answered": 1}, calls={"answered": 1}),
    "hangup before originate": dict(
        steps=[(0, note("h", 20, B1, side="B", cause=16)), (1, note("s", 10, B1)), (1, note("o", 0, B1))],
        durations=[("answered", "", 10.0), ("ring", "answered", 10.0)], legs={"answered": 1}, calls={"answered": 1}),
    "talk after hangup": dict(
        steps=[(0, note("o", 0, B1)), (1, note("s", 5, B1)), (2, note("h", 50, B1, side="B", cause=16)), (3, note("t", 10, B1))],
        durations=[("answered", "", 45.0), ("ring", "answered", 5.0), ("talk", "", 40.0)], legs={"answered": 1}, calls={"answered": 1}),
    "premedia end before start": dict(
        steps=[(0, note("ep", 9, B1, side="B")), (1, note("sp", 2, B1, side="B"))],
        durations=[("premedia", "B", 7.0)], legs={}, calls={}, in_progress=1),
    "negative span clamps to zero": dict(
        steps=[(0, note("o", 10, B1)), (1, note("s", 5, B1))],
        durations=[("ring", "answered", 0.0)], legs={}, calls={}, in_progress=1),
    "hangup without number ends the only open leg": dict(
        steps=[(0, note("o", 0, B1)), (3, note("s", 3, B1)), (10, note("h", 10, side="B", cause=16))],
        durations=[("answered", "", 7.0), ("ring", "answered", 3.0)], legs={"answered": 1}, calls={"answered": 1}),
    "same number tried twice": dict(
        steps=[
            (0, note("o", 0, B1)), (2, note("h", 2, B1, side="B", cause=17)),
            (5, note("o", 5, B1)), (8, note("s", 8, B1)), (20, note("h", 20, B1, side="B", cause=16)),
        ],
        durations=[("answered", "", 12.0), ("ring", "answered", 3.0), ("ring", "unanswered", 2.0)],
        legs={"busy": 1, "answered": 1}, calls={"answered": 1}),
    "no hangup: expired at TTL": dict(
        steps=[(0, note("o", 0, B1)), (3, note("s", 3, B1))], until=3 + 3600,
        durations=[("ring", "answered", 3.0)], legs={"expired": 1}, calls={"expired": 1}, evicted={"ttl": 1}),
    "answered call waits for no grace": dict(
        steps=[(0, note("o", 0, B1)), (1, note("s", 1, B1)), (2, note("h", 2, B1, side="B", cause=16))], until=2,
        durations=[("answered", "", 1.0), ("ring", "answered", 1.0)], legs={"answered": 1}, calls={"answered": 1}),
    "unanswered call is open until grace ends": dict(
        steps=[(0, note("o", 0, B1)), (2, note("h", 2, B1, side="B", cause=17))], until=16,
        durations=[], legs={}, calls={}, in_progress=1),
}


def check_scenario(case, facts, duplicates) -> int:
    """Assert a scenario's expected facts; returns calls begun minus calls ended."""
    assert durations(facts) == sorted(case["durations"])
    assert legs(facts) == case["legs"]
    assert calls(facts) == case["calls"]
    assert duplicates == case.get("duplicates", 0)
    assert Counter(f.reason.value for f in facts if isinstance(f, Evicted)) == case.get("evicted", {})
    open_calls = sum(isinstance(f, CallStarted) for f in facts) - sum(isinstance(f, CallEnded) for f in facts)
    assert open_calls == case.get("in_progress", 0)
    return open_calls


@pytest.mark.parametrize("case", [pytest.param(v, id=k) for k, v in SCENARIOS.items()])
def test_scenario(case):
    correlator, facts, duplicates = run(case["steps"], until=case.get("until", case["steps"][-1][0] + 60))
    assert check_scenario(case, facts, duplicates) == correlator.in_progress()


def test_duplicate_after_call_ended_until_ttl():
    correlator, facts, _ = run(SEED, ttl=1000, until=500)
    assert correlator.apply(SEED[-1][1], NOW + 600) == (True, [])
    # a notification is remembered for the TTL since the call's last notification
    correlator.expire(NOW + 600 + 1000)
    assert len(correlator) == 0
    duplicate, facts = correlator.apply(SEED[-1][1], NOW + 1700)
    assert not duplicate and isinstance(facts[0], CallStarted)


def test_capacity_evicts_oldest_and_counts_open_legs():
    correlator = Correlator(max_calls=2, grace=15)
    facts = []
    for i, conf in enumerate(["A", "B", "C"]):
        facts += correlator.apply(note("o", 0, B1, conf=conf), NOW + i)[1]
    assert list(correlator.calls) == ["B", "C"]
    assert [f for f in facts if isinstance(f, Evicted)] == [Evicted(EvictionReason.CAPACITY)]
    assert legs(facts) == {LegOutcome.EXPIRED.value: 1}
    assert calls(facts) == {CallOutcome.EXPIRED.value: 1}


def test_ended_call_is_not_evicted_for_capacity_count():
    correlator = Correlator(max_calls=1, grace=0)
    correlator.apply(note("o", 0, B1, conf="A"), NOW)
    correlator.apply(note("h", 1, B1, side="B", cause=17, conf="A"), NOW)
    facts = correlator.apply(note("o", 0, B1, conf="B"), NOW + 1)[1]
    assert not [f for f in facts if isinstance(f, Evicted)]


def test_lifecycle_uses_receipt_time_not_event_time():
    # event times from 2019; the TTL counts from receipt
    correlator = Correlator(ttl=60)
    correlator.apply(Notification("X", EVENT_BY_CODE["o"], 1558613719.0, redirect_number=B1), NOW)
    assert correlator.expire(NOW + 59) == []
    assert len(correlator) == 1
    assert calls(correlator.expire(NOW + 60)) == {"expired": 1}


def test_phase_labels_are_closed():
    assert {p.value for p in Phase} == {"premedia", "ring", "answered", "talk"}


def test_dedup_key_is_stable_across_processes():
    # the state file and the replicas sharing Redis compare keys made by other processes
    import subprocess
    import sys

    from mtt_exporter.correlator import dedup_key

    code = (
        "from mtt_exporter.correlator import dedup_key; from mtt_exporter.model import EventType, Notification, Side;"
        "print(dedup_key(Notification('C1', EventType.HANGUP, 1558613719.0, Side.B, '79684881033', 16)))"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2")
    }
    local = dedup_key(Notification("C1", EVENT_BY_CODE["h"], 1558613719.0, Side.B, "79684881033", 16))
    assert outputs == {str(local)}
