"""Traffic simulator: realistic MTT call flows with the exact metrics they must produce.

Library API (used by `mtt-exporter simulate`, the integration tests and the soak test):

    workload = generate(SimConfig(calls=500, seed=1, duplicate_pct=5))
    for d in workload.deliveries:   # send order
        ...post d.body (a JSON-ready dict, or bytes for malformed ones) at d.at seconds...
    # wait for the exporter's --call-end-grace, then:
    assert diff(workload.truth, exposition_text) == []

`Simulation(config)` yields the same deliveries lazily (for long runs) and fills its
`truth` as it goes; the truth is complete once the iterator is exhausted.

Times. Event times (inside the bodies) come from a simulated clock that starts at
`config.start` and runs `config.speed` times faster than the receipt clock; `Delivery.at`
is on the receipt clock (seconds after the start of sending), so an hour of traffic can be
sent in seconds while the exporter's grace periods and TTL still run on receipt time.

Truth. The expected numbers are computed from each call's complete set of events by
`_reference`, written from the README's "How notifications become numbers" and not from the
exporter's code: legs by redirect number, leg outcome by answer/cause/side, call outcome,
durations by phase. That offline view equals the exporter's online one because the
exporter is order-independent within its grace period; the generator keeps every gap in
which a call could look finished but is not (between a hangup and the next leg's
originate, or an event delayed by a reorder) under MAX_DECISION_GAP simulated seconds,
which at `speed >= 1` is less than the default 15 s grace. Counts of unanswered calls are
final only after the grace period on the receipt clock: wait for it before comparing.

Lines and destinations. Calls come in on `lines` customer numbers and are forwarded to
numbers of `destinations` groups (two numbers each); `unmapped_share` of calls and legs use
numbers not in the map. `label_map_yaml(config)` is the map naming them; with `mapped` the
truth expects the exporter to run with it (`--label-map`), else every line and destination
is "other". The caller's wait (premedia A or first `o` to the first `s`, or to the caller's
hangup of a call never answered) is in the truth per outcome and line, buckets included.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import json
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.table import Table

from .metrics import WAIT_BUCKETS

_MOSCOW = ZoneInfo("Europe/Moscow")
#: Default simulated start: 2026-01-01T00:00:00Z.
DEFAULT_START = 1_767_225_600
#: Longest simulated gap in which a call may look ended but is not (see module docstring).
MAX_DECISION_GAP = 8
#: A reorder delays an event past the next one of its call only if that one follows within this.
REORDER_MAX_GAP = 5
#: Follow-me: simulated seconds between a leg's hangup and the next leg's originate.
NEXT_LEG_GAP = (0, 3)
assert REORDER_MAX_GAP + NEXT_LEG_GAP[1] <= MAX_DECISION_GAP

#: Leg failure categories of the cause mix -> ((cause, side, weight), ...); side "" = not sent,
#: cause None = not a usable cause (sent as garbage with quirks, else left out).
FAILURES: dict[str, tuple[tuple[int | None, str, float], ...]] = {
    "busy": ((17, "B", 1.0),),
    "no_answer": ((19, "B", 0.5), (18, "", 0.1), (16, "B", 0.2), (31, "B", 0.1), (16, "", 0.1)),
    "rejected": ((21, "B", 0.8), (24, "B", 0.2)),
    "subscriber_absent": ((20, "B", 1.0),),
    "address_error": ((1, "B", 0.5), (28, "B", 0.3), (22, "B", 0.2)),
    "network_failure": ((34, "", 0.3), (38, "", 0.2), (41, "", 0.2), (127, "B", 0.1), (102, "", 0.1), (None, "", 0.1)),
}
#: Simulated ring seconds before a failure of each category (uniform range).
FAILURE_RING = {
    "busy": (0, 3), "no_answer": (20, 40), "rejected": (2, 15), "subscriber_absent": (0, 3),
    "address_error": (0, 1), "network_failure": (0, 10),
}
UNKNOWN_CODES = ("x", "cn", "dtmf", "r")
#: Names of the simulated lines and destination groups; more are numbered.
LINE_NAMES = ("sales", "support", "kazan-office")
DESTINATION_NAMES = ("duty-mobile", "office-pbx", "night-shift")
#: Numbers of a destination group.
NUMBERS_PER_DESTINATION = 2
#: The customer number of calls on no mapped line.
UNMAPPED_SIP_ID = "79586489999"


class SimConfig(BaseModel):
    """What traffic to generate; every share is 0..1, every *_pct a percentage of notifications."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    calls: int = Field(1000, ge=0, description="Incoming calls to generate.")
    seed: int = Field(0, description="Random seed: the same seed and config give the same traffic.")
    run_id: str = Field("", description="Mixed into call ids so runs with one seed are distinct calls.")
    rate: float = Field(100.0, gt=0, description="Calls begun per second of receipt time.")
    speed: float = Field(600.0, ge=1, description="Simulated seconds per receipt second.")
    start: int = Field(DEFAULT_START, ge=0, description="Unix time the simulated clock starts at.")
    extended: bool = Field(True, description="Extended events (sp, ep, t) as with event_extended=Y.")
    legs_max: int = Field(3, ge=1, le=20, description="Most legs per call (follow-me in turn, or parallel).")
    parallel_share: float = Field(0.2, ge=0, le=1, description="Calls ringing their legs in parallel.")
    answer_ratio: float = Field(0.6, ge=0, le=1, description="Chance a follow-me leg, or a parallel group, answers.")
    cause_mix: dict[str, float] = Field(
        default_factory=lambda: {"busy": 0.3, "no_answer": 0.35, "rejected": 0.1, "subscriber_absent": 0.1,
                                 "address_error": 0.05, "network_failure": 0.1},
        description="Relative weights of the failure categories of unanswered legs.")
    premedia: bool = Field(True, description="Prompts: to the caller before ringing, to B after answer.")
    abandon_share: float = Field(0.1, ge=0, le=1, description="Callers hanging up during premedia or ringing.")
    a_hangup_share: float = Field(0.5, ge=0, le=1, description="Answered calls ended by the caller (side A).")
    ring_mean: float = Field(8.0, gt=0, description="Mean ring seconds of answered legs (lognormal).")
    talk_mean: float = Field(90.0, gt=0, description="Mean conversation seconds (exponential).")
    talk_max: int = Field(3600, ge=1, description="Longest conversation, seconds.")
    quirks: bool = Field(True, description="The seed's quirks: spaced conf ids, 'client_id ', number formats, date_time 3 h off.")
    duplicate_pct: float = Field(0.0, ge=0, le=100, description="Notifications delivered twice.")
    reorder_pct: float = Field(0.0, ge=0, le=100, description="Notifications delivered after the next one of their call.")
    malformed_pct: float = Field(0.0, ge=0, le=100, description="Extra bodies that are not JSON.")
    unknown_event_pct: float = Field(0.0, ge=0, le=100, description="Extra notifications of an unknown event type.")
    lines: int = Field(3, ge=1, le=50, description="Customer numbers (sip_id) calls come in on, one line each.")
    destinations: int = Field(3, ge=1, le=50, description="Destination groups legs are forwarded to, two numbers each.")
    unmapped_share: float = Field(0.1, ge=0, le=1, description="Calls, and legs, on numbers not in the label map ('other').")
    mapped: bool = Field(False, description="The exporter runs with label_map_yaml(config) (--label-map): the truth names lines and destinations.")

    @field_validator("cause_mix")
    @classmethod
    def _mix(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(FAILURES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; known: {sorted(FAILURES)}")
        if any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        return value


@dataclass(slots=True)
class Delivery:
    """One HTTP body to POST at `at` seconds (receipt clock) after the start of sending."""

    at: float
    #: A JSON-ready notification, or raw bytes (malformed bodies).
    body: dict[str, Any] | bytes
    #: event, duplicate, malformed or unknown_event (recorded, for replay)
    kind: str = "event"
    #: index of the simulated call it belongs to
    call: int = 0
    content_type: str = "application/json"

    def payload(self) -> bytes:
        """The body as sent."""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Sample:
    """An expected value: the sum of every series named `name` whose labels include `labels`."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def key(self) -> str:
        inner = ",".join(f'{k}="{v}"' for k, v in self.labels)
        return f"{self.name}{{{inner}}}" if inner else self.name


class Truth:
    """What the exporter must show after the workload: expected samples, added up per call."""

    #: Label values created at 0 and expected as such unless the workload produces them.
    ZEROS: dict[str, tuple[str, tuple[str, ...]]] = {
        "mtt_notifications_total": ("event", ("originate", "answer", "hangup", "premedia_start", "premedia_end", "talk")),
        "mtt_notifications_duplicate_total": ("event", ("originate", "answer", "hangup", "premedia_start", "premedia_end", "talk")),
        "mtt_notifications_rejected_total": ("reason", ("malformed", "invalid", "unknown_event", "too_large", "too_many_items",
                                                        "unauthorized", "forbidden", "overloaded", "timeout")),
        "mtt_notification_conflicts_total": ("field", ("type", "cause", "number")),
        "mtt_call_legs_total": ("outcome", ("answered", "busy", "no_answer", "rejected", "subscriber_absent", "not_selected",
                                            "address_error", "abandoned", "network_failure", "expired")),
        "mtt_calls_total": ("outcome", ("answered", "unanswered", "abandoned", "expired")),
        "mtt_calls_evicted_total": ("reason", ("ttl", "capacity")),
        "mtt_premedia_duration_seconds_count": ("side", ("A", "B", "unknown")),
        "mtt_premedia_duration_seconds_sum": ("side", ("A", "B", "unknown")),
        "mtt_ring_duration_seconds_count": ("outcome", ("answered", "unanswered")),
        "mtt_ring_duration_seconds_sum": ("outcome", ("answered", "unanswered")),
        "mtt_call_wait_seconds_count": ("outcome", ("answered", "abandoned")),
        "mtt_call_wait_seconds_sum": ("outcome", ("answered", "abandoned")),
    }
    UNLABELLED = (
        "mtt_call_attempts_total", "mtt_call_answers_total", "mtt_call_hangups_total",
        "mtt_answered_duration_seconds_count", "mtt_answered_duration_seconds_sum",
        "mtt_talk_duration_seconds_count", "mtt_talk_duration_seconds_sum",
        "mtt_notification_delay_seconds_count", "mtt_calls_in_progress",
    )

    def __init__(self) -> None:
        self.values: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        #: deliveries by kind, and calls: for the summary
        self.sent: Counter[str] = Counter()
        self.calls = 0

    def add(self, name: str, value: float = 1, **labels: str) -> None:
        self.values[(name, tuple(sorted(labels.items())))] += value

    def samples(self) -> list[Sample]:
        """Every expected sample, zeros included, in a stable order.

        A zero is left out where samples with more labels cover it (e.g. the line of each call).
        """
        zeros = [(name, ((label, v),)) for name, (label, vs) in self.ZEROS.items() for v in vs] + [
            (name, ()) for name in self.UNLABELLED]
        covered = {(name, pair) for name, labels in self.values for pair in labels} | {(name, None) for name, _ in self.values}
        values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = dict.fromkeys(
            [(name, labels) for name, labels in zeros if (name, labels[0] if labels else None) not in covered], 0.0)
        for key, value in self.values.items():
            values[key] = values.get(key, 0.0) + value
        return [Sample(name, labels, value) for (name, labels), value in sorted(values.items())]

    def get(self, name: str, **labels: str) -> float:
        """Expected sum of the samples `name` whose labels include `labels` (0 when not produced)."""
        wanted = labels.items()
        return sum(v for (n, have), v in self.values.items() if n == name and wanted <= dict(have).items())

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "sent": dict(self.sent),
            "samples": [{"name": s.name, "labels": dict(s.labels), "value": s.value} for s in self.samples()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Truth:
        truth = cls()
        truth.calls = data.get("calls", 0)
        truth.sent.update(data.get("sent", {}))
        for s in data["samples"]:
            truth.add(s["name"], s["value"], **s["labels"])
        return truth


@dataclass
class Workload:
    """Deliveries in send order and the exact result they must produce."""

    config: SimConfig
    deliveries: list[Delivery]
    truth: Truth


# --- the reference: README rules applied to a call's complete set of events -----------------

_NORMAL_CLEARING = (16, 31)
_OUTCOME_BY_CAUSE = {
    17: "busy", 18: "no_answer", 19: "no_answer", 20: "subscriber_absent", 21: "rejected", 24: "rejected",
    26: "not_selected", 1: "address_error", 4: "address_error", 5: "address_error", 22: "address_error",
    23: "address_error", 28: "address_error",
}
_EVENT_NAMES = {"o": "originate", "s": "answer", "h": "hangup", "sp": "premedia_start", "ep": "premedia_end", "t": "talk"}


@dataclass(slots=True)
class _Ev:
    """One planned notification; `t` in whole simulated seconds since the start."""

    t: int
    code: str
    number: str = ""  # redirect number, 7 + 10 digits; "" when not sent
    side: str = ""  # "A", "B", or "" when not sent
    cause: int | None = None


def leg_outcome(answered: bool, cause: int | None, side: str) -> str:
    """README: answered if `s`; else 16/31 from A abandoned, from B/unknown no_answer; else by cause."""
    if answered:
        return "answered"
    if cause in _NORMAL_CLEARING:
        return "abandoned" if side == "A" else "no_answer"
    if cause is None:
        return "network_failure"
    return _OUTCOME_BY_CAUSE.get(cause, "network_failure")


def _reference(events: list[_Ev], truth: Truth, line: str = "other", destinations: dict[str, str] | None = None) -> None:
    """Add one complete call's expected numbers to `truth`; `line` of the call and the
    destination group of each number (absent: "other")."""
    names = destinations or {}
    legs: dict[str, dict[str, _Ev]] = {}
    premedia: dict[tuple[str, str], dict[str, int]] = {}
    caller_hung_up = False
    start = hung_up = None  # the caller's wait: first sp/ep of A or `o`; first hangup of A
    for ev in sorted(events, key=lambda ev: ev.t):
        truth.add("mtt_notifications_total", event=_EVENT_NAMES[ev.code])
        truth.add("mtt_notification_delay_seconds_count")
        if ev.code in ("sp", "ep"):
            premedia.setdefault((ev.side, ev.number), {})[ev.code] = ev.t
            if ev.side == "A" and start is None:
                start = ev.t
            continue
        if ev.code == "o":
            truth.add("mtt_call_attempts_total", line=line)
            start = ev.t if start is None else start
        elif ev.code == "s":
            truth.add("mtt_call_answers_total", line=line)
        elif ev.code == "h":
            truth.add("mtt_call_hangups_total")  # the total, so that no other series may grow
            truth.add("mtt_call_hangups_total", cause="unknown" if ev.cause is None else str(ev.cause),
                      side=ev.side or "unknown", line=line)
            caller_hung_up |= ev.side == "A"
            if ev.side == "A" and hung_up is None:
                hung_up = ev.t
        if ev.number:
            legs.setdefault(ev.number, {})[ev.code] = ev
    for (side, _), pair in premedia.items():
        if "sp" in pair and "ep" in pair:
            truth.add("mtt_premedia_duration_seconds_count", side=side or "unknown")
            truth.add("mtt_premedia_duration_seconds_sum", max(pair["ep"] - pair["sp"], 0), side=side or "unknown")
    answered = False
    answers = []
    for number, leg in legs.items():
        o, s, t, h = (leg.get(code) for code in ("o", "s", "t", "h"))
        assert h is not None, "every planned leg hangs up"
        answered |= s is not None
        destination = names.get(number, "other")
        truth.add("mtt_call_legs_total", outcome=leg_outcome(s is not None, h.cause, h.side), destination=destination)
        if o is not None:
            ring_end, ring = (s, "answered") if s is not None else (h, "unanswered")
            truth.add("mtt_ring_duration_seconds_count", outcome=ring, destination=destination)
            truth.add("mtt_ring_duration_seconds_sum", max(ring_end.t - o.t, 0), outcome=ring, destination=destination)
        if s is not None:
            answers.append(s.t)
        if s is not None:
            truth.add("mtt_answered_duration_seconds_count")
            truth.add("mtt_answered_duration_seconds_sum", max(h.t - s.t, 0))
        if t is not None:
            truth.add("mtt_talk_duration_seconds_count")
            truth.add("mtt_talk_duration_seconds_sum", max(h.t - t.t, 0))
    outcome = "answered" if answered else "abandoned" if caller_hung_up else "unanswered"
    truth.add("mtt_calls_total", outcome=outcome, line=line)
    end = min(answers) if answered else hung_up if caller_hung_up else None
    if start is not None and end is not None:
        wait = max(end - start, 0)
        truth.add("mtt_call_wait_seconds_count", outcome=outcome, line=line)
        truth.add("mtt_call_wait_seconds_sum", wait, outcome=outcome, line=line)
        for le in WAIT_BUCKETS:
            truth.add("mtt_call_wait_seconds_bucket", 1 if wait <= le else 0, outcome=outcome, line=line, le=f"{float(le)}")
    truth.calls += 1


def line_numbers(config: SimConfig) -> dict[str, str]:
    """sip_id -> line name of the simulated lines."""
    names = [*LINE_NAMES, *(f"line-{i}" for i in range(len(LINE_NAMES) + 1, config.lines + 1))]
    return {f"795864880{i:02d}": names[i] for i in range(config.lines)}


def destination_numbers(config: SimConfig) -> dict[str, str]:
    """Redirect number -> destination group of the simulated destinations."""
    names = [*DESTINATION_NAMES, *(f"destination-{i}" for i in range(len(DESTINATION_NAMES) + 1, config.destinations + 1))]
    return {f"7968488{i:02d}{k:02d}": names[i] for i in range(config.destinations) for k in range(NUMBERS_PER_DESTINATION)}


def _pasted(number: str, k: int) -> str:
    """A number as an operator might paste it: canonical, +7 (XXX) XXX-XX-XX, or 8 XXX XXX XX XX."""
    if k % 3 == 1:
        return f"+7 ({number[1:4]}) {number[4:7]}-{number[7:9]}-{number[9:]}"
    if k % 3 == 2:
        return f"8 {number[1:4]} {number[4:7]} {number[7:9]} {number[9:]}"
    return number


def label_map_yaml(config: SimConfig) -> str:
    """The label map naming the simulated lines and destinations (for `--label-map`)."""
    out = ["# written by `mtt-exporter simulate`: the lines and destinations it sends to", "lines:"]
    out += [f'  "{_pasted(n, k)}": {name}' for k, (n, name) in enumerate(line_numbers(config).items())]
    out.append("destinations:")
    out += [f'  "{_pasted(n, k)}": {name}' for k, (n, name) in enumerate(destination_numbers(config).items())]
    return "\n".join(out) + "\n"


# --- call flows -----------------------------------------------------------------------------


class _CallPlanner:
    """Plans the events of one call from the config's shares and distributions."""

    def __init__(self, config: SimConfig, rng: random.Random, pool: list[str] | None = None) -> None:
        self.c = config
        self.rng = rng
        self.categories = [k for k, w in config.cause_mix.items() if w > 0]
        self.weights = [config.cause_mix[k] for k in self.categories]
        #: the destination groups' numbers
        self.pool = pool or []

    def number(self) -> str:
        while True:  # never one of the mapped numbers by chance
            number = "79" + "".join(self.rng.choices("0123456789", k=9))
            if number not in self.pool:
                return number

    def leg_number(self, taken: list[str]) -> str:
        """A destination's number not yet used by the call, or (unmapped_share) any number."""
        free = [n for n in self.pool if n not in taken]
        if not free or self.rng.random() < self.c.unmapped_share:
            return self.number()
        return self.rng.choice(free)

    def failure(self) -> tuple[str, int | None, str]:
        category = self.rng.choices(self.categories, self.weights)[0]
        options = FAILURES[category]
        cause, side, _ = self.rng.choices(options, [w for _, _, w in options])[0]
        return category, cause, side

    def ring_answered(self) -> int:
        sigma = 0.6
        mu = math.log(self.c.ring_mean) - sigma**2 / 2
        return max(1, min(120, round(self.rng.lognormvariate(mu, sigma))))

    def talk(self) -> int:
        return max(1, min(self.c.talk_max, round(self.rng.expovariate(1 / self.c.talk_mean))))

    def plan(self, t: int) -> list[_Ev]:
        c, rng = self.c, self.rng
        events: list[_Ev] = []
        abandon = rng.random() < c.abandon_share
        if c.premedia and rng.random() < 0.7:
            prompt = rng.randint(3, 10)
            if abandon and rng.random() < 0.3:  # caller hangs up during the prompt: no leg, no ep
                if c.extended:
                    events.append(_Ev(t, "sp", side="A"))
                events.append(_Ev(t + rng.randint(1, prompt - 1), "h", side="A", cause=16))
                return events
            if c.extended:
                events += [_Ev(t, "sp", side="A"), _Ev(t + prompt, "ep", side="A")]
            t += prompt + 1
        numbers: list[str] = []
        legs = rng.randint(1, c.legs_max)
        while len(numbers) < legs:
            number = self.leg_number(numbers)
            if number not in numbers:
                numbers.append(number)
        if len(numbers) > 1 and rng.random() < c.parallel_share:
            self._parallel(t, numbers, abandon, events)
        else:
            self._follow_me(t, numbers, abandon, events)
        return events

    def _answered(self, t: int, number: str, events: list[_Ev]) -> None:
        """Leg `number` answered at `t`: B's prompt, talk, and the hangup."""
        c, rng = self.c, self.rng
        events.append(_Ev(t, "s", number))
        if c.extended:
            if c.premedia and rng.random() < 0.5:
                prompt = rng.randint(2, 9)
                events += [_Ev(t, "sp", number, side="B"), _Ev(t + prompt, "ep", number, side="B")]
                t += prompt
            t += 1
            events.append(_Ev(t, "t", number))
        side = "A" if rng.random() < c.a_hangup_share else "B"
        events.append(_Ev(t + self.talk(), "h", number, side=side, cause=16 if rng.random() < 0.95 else 31))

    def _follow_me(self, t: int, numbers: list[str], abandon: bool, events: list[_Ev]) -> None:
        rng = self.rng
        abandon_at = rng.randrange(len(numbers)) if abandon else -1
        for i, number in enumerate(numbers):
            events.append(_Ev(t, "o", number))
            if i == abandon_at:
                events.append(_Ev(t + rng.randint(2, 30), "h", number, side="A", cause=16))
                return
            if rng.random() < self.c.answer_ratio:
                self._answered(t + self.ring_answered(), number, events)
                return
            category, cause, side = self.failure()
            t += rng.randint(*FAILURE_RING[category])
            events.append(_Ev(t, "h", number, side=side, cause=cause))
            t += rng.randint(*NEXT_LEG_GAP)

    def _parallel(self, t: int, numbers: list[str], abandon: bool, events: list[_Ev]) -> None:
        rng = self.rng
        events += [_Ev(t, "o", number) for number in numbers]
        if abandon:
            end = t + rng.randint(2, 30)
            events += [_Ev(end, "h", number, side="A", cause=16) for number in numbers]
        elif rng.random() < self.c.answer_ratio:
            winner = rng.choice(numbers)
            answer = t + self.ring_answered()
            events += [_Ev(answer, "h", n, cause=26) for n in numbers if n != winner]  # losers cleared
            self._answered(answer, winner, events)
        else:
            for number in numbers:
                category, cause, side = self.failure()
                events.append(_Ev(t + rng.randint(*FAILURE_RING[category]), "h", number, side=side, cause=cause))


# --- bodies -----------------------------------------------------------------------------------


def moscow_stamp(unix: int) -> str:
    """Unix seconds -> `YYYY-MM-DD-HH-MM-SS` Moscow wall-clock time, as in `data`."""
    return datetime.fromtimestamp(unix, _MOSCOW).strftime("%Y-%m-%d-%H-%M-%S")


class _Renderer:
    """Turns planned events into JSON bodies, with the seed's quirks when asked."""

    def __init__(self, config: SimConfig, rng: random.Random) -> None:
        self.c = config
        self.rng = rng

    def number(self, canonical: str) -> str:
        if not self.c.quirks:
            return canonical
        return self.rng.choice((canonical, "+" + canonical, "8" + canonical[1:], canonical[1:]))

    def conf_id(self, hex32: str) -> str:
        spaced = " ".join(hex32[i:i + 8] for i in range(0, 32, 8))
        if not self.c.quirks:
            return spaced
        return self.rng.choice((spaced, " " + spaced + " ", spaced + " ", hex32, spaced.lower()))

    def body(self, ev: _Ev, call: dict[str, str]) -> dict[str, Any]:
        c, rng = self.c, self.rng
        unix = c.start + ev.t
        premedia_a = ev.side == "A" and ev.code in ("sp", "ep")
        data = f"event={ev.code}_{self.number(call['caller']) if premedia_a else (self.number(ev.number) if ev.number else '')}_{moscow_stamp(unix)}"
        event: dict[str, Any] = {"type": ev.code}
        if ev.side:
            event["side"] = ev.side
        body: dict[str, Any] = {}
        if ev.code == "h":
            if ev.cause is not None:
                cause: int | str = ev.cause if c.quirks and rng.random() < 0.3 else str(ev.cause)
            elif c.quirks:
                cause = "n/a"  # not an integer 0..127: counted as cause "unknown"
            else:
                cause = ""
            if cause != "":
                event["cause"] = cause
                data += f"&cause={cause}"
                if c.quirks and rng.random() < 0.2:
                    body["cause"] = cause
        elif ev.code == "s" and c.quirks and rng.random() < 0.5:
            data += "&cause=16"  # as in MTT's example of `s`
        date_time: int = unix
        if c.quirks:
            if rng.random() < 0.25:
                date_time += 3 * 3600  # Moscow wall-clock time encoded as UTC, as in the seed
            elif rng.random() < 0.1:
                date_time *= 1000  # emulators send milliseconds
        body.update(date_time=date_time, data=data, event=event, h323_conf_id=self.conf_id(call["conf"]))
        if ev.number:
            body["redirect_number"] = self.number(ev.number)
        body["numberA"] = self.number(call["caller"])
        body["sip_id"] = (" " if c.quirks and rng.random() < 0.1 else "") + call["sip"]
        body["client_id " if c.quirks and rng.random() < 0.3 else "client_id"] = call["client"]
        body["extension"] = "0004"
        return body

    def unknown_event(self, call: dict[str, str], t: int) -> dict[str, Any]:
        code = self.rng.choice(UNKNOWN_CODES)
        return {"date_time": self.c.start + t, "data": f"event={code}_{call['caller']}_{moscow_stamp(self.c.start + t)}",
                "event": {"type": code}, "h323_conf_id": self.conf_id(call["conf"]), "numberA": call["caller"]}

    def malformed(self, call: dict[str, str]) -> bytes:
        # no '=' anywhere: the exporter must not take them for a urlencoded form
        return self.rng.choice((
            b'{"h323_conf_id": "' + call["conf"].encode() + b'", "event": {"type": "o"',
            b'\xff\xfe{"event": {"type": "h"}}',
            b"<html><body>502 Bad Gateway</body></html>",
            b"null",
            b"[1, 2, 3",
        ))


# --- the generator ----------------------------------------------------------------------------


class Simulation:
    """Lazily generated deliveries in send order; `truth` is complete once iteration ends."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.truth = Truth()
        self.lines = line_numbers(config)
        self.destinations = destination_numbers(config)
        self.pool = list(self.destinations)

    def _call(self, index: int, start_at: float, rng: random.Random) -> list[Delivery]:
        c = self.config
        planner, renderer = _CallPlanner(c, rng, self.pool), _Renderer(c, rng)
        t0 = math.ceil(start_at * c.speed)  # deliveries never precede the call's start
        events = planner.plan(t0)
        sip = UNMAPPED_SIP_ID if rng.random() < c.unmapped_share else rng.choice(list(self.lines))
        if c.mapped:
            _reference(events, self.truth, self.lines.get(sip, "other"), self.destinations)
        else:
            _reference(events, self.truth)
        call = {
            "conf": hashlib.blake2b(f"{c.run_id}|{c.seed}|{index}".encode(), digest_size=16).hexdigest().upper(),
            "caller": planner.number(),
            "sip": sip,
            "client": str(1000 + index % 9000),
        }
        events.sort(key=lambda ev: ev.t)
        at = [ev.t / c.speed + rng.uniform(0, 0.01) for ev in events]
        # reorder: delay an event past the next one of its call, if that one follows closely
        k = 0
        while k < len(events) - 1:
            if rng.random() * 100 < c.reorder_pct and events[k + 1].t - events[k].t <= REORDER_MAX_GAP:
                at[k] = at[k + 1] + 0.001
                k += 1
            k += 1
        out: list[Delivery] = []
        for ev, when in zip(events, at):
            body = renderer.body(ev, call)
            out.append(Delivery(when, body, "event", index))
            if rng.random() * 100 < c.duplicate_pct:
                out.append(Delivery(when + rng.uniform(0.001, 1.0), body, "duplicate", index))
                self.truth.add("mtt_notifications_total", event=_EVENT_NAMES[ev.code])
                self.truth.add("mtt_notifications_duplicate_total", event=_EVENT_NAMES[ev.code])
            if rng.random() * 100 < c.malformed_pct:
                out.append(Delivery(when + 0.0005, renderer.malformed(call), "malformed", index))
                self.truth.add("mtt_notifications_rejected_total", reason="malformed")
            if rng.random() * 100 < c.unknown_event_pct:
                out.append(Delivery(when + 0.0005, renderer.unknown_event(call, ev.t), "unknown_event", index))
                self.truth.add("mtt_notifications_rejected_total", reason="unknown_event")
        self.truth.sent.update(d.kind for d in out)
        return out

    def __iter__(self) -> Iterator[Delivery]:
        c = self.config
        rng = random.Random(c.seed)
        heap: list[tuple[float, int, Delivery]] = []
        seq = 0
        start_at = 0.0
        for index in range(c.calls):
            # every delivery of a call comes at or after its start: flush what is due before it
            while heap and heap[0][0] <= start_at:
                yield heapq.heappop(heap)[2]
            call_rng = random.Random(rng.getrandbits(64))
            for d in self._call(index, start_at, call_rng):
                heapq.heappush(heap, (d.at, seq, d))
                seq += 1
            start_at += rng.expovariate(c.rate)
        while heap:
            yield heapq.heappop(heap)[2]


def generate(config: SimConfig) -> Workload:
    """All deliveries of `config` in send order, with the truth."""
    simulation = Simulation(config)
    deliveries = list(simulation)
    return Workload(config, deliveries, simulation.truth)


# --- comparing with an exposition -------------------------------------------------------------


def _index(exposition: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    series: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            series.setdefault(s.name, []).append((s.labels, s.value))
    return series


def _total(series: dict[str, list[tuple[dict[str, str], float]]], sample: Sample) -> float | None:
    found = series.get(sample.name)
    if found is None:
        return None
    return sum(value for labels, value in found if all(labels.get(k) == v for k, v in sample.labels))


def diff(truth: Truth, exposition: str, baseline: str | None = None) -> list[str]:
    """Differences between the truth and a Prometheus text exposition; [] is an exact match.

    Labels not named in a truth sample are summed over. With `baseline` (a scrape taken
    before the workload was sent) the change since then is compared, so an exporter that
    already had traffic can be checked.
    """
    now = _index(exposition)
    before = _index(baseline) if baseline is not None else {}
    problems: list[str] = []
    for sample in truth.samples():
        got = _total(now, sample)
        if got is None:
            problems.append(f"{sample.key()}: expected {sample.value:g}, not in the exposition")
            continue
        got -= _total(before, sample) or 0.0
        if not math.isclose(got, sample.value, rel_tol=1e-9, abs_tol=1e-6):
            problems.append(f"{sample.key()}: expected {sample.value:g}, got {got:g}")
    return problems


# --- command line: `mtt-exporter simulate` ----------------------------------------------------

#: HTTP status each kind of delivery must get.
EXPECTED_STATUS = {"event": 200, "duplicate": 200, "malformed": 400, "unknown_event": 400}


def _cause_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected CATEGORY=WEIGHT,..., got {part!r}")
        mix[name.strip()] = float(weight)
    return mix


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    from .replay import DEFAULT_URL, TOKEN_ENV

    parser = argparse.ArgumentParser(
        prog="mtt-exporter simulate",
        description="Post simulated MTT call traffic to a running exporter's /notify and print (or, with "
        "--check, compare with its /metrics) exactly the numbers the exporter must show. Event times start "
        "at --start ('now' by default) and run --speed times faster than the sending. Exit status: 0 as expected, 1 unexpected answers or differences, 2 the "
        "exporter could not be scraped.",
        epilog=f"example: {TOKEN_ENV}=s3cret mtt-exporter simulate --calls 200 --check",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL, metavar="URL", help="notify URL")
    parser.add_argument("--metrics-url", metavar="URL",
                        help="scraped by --check (default: /metrics on the --url's host; give the --metrics-listen "
                        "address of an exporter that has one)")
    parser.add_argument("--token", metavar="SECRET", help=f"sent as Bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--duration", type=float, help="seconds of sending: sets --calls to rate x duration")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at most")
    parser.add_argument("--truth", type=Path, metavar="FILE", help="write the expected samples as JSON")
    parser.add_argument("--label-map", type=Path, metavar="FILE",
                        help="write the label map of the simulated lines and destinations here, ask the exporter to "
                             "reload its --label-map (POST /-/reload), and expect it to use this one (--mapped)")
    parser.add_argument("--check", action="store_true",
                        help="scrape /metrics before and after, exit 1 unless the change equals the truth")
    parser.add_argument("--wait", type=float, default=16.0,
                        help="seconds to wait before the final scrape: the exporter's --call-end-grace plus a tick")
    traffic = parser.add_argument_group("traffic")
    for name, info in SimConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = info.get_default(call_default_factory=True)
        if name == "cause_mix":
            traffic.add_argument(flag, type=_cause_mix, default=default, metavar="CATEGORY=WEIGHT,...",
                                 help=f"{info.description} Categories: {', '.join(FAILURES)}.")
        elif name == "start":
            traffic.add_argument(flag, default="now", help="Unix time the simulated clock starts at, or 'now'.")
        elif name == "run_id":
            traffic.add_argument(flag, default=None, help=f"{info.description} (default: random)")
        elif info.annotation is bool:
            traffic.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=info.description)
        else:
            traffic.add_argument(flag, type=info.annotation, default=default, help=info.description)
    return parser


def summary_table(truth: Truth) -> Table:
    """The expected numbers that matter most, as a table."""
    table = Table(title=f"expected: {truth.calls} calls, {sum(truth.sent.values())} requests")
    table.add_column("metric")
    table.add_column("labels")
    table.add_column("value", justify="right")
    shown = ("mtt_calls_total", "mtt_call_legs_total", "mtt_call_attempts_total", "mtt_call_answers_total",
             "mtt_notifications_duplicate_total", "mtt_notifications_rejected_total")
    for s in truth.samples():
        if s.name in shown and (s.value or not s.labels):
            table.add_row(s.name, ",".join(f"{k}={v}" for k, v in s.labels), f"{s.value:g}")
    hangups = sorted(((v, k[1]) for k, v in truth.values.items() if k[0] == "mtt_call_hangups_total" and k[1]), reverse=True)
    for value, labels in hangups[:8]:
        table.add_row("mtt_call_hangups_total", ",".join(f"{k}={v}" for k, v in labels), f"{value:g}")
    for name in ("mtt_ring_duration_seconds", "mtt_answered_duration_seconds", "mtt_talk_duration_seconds"):
        count, total = truth.get(name + "_count"), truth.get(name + "_sum")
        if name == "mtt_ring_duration_seconds":
            count = sum(truth.get(name + "_count", outcome=o) for o in ("answered", "unanswered"))
            total = sum(truth.get(name + "_sum", outcome=o) for o in ("answered", "unanswered"))
        table.add_row(name, "mean", f"{total / count:.1f} s" if count else "-")
    return table


async def _reload(notify_url: str, headers: dict[str, str], console: Console) -> None:
    """Ask the exporter to read its --label-map again (it may be the file just written)."""
    import aiohttp
    from urllib.parse import urljoin

    url = urljoin(notify_url, "/-/reload")
    try:
        async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as response:
            text = await response.text()
    except (aiohttp.ClientError, OSError) as error:
        console.print(f"label map: {url} not reached ({error}); reload the exporter yourself", markup=False)
        return
    if response.status != 200:
        console.print(f"label map: {url} answered {response.status} {text[:300]}; reload the exporter yourself",
                      markup=False)


def scrape_failure(url: str, error: BaseException, derived: bool) -> str:
    """Why /metrics could not be read; a 404 on the URL derived from --url suggests --metrics-url."""
    message = f"mtt-exporter simulate: cannot scrape {url}: {error}"
    if derived and getattr(error, "status", None) == 404:
        message += ("\n  an exporter started with --metrics-listen serves /metrics only on that listener: "
                    "pass --metrics-url http://HOST:PORT/metrics")
    return message


async def _run(config: SimConfig, args: argparse.Namespace, console: Console) -> int:
    from .replay import auth_headers, metrics_url_for, post_all, progress_bar, scrape

    metrics_url = args.metrics_url or metrics_url_for(args.url)
    if args.label_map is not None:
        await _reload(args.url, auth_headers(args.token), console)
    baseline = None
    if args.check:
        try:
            baseline = await scrape(metrics_url)
        except Exception as error:  # noqa: BLE001 - any failure to reach the exporter ends the run
            console.print(scrape_failure(metrics_url, error, args.metrics_url is None), markup=False, highlight=False)
            return 2
    simulation = Simulation(config)
    with progress_bar(console) as progress:
        task = progress.add_task("simulate", total=config.calls, unit="calls", info="")

        def show(stats: Any) -> None:
            rate = stats.sent / stats.seconds if stats.seconds else 0
            progress.update(task, completed=stats.calls_started, info=f"{stats.sent} requests, {rate:.0f}/s")

        stats = await post_all(simulation, args.url, speed=1.0, concurrency=args.concurrency,
                               headers=auth_headers(args.token), on_progress=show)
    truth = simulation.truth
    out = Console()
    out.print(summary_table(truth))
    out.print(stats.table("sent"))
    if args.truth is not None:
        args.truth.write_text(json.dumps({"config": config.model_dump(), **truth.to_json()}, indent=1) + "\n")
    failures = stats.failures(lambda kind: EXPECTED_STATUS[kind])
    if failures:
        out.print(f"{failures} requests did not get the expected answer (see the table)")
    if stats.all_refused():
        for line in stats.refusal_lines():
            out.print(line, markup=False, highlight=False)
        out.print("every request was refused: nothing to check", markup=False, highlight=False)
        return 1
    if not args.check:
        return 1 if failures else 0
    with console.status(f"waiting {args.wait:g} s for the exporter's grace period"):
        await asyncio.sleep(args.wait)
    for _ in range(4):  # a tick may still be due: retry briefly before reporting
        try:
            problems = diff(truth, await scrape(metrics_url), baseline)
        except Exception as error:  # noqa: BLE001 - the exporter went away during the run
            console.print(scrape_failure(metrics_url, error, args.metrics_url is None), markup=False, highlight=False)
            return 2
        if not problems:
            break
        await asyncio.sleep(1)
    for problem in problems:
        out.print(problem, markup=False, highlight=False)
    out.print(f"{len(problems)} differences", markup=False, highlight=False)
    return 1 if problems or failures else 0


def main(argv: list[str] | None = None) -> None:
    """`mtt-exporter simulate`."""
    args = _parser().parse_args(argv)
    values = {name: getattr(args, name) for name in SimConfig.model_fields}
    values["start"] = int(time.time()) if args.start == "now" else args.start
    values["run_id"] = args.run_id if args.run_id is not None else secrets.token_hex(4)
    if args.label_map is not None:
        values["mapped"] = True
    if args.duration is not None:
        values["calls"] = max(1, round(args.rate * args.duration))
    console = Console(stderr=True)
    try:
        config = SimConfig(**values)
    except ValidationError as error:
        lines = [f"  --{'.'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in error.errors()]
        console.print("mtt-exporter simulate: invalid settings:\n" + "\n".join(lines), markup=False)
        raise SystemExit(2) from None
    if args.label_map is not None:
        args.label_map.write_text(label_map_yaml(config))
        console.print(f"label map written to {args.label_map}", markup=False)
    raise SystemExit(asyncio.run(_run(config, args, console)))
