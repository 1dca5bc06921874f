"""Joins the notifications of one call into facts: durations, leg and call outcomes.

Pure and synchronous: no aiohttp, no prometheus_client. Every function that needs "now"
takes it as an argument (the receipt clock, Unix seconds); event times only ever give
durations, so a call from 2019 replayed today is tracked like any other.

Rules, per call (keyed by the normalised h323_conf_id):
- a leg is one `o` to one redirect number; pairs o->s (ring), s->h (answered), t->h (talk)
  and sp->ep per side (premedia) are measured as soon as both ends are in, in any order;
- a leg that hung up after `s` ends at once as answered; a leg that hung up without `s`
  ends by its cause once no `s` came within the grace period (out-of-order delivery);
- a call ends on the hangup of an answered leg; without an answer, once a hangup from
  side A was seen, or no leg is open, and nothing changed that for the grace period;
- ended calls stay (for duplicate detection and late legs) until the TTL since their last
  notification; a call or leg still open then is counted as expired, and so is one evicted
  early by the cap (Evicted tells the two apart);
- a call takes at most MAX_NOTIFICATIONS_PER_CALL distinct notifications (memory bound);
- the line of a call (a name of the label map, never the number) is decided once, from its
  first notification that carries a sip_id; the destination of a leg is looked up from its
  redirect number when its facts are made;
- the caller's wait runs from the caller's first notification (premedia A or the first `o`)
  to the first answer on any leg, or to the caller's hangup of a call never answered; it is
  measured once the grace period after the answer (or with the abandoned call's end) ran
  out, so a caller notification delivered late still counts.

`dump_state`/`load_state` turn the call table into JSON-able data and back, for restarts;
`call_to_dict`/`call_from_dict` do it for one call.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterator
from itertools import islice
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from .cause import CAUSE_MAX, LegOutcome, unanswered_outcome
from .clock import MAX_UNIX_SECONDS, seconds
from .labelmap import MAX_NAME_LENGTH, NO_LABELS, OTHER, LabelMap
from .model import EventType, Notification, PayloadError, Reason, Side

#: Distinct notifications one call may take; real calls have ~8 per leg. Bounds memory
#: (legs, premedia, dedup keys) and the linear dedup scan against a sender that
#: repeats one call id with ever new times or numbers.
MAX_NOTIFICATIONS_PER_CALL = 1000
#: Longest duration accepted even with a shorter --call-ttl: tests and replays run the event
#: clock faster than the receipt clock the TTL counts on, and real calls last up to an hour or so.
MIN_SPAN = 7200.0
#: Version of the data of `dump_state`; `load_state` reads it and the versions in
#: READABLE_STATE_VERSIONS (1: before lines and waits; its calls load with neither).
STATE_VERSION = 2
READABLE_STATE_VERSIONS = (1, 2)
STATE_FORMAT = "mtt-exporter-state"


class CallOutcome(StrEnum):
    """How a whole incoming call ended."""

    ANSWERED = "answered"
    UNANSWERED = "unanswered"
    ABANDONED = "abandoned"
    EXPIRED = "expired"


class Phase(StrEnum):
    """A measured interval of a call."""

    PREMEDIA = "premedia"  # sp -> ep, labelled by side
    RING = "ring"  # o -> s (answered) or o -> h (unanswered)
    ANSWERED = "answered"  # s -> h
    TALK = "talk"  # t -> h


class RingOutcome(StrEnum):
    """Label of the ring duration."""

    ANSWERED = "answered"
    UNANSWERED = "unanswered"


class WaitOutcome(StrEnum):
    """How the caller's wait ended: someone answered, or the caller gave up."""

    ANSWERED = "answered"
    ABANDONED = "abandoned"


class EvictionReason(StrEnum):
    """Why an in-progress call was dropped from memory."""

    TTL = "ttl"
    CAPACITY = "capacity"


@dataclass(slots=True)
class Duration:
    """An interval measured on one call; `label` is the side or ring outcome; `destination`
    the leg's destination group (ring only)."""

    phase: Phase
    seconds: float
    label: str = ""
    conf_id: str = ""
    destination: str = OTHER


@dataclass(slots=True)
class Applied:
    """An originate, answer or hangup notification applied (not a duplicate) to a call of `line`.

    One is made per originate, answer and hangup (see `Fact` on why facts are not frozen).
    """

    event: EventType
    side: Side
    cause: int | None
    line: str = OTHER


@dataclass(slots=True)
class LegEnded:
    """A leg to a number of `destination` ended with this outcome."""

    outcome: LegOutcome
    destination: str = OTHER


@dataclass(slots=True, frozen=True)
class CallStarted:
    """First notification of a call not tracked before."""


@dataclass(slots=True, frozen=True)
class CallRestored:
    """A call in progress was loaded from saved state (counts as in progress again)."""


@dataclass(slots=True)
class CallEnded:
    """A call of `line` ended with this outcome."""

    outcome: CallOutcome
    line: str = OTHER


@dataclass(slots=True)
class Waited:
    """The caller of a call of `line` waited this long until answered or abandoned."""

    outcome: WaitOutcome
    seconds: float
    line: str = OTHER


@dataclass(slots=True, frozen=True)
class Evicted:
    """An in-progress call was dropped from memory."""

    reason: EvictionReason


#: Facts with fields are plain slots dataclasses, not frozen ones: several are made per call, and a
#: frozen dataclass's __init__ (object.__setattr__ per field) costs four times as much. Nothing
#: keeps or changes them: the metrics module records each once.
Fact = Applied | Duration | LegEnded | CallStarted | CallRestored | CallEnded | Waited | Evicted


class Leg:
    """Event times of one forwarding leg (None: not seen yet)."""

    __slots__ = ("number", "o", "s", "t", "h", "cause", "side", "done")

    def __init__(self, number: str) -> None:
        self.number = number
        self.o: float | None = None
        self.s: float | None = None
        self.t: float | None = None
        self.h: float | None = None
        self.cause: int | None = None
        self.side: Side = Side.UNKNOWN
        self.done = False


class Call:
    """State of one call: its legs, unpaired premedia, and what was seen for dedup.

    Kept compact, since up to --max-calls of them live for hours: legs in a list (a call has
    a few, found by number), dedup keys as machine integers, premedia None when all paired.
    """

    __slots__ = ("legs", "premedia", "seen", "last_seen", "deadline", "a_hangup", "ended", "line", "start", "a_hangup_at",
                 "waited")

    def __init__(self, now: float) -> None:
        #: one per redirect number (a number tried again replaces its ended leg)
        self.legs: list[Leg] = []
        #: (side, number) -> [sp time, ep time], while one end is missing
        self.premedia: dict[tuple[str, str], list[float | None]] | None = None
        #: 64-bit keys of the notifications applied, for duplicate detection
        self.seen = array("q")
        self.last_seen = now
        #: receipt time after which pending decisions (unanswered legs, call end) are made
        self.deadline: float | None = None
        self.a_hangup = False
        self.ended = False
        #: name from the label map, decided by the first notification with a sip_id; "" until then
        self.line = ""
        #: event time of the caller's first notification (premedia A or `o`): the wait's start
        self.start: float | None = None
        #: event time of the caller's hangup: the end of an abandoned call's wait
        self.a_hangup_at: float | None = None
        #: the caller's wait was measured (once per call)
        self.waited = False


_PREMEDIA = (EventType.PREMEDIA_START, EventType.PREMEDIA_END)


def dedup_key(n: Notification) -> int:
    """64-bit key of event, side, number and event time (to the millisecond).

    Stable across processes (not `hash()`, which is salted per process): keys survive a
    restart through the state file and are compared between replicas sharing Redis.
    """
    number = n.number_a if n.side is Side.A and n.event in _PREMEDIA else n.redirect_number
    raw = f"{n.event.code}|{n.side.value}|{number}|{n.time:.3f}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)


def _span(start: float, end: float) -> float:
    return end - start if end > start else 0.0


def _leg_for(call: Call, n: Notification) -> Leg | None:
    number = n.redirect_number
    if not number and n.event is not EventType.ORIGINATE:
        # no number given: the only leg still open is the one meant
        open_legs = [leg for leg in call.legs if leg.h is None]
        if len(open_legs) == 1:
            return open_legs[0]
        if n.event is EventType.HANGUP:
            return None  # e.g. the caller hung up during premedia: no leg to end
    for leg in call.legs:
        if leg.number == number:
            return leg
    leg = Leg(number)
    call.legs.append(leg)
    return leg


def _line(call: Call, labels: LabelMap) -> str:
    return call.line or labels.line("")


def _first_answer(call: Call) -> float | None:
    first = None
    for leg in call.legs:
        s = leg.s
        if s is not None and (first is None or s < first):
            first = s
    return first


def _answered_wait(call: Call, labels: LabelMap, facts: list[Fact]) -> None:
    """The wait of an answered call, once: from the caller's first notification to the first answer."""
    if call.waited or call.start is None:
        return
    answered = _first_answer(call)
    if answered is not None:
        call.waited = True
        facts.append(Waited(WaitOutcome.ANSWERED, _span(call.start, answered), _line(call, labels)))


def _premedia(call: Call, n: Notification, facts: list[Fact], labels: LabelMap) -> None:
    number = n.number_a if n.side is Side.A else n.redirect_number
    if n.side is Side.A and (call.start is None or n.time < call.start):
        call.start = n.time
    if call.premedia is None:
        call.premedia = {}
    key = (n.side.value, number)
    pair = call.premedia.setdefault(key, [None, None])
    pair[0 if n.event is EventType.PREMEDIA_START else 1] = n.time
    start, end = pair
    if start is not None and end is not None:
        facts.append(Duration(Phase.PREMEDIA, _span(start, end), n.side.value, n.conf_id))
        del call.premedia[key]
        if not call.premedia:
            call.premedia = None


def _end_leg(leg: Leg, conf_id: str, facts: list[Fact], labels: LabelMap) -> None:
    leg.done = True
    destination = labels.destination(leg.number)
    if leg.s is not None:
        facts.append(LegEnded(LegOutcome.ANSWERED, destination))
        return
    facts.append(LegEnded(unanswered_outcome(leg.cause, leg.side), destination))
    if leg.o is not None and leg.h is not None:
        facts.append(Duration(Phase.RING, _span(leg.o, leg.h), RingOutcome.UNANSWERED, conf_id, destination))


def _partner_times(call: Call, n: Notification) -> tuple[float | None, ...]:
    """The times `n` would form a duration with: its premedia pair, or its leg (found as
    `_leg_for` finds it, without creating one)."""
    if n.event is EventType.PREMEDIA_START or n.event is EventType.PREMEDIA_END:
        number = n.number_a if n.side is Side.A else n.redirect_number
        return tuple((call.premedia or {}).get((n.side.value, number), ()))
    legs = call.legs
    if not n.redirect_number and n.event is not EventType.ORIGINATE:
        open_legs = [leg for leg in legs if leg.h is None]
        if len(open_legs) == 1:
            legs = open_legs
    for leg in legs:
        if leg.number == n.redirect_number or len(legs) == 1 and not n.redirect_number:
            return leg.o, leg.s, leg.t, leg.h
    return ()


def apply(call: Call, n: Notification, now: float, grace: float, span: float = math.inf,
          labels: LabelMap = NO_LABELS) -> tuple[bool, list[Fact]]:
    """Apply one notification to its call; returns (duplicate, facts). `labels` names the
    line (decided here, once) and the destinations.

    Raises PayloadError, leaving the call as it was: too_many_items when the call already
    took its maximum; implausible_time when the event is more than `span` from another
    event of its leg or prompt: a duration longer than any call is kept.
    """
    key = dedup_key(n)
    if key in call.seen:
        call.last_seen = now
        return True, []
    if len(call.seen) >= MAX_NOTIFICATIONS_PER_CALL:  # refused: keeps nothing alive either
        raise PayloadError(Reason.TOO_MANY_ITEMS, f"call has more than {MAX_NOTIFICATIONS_PER_CALL} notifications")
    if span != math.inf and any(t is not None and abs(n.time - t) > span for t in _partner_times(call, n)):
        raise PayloadError(Reason.IMPLAUSIBLE_TIME, f"event time more than {span:g} s (the call TTL) from the "
                           "leg's or prompt's other events: a duration longer than any call kept")
    call.last_seen = now
    call.seen.append(key)
    facts: list[Fact] = []
    if n.sip_id and not call.line:
        call.line = labels.line(n.sip_id, n.extension)
    event = n.event
    if event is EventType.PREMEDIA_START or event is EventType.PREMEDIA_END:
        _premedia(call, n, facts, labels)
        return False, facts

    line = call.line or labels.line("")
    if event is not EventType.TALK:
        facts.append(Applied(event, n.side, n.cause, line))
    leg = _leg_for(call, n)
    if leg is None:  # a hangup that names no leg: only the call-level facts
        if n.side is Side.A:
            call.a_hangup = True
            if call.a_hangup_at is None or n.time < call.a_hangup_at:
                call.a_hangup_at = n.time
        call.deadline = now + grace
    elif event is EventType.ORIGINATE:
        if leg.o is not None and leg.h is not None:
            # the same number tried again: a new leg
            if not leg.done:
                _end_leg(leg, n.conf_id, facts, labels)
            call.legs[call.legs.index(leg)] = leg = Leg(leg.number)
        if leg.o is None:
            leg.o = n.time
            if leg.s is not None:
                facts.append(Duration(Phase.RING, _span(leg.o, leg.s), RingOutcome.ANSWERED, n.conf_id,
                                      labels.destination(leg.number)))
        if call.start is None or n.time < call.start:
            call.start = n.time
    elif event is EventType.ANSWER:
        if leg.s is None and not leg.done:
            leg.s = n.time
            if not call.waited:  # measured when the grace period ends: a late `o` or prompt still counts
                call.deadline = now + grace
            if leg.o is not None:
                facts.append(Duration(Phase.RING, _span(leg.o, leg.s), RingOutcome.ANSWERED, n.conf_id,
                                      labels.destination(leg.number)))
            if leg.h is not None:
                facts.append(Duration(Phase.ANSWERED, _span(leg.s, leg.h), conf_id=n.conf_id))
                _end_leg(leg, n.conf_id, facts, labels)
    elif event is EventType.TALK:
        if leg.t is None:
            leg.t = n.time
            if leg.h is not None:
                facts.append(Duration(Phase.TALK, _span(leg.t, leg.h), conf_id=n.conf_id))
    else:  # HANGUP
        if n.side is Side.A:
            call.a_hangup = True
            if call.a_hangup_at is None or n.time < call.a_hangup_at:
                call.a_hangup_at = n.time
        if leg.h is None:
            leg.h, leg.cause, leg.side = n.time, n.cause, n.side
            if leg.t is not None:
                facts.append(Duration(Phase.TALK, _span(leg.t, leg.h), conf_id=n.conf_id))
            if leg.s is not None:
                facts.append(Duration(Phase.ANSWERED, _span(leg.s, leg.h), conf_id=n.conf_id))
                _end_leg(leg, n.conf_id, facts, labels)
        call.deadline = now + grace
    settle(call, n.conf_id, now, facts, labels)
    return False, facts


def settle(call: Call, conf_id: str, now: float, facts: list[Fact], labels: LabelMap = NO_LABELS) -> None:
    """Make the decisions that are due: unanswered legs past grace, and the call's end."""
    due = call.deadline is not None and now >= call.deadline
    if due:
        for leg in call.legs:
            if leg.h is not None and not leg.done:
                _end_leg(leg, conf_id, facts, labels)
        if not call.waited:
            _answered_wait(call, labels, facts)
    if call.ended:
        return
    legs = call.legs
    if any(leg.s is not None for leg in legs):
        if call.a_hangup or any(leg.s is not None and leg.h is not None for leg in legs):
            _end_call(call, CallOutcome.ANSWERED, facts, labels)
        return
    if due and (call.a_hangup or (legs and all(leg.h is not None for leg in legs))):
        _end_call(call, CallOutcome.ABANDONED if call.a_hangup else CallOutcome.UNANSWERED, facts, labels)


def _end_call(call: Call, outcome: CallOutcome, facts: list[Fact], labels: LabelMap) -> None:
    call.ended = True
    line = _line(call, labels)
    if outcome is CallOutcome.ABANDONED and not call.waited and call.start is not None \
            and call.a_hangup_at is not None:
        call.waited = True
        facts.append(Waited(WaitOutcome.ABANDONED, _span(call.start, call.a_hangup_at), line))
    facts.append(CallEnded(outcome, line))


def drop(call: Call, conf_id: str, reason: EvictionReason, facts: list[Fact], labels: LabelMap = NO_LABELS) -> None:
    """Facts for a call leaving memory: pending legs decided, open legs and call expired."""
    for leg in call.legs:
        if not leg.done:
            if leg.h is not None:
                _end_leg(leg, conf_id, facts, labels)
            else:
                leg.done = True
                facts.append(LegEnded(LegOutcome.EXPIRED, labels.destination(leg.number)))
    _answered_wait(call, labels, facts)  # evicted before its grace period ran out
    if not call.ended:
        facts.append(Evicted(reason))
        _end_call(call, CallOutcome.EXPIRED, facts, labels)


class Correlator:
    """In-memory call table: bounded by a TTL since the last notification and a cap."""

    def __init__(self, ttl: float = 6 * 3600, max_calls: int = 500_000, grace: float = 15.0,
                 labels: LabelMap = NO_LABELS) -> None:
        self.ttl = ttl
        self.max_calls = max_calls
        self.grace = grace
        #: the label map in force; replaced whole on a reload
        self.labels = labels
        self.calls: OrderedDict[str, Call] = OrderedDict()
        self._deadlines: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self.calls)

    def apply(self, n: Notification, now: float) -> tuple[bool, list[Fact]]:
        """Apply one notification received at `now`; returns (duplicate, facts)."""
        call = self.calls.get(n.conf_id)
        facts: list[Fact] = []
        new = call is None
        if call is None:
            call = Call(now)
            facts.append(CallStarted())
        deadline = call.deadline
        # refused or failed: a new call is not kept, so no CallStarted is lost and the gauge holds
        duplicate, more = apply(call, n, now, self.grace, max(self.ttl, MIN_SPAN), self.labels)
        if new:
            self.calls[n.conf_id] = call
            self._evict_above(self.max_calls, facts)
        else:
            self.calls.move_to_end(n.conf_id)
        if call.deadline is not None and call.deadline != deadline:
            heapq.heappush(self._deadlines, (call.deadline, n.conf_id))
        facts.extend(more)
        return duplicate, facts

    def _evict_above(self, limit: int, facts: list[Fact]) -> None:
        while len(self.calls) > limit:
            old_id, old = self.calls.popitem(last=False)
            drop(old, old_id, EvictionReason.CAPACITY, facts, self.labels)

    def expire(self, now: float) -> list[Fact]:
        """Decisions due at `now`: grace periods that ran out, then calls past their TTL."""
        facts: list[Fact] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, conf_id = heapq.heappop(heap)
            call = self.calls.get(conf_id)
            if call is not None and call.deadline is not None and call.deadline <= now:
                settle(call, conf_id, now, facts, self.labels)
                call.deadline = None
        calls = self.calls
        while calls:
            conf_id, call = next(iter(calls.items()))
            if call.last_seen + self.ttl > now:
                break
            del calls[conf_id]
            drop(call, conf_id, EvictionReason.TTL, facts, self.labels)
        return facts

    def in_progress(self) -> int:
        """Calls begun and not ended (a scan: for tests and snapshots, not the hot path)."""
        return sum(1 for call in self.calls.values() if not call.ended)


# --- saved state -------------------------------------------------------------------------


class StateError(ValueError):
    """Saved state that cannot be loaded: not ours, another version, or damaged."""


def call_to_dict(call: Call) -> dict:
    """One call as compact JSON-able data; defaults (None, False, empty) are left out.

    `legs` lists [redirect number, o, s, t, h, cause, side, done]; `premedia` lists
    [side, number, sp, ep]; `seen` holds the signed 64-bit dedup keys. Times are Unix
    seconds: event times for the legs and premedia, receipt (wall-clock) for last_seen and
    deadline. Since version 2: `line` (a label-map name), `start` and `a_hangup_at` (event
    times bounding the caller's wait) and `waited` (it was measured).
    """
    data: dict = {
        "legs": [[leg.number, leg.o, leg.s, leg.t, leg.h, leg.cause, leg.side.value, leg.done] for leg in call.legs],
        "seen": call.seen.tolist(),
        "last_seen": call.last_seen,
    }
    if call.premedia:
        data["premedia"] = [[side, number, start, end] for (side, number), (start, end) in call.premedia.items()]
    if call.deadline is not None:
        data["deadline"] = call.deadline
    if call.a_hangup:
        data["a_hangup"] = True
    if call.ended:
        data["ended"] = True
    if call.line:
        data["line"] = call.line
    if call.start is not None:
        data["start"] = call.start
    if call.a_hangup_at is not None:
        data["a_hangup_at"] = call.a_hangup_at
    if call.waited:
        data["waited"] = True
    return data


_SIDES = [side.value for side in Side]  # a list: `in` must not hash a damaged value


def _time(value: object) -> float:
    try:  # bounded before converting: a 400-digit integer must not overflow float()
        return seconds(value, -MAX_UNIX_SECONDS, MAX_UNIX_SECONDS)
    except ValueError as error:
        raise StateError(str(error)) from None


def _optional_time(value: object) -> float | None:
    return None if value is None else _time(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise StateError(f"expected true or false, got {type(value).__name__}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise StateError(f"expected a string, got {type(value).__name__}")
    return value


def _leg_from_list(values: object) -> Leg:
    if not isinstance(values, list) or len(values) != 8:
        raise StateError("leg: expected a list of 8")
    number, o, s, t, h, cause, side, done = values
    leg = Leg(_text(number))
    leg.o, leg.s, leg.t, leg.h = (_optional_time(v) for v in (o, s, t, h))
    if cause is not None and (isinstance(cause, bool) or not isinstance(cause, int) or not 0 <= cause <= CAUSE_MAX):
        raise StateError("leg: cause must be null or 0..127")
    leg.cause = cause
    try:
        leg.side = Side(side)
    except ValueError:
        raise StateError("leg: side must be A, B or unknown") from None
    leg.done = _flag(done)
    return leg


def call_from_dict(data: object) -> Call:
    """The inverse of `call_to_dict`; raises StateError on anything it would not produce."""
    if not isinstance(data, dict) or not isinstance(data.get("legs"), list) or not isinstance(data.get("seen"), list):
        raise StateError("call: expected an object with legs and seen")
    call = Call(_time(data.get("last_seen")))
    # the live bounds: every leg and premedia entry takes a notification, at most
    # MAX_NOTIFICATIONS_PER_CALL of them per call; a call over them is not one this exporter kept
    if len(data["legs"]) > MAX_NOTIFICATIONS_PER_CALL:
        raise StateError(f"call: {len(data['legs'])} legs, more than a live call has ({MAX_NOTIFICATIONS_PER_CALL})")
    call.legs = [_leg_from_list(leg) for leg in data["legs"]]
    seen = data["seen"]
    if len(seen) > MAX_NOTIFICATIONS_PER_CALL or not all(type(key) is int and -(2**63) <= key < 2**63 for key in seen):
        raise StateError("call: seen must be at most MAX_NOTIFICATIONS_PER_CALL signed 64-bit keys")
    call.seen = array("q", seen)
    premedia = data.get("premedia", [])
    if not isinstance(premedia, list):
        raise StateError("call: premedia must be a list")
    if len(premedia) > MAX_NOTIFICATIONS_PER_CALL:
        raise StateError(f"call: {len(premedia)} premedia, more than a live call has ({MAX_NOTIFICATIONS_PER_CALL})")
    for entry in premedia:
        if not isinstance(entry, list) or len(entry) != 4 or entry[0] not in _SIDES:
            raise StateError("call: premedia entries must be [side, number, sp, ep]")
        if call.premedia is None:
            call.premedia = {}
        call.premedia[(entry[0], _text(entry[1]))] = [_optional_time(entry[2]), _optional_time(entry[3])]
    call.deadline = _optional_time(data.get("deadline"))
    call.a_hangup = _flag(data.get("a_hangup", False))
    call.ended = _flag(data.get("ended", False))
    line = _text(data.get("line", ""))
    if len(line) > MAX_NAME_LENGTH:
        raise StateError(f"call: line longer than {MAX_NAME_LENGTH} characters")
    call.line = line
    call.start = _optional_time(data.get("start"))
    call.a_hangup_at = _optional_time(data.get("a_hangup_at"))
    call.waited = _flag(data.get("waited", False))
    return call


def dump_state(correlator: Correlator, shift: float = 0.0) -> dict:
    """The call table as JSON-able data, least recently seen first (the eviction order);
    receipt times moved by `shift` (from the clock of the decisions to the wall clock)."""
    calls = [[conf_id, call_to_dict(call)] for conf_id, call in correlator.calls.items()]
    if shift:
        for _, data in calls:
            data["last_seen"] += shift
            if "deadline" in data:
                data["deadline"] += shift
    return {"format": STATE_FORMAT, "version": STATE_VERSION, "calls": calls}


def load_state(data: object, correlator: Correlator, not_after: float | None = None) -> list[Fact]:
    """Fill an empty correlator from `dump_state` data, all or nothing.

    Returns facts: CallRestored for each call still in progress, then evictions if more
    calls were saved than `max_calls` allows. Raises StateError on foreign, other-version
    or damaged data, or a call last seen after `not_after` (the snapshot's time), leaving
    the correlator untouched. The calls are put in order of last_seen whatever the order
    in the data: the TTL expiry stops at the first call not due.
    """
    if correlator.calls:
        raise ValueError("load_state needs an empty correlator")
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise StateError("not an mtt-exporter state")
    version = data.get("version")
    if type(version) is not int or version not in READABLE_STATE_VERSIONS:
        raise StateError(f"state version {version!r}, this exporter reads {READABLE_STATE_VERSIONS}")
    entries = data.get("calls")
    if not isinstance(entries, list):
        raise StateError("calls: expected a list")
    calls: OrderedDict[str, Call] = OrderedDict()
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 2:
            raise StateError(f"calls: expected [conf_id, call], got {type(entry).__name__}")
        call = call_from_dict(entry[1])
        if not_after is not None and call.last_seen > not_after:
            raise StateError("call: last_seen is after the snapshot was taken")
        calls[_text(entry[0])] = call
    if any(a.last_seen > b.last_seen for a, b in zip(calls.values(), islice(calls.values(), 1, None))):
        calls = OrderedDict(sorted(calls.items(), key=lambda item: item[1].last_seen))  # stable
    correlator.calls = calls
    correlator._deadlines = [(call.deadline, conf_id) for conf_id, call in calls.items() if call.deadline is not None]
    heapq.heapify(correlator._deadlines)
    facts: list[Fact] = [CallRestored() for call in calls.values() if not call.ended]
    correlator._evict_above(correlator.max_calls, facts)
    return facts
