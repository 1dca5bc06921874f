"""Crafted MTT traffic for the Prometheus integration test (tests/test_prometheus.py).

Scope: what the simulator (`mtt_exporter.simulate`, sent alongside) does not guarantee. `calls()`
covers every event, side, cause class, leg outcome and call outcome at least once, whatever
the simulator's random mix (it never sends causes of the service_unavailable, not_implemented
or invalid_message classes); `faults()` adds disagreeing fields, refused requests, and calls
left open for the TTL and the capacity cap (duplicates are made by resending a delivery).
Both return their expected leg and call outcomes, like the simulator's truth.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mtt_exporter.model import MOSCOW

NUMBER_A = "79154368886"
SIP_ID = "79586488002"


@dataclass
class Workload:
    """JSON bodies to POST to /notify in order, and the leg and call outcomes they must produce."""

    deliveries: list[Any] = field(default_factory=list)
    truth: dict[str, Counter] = field(default_factory=lambda: {"legs": Counter(), "calls": Counter()})


def notification(conf_id: str, code: str, at: float, number: str, *, side: str | None = None,
                 cause: int | str | None = None, data_code: str | None = None,
                 data_number: str | None = None, data_cause: int | None = None) -> dict:
    """One notification as MTT posts it (Moscow time inside `data`); data_* make `data` disagree."""
    stamp = datetime.fromtimestamp(at, MOSCOW).strftime("%Y-%m-%d-%H-%M-%S")
    premedia_a = code in ("sp", "ep") and side == "A"
    data = f"event={data_code or code}_{data_number or (NUMBER_A if premedia_a else number)}_{stamp}"
    if data_cause is not None or cause is not None:
        data += f"&cause={data_cause if data_cause is not None else cause}"
    event: dict[str, Any] = {"type": code}
    if side is not None:
        event["side"] = side
    if cause is not None:
        event["cause"] = str(cause)
    body = {"date_time": int(at), "data": data, "event": event, "h323_conf_id": conf_id,
            "numberA": NUMBER_A, "sip_id": SIP_ID, "client_id": "1235", "extension": "0004"}
    if not premedia_a:
        body["redirect_number"] = number
    return body


def leg(conf_id: str, number: str, start: float, *, cause: int | str | None, side: str | None,
        ring: float, answered: float | None = None, talk_after: float | None = None) -> list[dict]:
    """o, then s after `ring` s when `answered` (hangup `answered` s later), else h after `ring`."""
    events = [notification(conf_id, "o", start, number)]
    end = start + ring
    if answered is not None:
        events.append(notification(conf_id, "s", end, number))
        if talk_after is not None:
            events.append(notification(conf_id, "t", end + talk_after, number))
        end += answered
    events.append(notification(conf_id, "h", end, number, side=side, cause=cause))
    return events


def calls(now: float) -> Workload:
    """One batch per call, events 2 minutes to a few seconds old."""
    w = Workload()
    t0 = int(now) - 130

    def add(conf_id: str, events: list[dict], legs: list[str], outcome: str) -> None:
        w.deliveries.append(events)
        w.truth["legs"].update(legs)
        w.truth["calls"][outcome] += 1

    # the seed's shape: premedia on both sides, answer, talk, hangup by B
    add("C01", [notification("C01", "sp", t0, "", side="A"), notification("C01", "ep", t0 + 7, "", side="A"),
                *leg("C01", "79684881033", t0 + 8, cause=16, side="B", ring=11, answered=89, talk_after=10),
                notification("C01", "sp", t0 + 19, "79684881033", side="B"),
                notification("C01", "ep", t0 + 28, "79684881033", side="B")],
        ["answered"], "answered")
    # parallel ringing: the winner answers, the loser is cleared with 26; the caller hangs up
    add("C02", [*leg("C02", "79000000021", t0, cause=16, side="A", ring=6, answered=40),
                *leg("C02", "79000000022", t0, cause=26, side="B", ring=6)],
        ["answered", "not_selected"], "answered")
    # follow-me: the first number does not answer, the second does; premedia without a side
    add("C03", [*leg("C03", "79000000031", t0, cause=19, side="B", ring=20),
                *leg("C03", "79000000032", t0 + 21, cause=16, side="B", ring=4, answered=30),
                notification("C03", "sp", t0 + 25, "79000000032"), notification("C03", "ep", t0 + 28, "79000000032")],
        ["no_answer", "answered"], "answered")
    # one unanswered leg per outcome and cause class; the caller gives up on C13
    unanswered = [
        ("C04", 17, "B", "busy"), ("C05", 21, "B", "rejected"), ("C06", 20, "B", "subscriber_absent"),
        ("C07", 1, "B", "address_error"), ("C08", 34, "B", "network_failure"), ("C09", 58, "B", "network_failure"),
        ("C10", 65, "B", "network_failure"), ("C11", 88, "B", "network_failure"),
        ("C12", 102, "B", "network_failure"), ("C14", 127, "B", "network_failure"),
        ("C15", "x", None, "network_failure"),  # no readable cause, no side: unknown/unknown
        ("C16", 16, "B", "no_answer"),
    ]
    for conf_id, cause, side, outcome in unanswered:
        add(conf_id, leg(conf_id, f"790000001{conf_id[1:]}", t0 + 30, cause=cause, side=side, ring=15),
            [outcome], "unanswered")
    add("C13", leg("C13", "79000000130", t0 + 30, cause=16, side="A", ring=12), ["abandoned"], "abandoned")
    return w


@dataclass
class Faults:
    """What a simulator of calls does not send, and the legs and calls it adds."""

    #: one call whose `event` and `data` disagree on type (s vs t), cause (17 vs 16) and number
    conflicting: list[dict]
    #: calls that only originate: left open for the TTL, or evicted by the capacity cap
    open_calls: list[dict]
    #: raw bodies to refuse, and whether they are posted with the token
    refused: list[tuple[bytes, bool]]
    truth: dict[str, Counter]


def faults(now: float, open_calls: int) -> Faults:
    t = int(now) - 20
    conflicting = [
        notification("F01", "o", t, "79000000901", data_number="79000000999"),
        notification("F01", "s", t + 5, "79000000901", data_code="t"),
        notification("F01", "h", t + 9, "79000000901", side="B", cause=17, data_cause=16),
    ]
    return Faults(
        conflicting=conflicting,
        open_calls=[notification(f"OPEN{i:04d}", "o", t, f"7900000{i:04d}") for i in range(open_calls)],
        refused=[(b"{not json", True), (b"{}", True), (b'{"h323_conf_id": "X", "event": {"type": "zz"}}', True),
                 (b"{}", False)],
        truth={"legs": Counter(answered=1, expired=open_calls), "calls": Counter(answered=1, expired=open_calls)},
    )
