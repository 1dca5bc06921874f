"""Properties (hypothesis): the parser never escapes, the correlator's invariants hold for any
order, duplication and loss, and the app answers anything with 2xx or 4xx in closed label sets."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from unittest import mock

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mtt_exporter import correlator as correlator_module
from mtt_exporter.cause import CAUSE_MAX, CauseClass, LegOutcome, cause_name, unanswered_outcome
from mtt_exporter.correlator import (
    CallEnded,
    CallOutcome,
    CallStarted,
    Correlator,
    Duration,
    Evicted,
    EvictionReason,
    Leg,
    LegEnded,
    Phase,
    dump_state,
    load_state,
)
from mtt_exporter.model import EVENT_BY_CODE, Conflict, EventType, Notification, PayloadError, Reason, Side, parse
from mtt_exporter.server import create_app, decode, runner_options
from mtt_exporter.settings import Settings

from .conftest import DATA

NOW = 1_000_000.0
GRACE = 15.0
TTL = 3600.0
SEED = json.loads((DATA / "seed_call.json").read_text())

# --- 1. parser ---------------------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16)
FIELDS = sorted({key for item in SEED for key in item} | {"cause", "redirect_number"})
#: seed-like strings: what a mutation of a real payload looks like
DATA_LIKE = st.builds(
    lambda code, number, stamp, rest: f"event={code}_{number}_{stamp}{rest}",
    st.sampled_from([*EVENT_BY_CODE, "", "zz", "O", " h"]),
    st.sampled_from(["79684881033", "+79684881033", "8 (968) 488-10-33", "", "_", "7" * 70]),
    st.sampled_from(["2019-05-23-15-16-59", "2019-02-30-25-61-61", "0000-00-00-00-00-00", "9999-12-31-23-59-59", "x"]),
    st.sampled_from(["", "&cause=16", "&cause=", "&cause=999", "&cause=-1&cause=17", "&&&", "&x=1"]),
)
VALUES = SCALARS | DATA_LIKE | JSON | st.fixed_dictionaries({}, optional={
    "type": SCALARS | st.sampled_from(list(EVENT_BY_CODE)), "side": SCALARS | st.sampled_from(["A", "B", " a "]),
    "cause": SCALARS | st.integers(-5, 200)})


@st.composite
def mutated_seed(draw) -> dict:
    """A seed notification with fields replaced, removed, added or renamed."""
    item = dict(draw(st.sampled_from(SEED)))
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        action = draw(st.sampled_from(["replace", "delete", "space"]))
        if action == "replace":
            item[key] = draw(VALUES)
        elif action == "delete":
            item.pop(key, None)
        elif key in item:
            item[f" {key} "] = item.pop(key)
    return item


def check_notification(n: Notification) -> None:
    """Everything the metrics take from a notification is in its closed set."""
    assert isinstance(n.event, EventType) and isinstance(n.side, Side)
    assert n.cause is None or (type(n.cause) is int and 0 <= n.cause <= CAUSE_MAX)
    assert math.isfinite(n.time) and n.time >= 0
    assert 0 < len(n.conf_id) <= 64 and len(n.redirect_number) <= 64
    assert all(isinstance(c, Conflict) for c in n.conflicts)


@settings(max_examples=500, deadline=None)
@given(st.one_of(JSON, mutated_seed()))
def test_parser_gives_a_notification_or_a_clean_error(value):
    try:
        n = parse(value)
    except PayloadError as error:
        assert isinstance(error.reason, Reason) and error.message
    else:
        check_notification(n)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | mutated_seed().map(lambda v: json.dumps(v).encode()),
       st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", ""]))
def test_raw_bytes_decode_and_parse_or_fail_cleanly(body, content_type):
    try:
        value = decode(body, content_type)
        for item in value if isinstance(value, list) else [value]:
            check_notification(parse(item))
    except PayloadError as error:
        assert isinstance(error.reason, Reason)


# --- 2. correlator -----------------------------------------------------------------------


@dataclass
class Truth:
    """What a correct correlator concludes from a workload."""

    durations: Counter = field(default_factory=Counter)
    legs: Counter = field(default_factory=Counter)
    calls: Counter = field(default_factory=Counter)


@st.composite
def call_flow(draw, conf: str, truth: Truth) -> list[Notification]:
    """The notifications of one realistic call, in event order; adds what it must give to `truth`."""
    caller = "79150000000"
    numbers = [f"7900000{i:04d}" for i in range(draw(st.integers(0, 3)))]
    events: list[Notification] = []
    t = 0

    def add(code: str, at: int, number: str = "", side: Side = Side.UNKNOWN, cause: int | None = None) -> None:
        premedia_a = side is Side.A and code in ("sp", "ep")
        events.append(Notification(conf, EVENT_BY_CODE[code], float(1_558_600_000 + at), side,
                                   "" if premedia_a else number, cause, caller))

    def span(low: int = 1, high: int = 60) -> int:
        return draw(st.integers(low, high))

    if draw(st.booleans()):  # a prompt to the caller first
        length = span()
        add("sp", t, side=Side.A), add("ep", t + length, side=Side.A)
        truth.durations[("premedia", "A", float(length))] += 1
        t += length
    if not numbers:  # the caller hangs up during the prompt: no leg at all
        add("h", t + 1, side=Side.A, cause=16)
        truth.calls[CallOutcome.ABANDONED] += 1
        return events
    parallel = len(numbers) > 1 and draw(st.booleans())
    answered = a_hangup = False
    starts = [t] * len(numbers) if parallel else []
    winner = draw(st.sampled_from([None, *range(len(numbers))]))
    for i, number in enumerate(numbers):
        o = starts[i] if parallel else t
        add("o", o, number)
        ring = span(1, 40)
        if i == winner:
            s = o + ring
            add("s", s, number)
            truth.durations[("ring", "answered", float(ring))] += 1
            end = s + span(1, 600)
            if draw(st.booleans()):  # extended events: a prompt to B, then talk
                prompt = span(1, 9)
                add("sp", s, number, Side.B), add("ep", s + prompt, number, Side.B)
                add("t", s + prompt + 1, number)
                truth.durations[("premedia", "B", float(prompt))] += 1
                end = max(end, s + prompt + 2)
                truth.durations[("talk", "", float(end - s - prompt - 1))] += 1
            side = draw(st.sampled_from([Side.A, Side.B]))
            add("h", end, number, side, 16)
            truth.durations[("answered", "", float(end - s))] += 1
            truth.legs[LegOutcome.ANSWERED] += 1
            answered = True
            t = end
        else:
            if parallel and winner is not None:
                cause, side = 26, Side.B  # the losers of parallel ringing
            else:
                cause, side = draw(st.sampled_from([(17, Side.B), (19, Side.B), (21, Side.B), (16, Side.A), (41, Side.B), (None, Side.B)]))
            add("h", o + ring, number, side, cause)
            truth.durations[("ring", "unanswered", float(ring))] += 1
            truth.legs[unanswered_outcome(cause, side.value)] += 1
            a_hangup = a_hangup or side is Side.A
            t = o + ring + 1
        if not parallel and (answered or a_hangup):
            break  # the call is over: no next leg
    truth.calls[CallOutcome.ANSWERED if answered else CallOutcome.ABANDONED if a_hangup else CallOutcome.UNANSWERED] += 1
    return events


@st.composite
def workload(draw, max_calls: int = 4) -> tuple[list[Notification], Truth]:
    truth = Truth()
    events = []
    for i in range(draw(st.integers(1, max_calls))):
        events += draw(call_flow(f"CALL{i}", truth))
    return events, truth


def deliver(draw, events: list[Notification], duplicate: bool, lose: bool) -> list[Notification]:
    """Any order, some sent twice, some never."""
    sent = [n for n in events if not (lose and draw(st.booleans()))]
    if duplicate:
        sent += draw(st.lists(st.sampled_from(sent), max_size=len(sent))) if sent else []
    return draw(st.permutations(sent))


def correlate(deliveries: list[Notification], restart_at: int | None = None) -> tuple[list, Correlator, list[Leg]]:
    """Apply deliveries within one grace period, then tick past grace and TTL.

    Returns the facts, the correlator and every leg it created. With `restart_at`, the
    state goes through dump_state/JSON/load_state before that delivery.
    """
    legs: list[Leg] = []

    class CountedLeg(Leg):
        __slots__ = ()

        def __init__(self, number: str) -> None:
            super().__init__(number)
            legs.append(self)

    correlator = Correlator(ttl=TTL, max_calls=1000, grace=GRACE)
    facts: list = []
    step = (GRACE * 0.9) / max(len(deliveries), 1)  # all within one grace period
    with mock.patch.object(correlator_module, "Leg", CountedLeg):
        for i, n in enumerate(deliveries):
            if i == restart_at:
                saved = json.loads(json.dumps(dump_state(correlator)))
                correlator = Correlator(ttl=TTL, max_calls=1000, grace=GRACE)
                facts += load_state(saved, correlator)
            facts += correlator.apply(n, NOW + i * step)[1]
    last = NOW + len(deliveries) * step
    facts += correlator.expire(last + GRACE)
    facts += correlator.expire(last + GRACE + TTL + 1)
    return facts, correlator, legs


def summarise(facts) -> Truth:
    return Truth(
        durations=Counter((f.phase.value, f.label, f.seconds) for f in facts if isinstance(f, Duration)),
        legs=Counter(f.outcome for f in facts if isinstance(f, LegEnded)),
        calls=Counter(f.outcome for f in facts if isinstance(f, CallEnded)),
    )


def check_invariants(facts, correlator: Correlator, legs: list[Leg]) -> None:
    assert all(f.seconds >= 0 for f in facts if isinstance(f, Duration))
    # every leg ends exactly once: each end marks its leg done and gives one LegEnded
    assert all(leg.done for leg in legs)
    assert sum(isinstance(f, LegEnded) for f in facts) == len(legs)
    # every call ends exactly once, and nothing is left in progress or in memory
    assert sum(isinstance(f, CallStarted) for f in facts) == sum(isinstance(f, CallEnded) for f in facts)
    assert correlator.in_progress() == 0 and len(correlator) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), workload())
def test_any_order_and_duplication_gives_the_truth(data, generated):
    events, truth = generated
    facts, correlator, legs = correlate(deliver(data.draw, events, duplicate=True, lose=False))
    check_invariants(facts, correlator, legs)
    assert summarise(facts) == truth


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), workload())
def test_invariants_hold_under_loss(data, generated):
    events, _ = generated
    deliveries = deliver(data.draw, events, duplicate=True, lose=True)
    facts, correlator, legs = correlate(deliveries)
    check_invariants(facts, correlator, legs)
    received = {(n.conf_id, n.event, n.redirect_number) for n in deliveries}
    distinct = Counter(event for _, event, _ in received)
    # answers never outnumber what was received: a leg is answered by an `s`, timed from an `o`
    rings = sum(1 for f in facts if isinstance(f, Duration) and f.phase is Phase.RING and f.label == "answered")
    assert rings <= min(distinct[EventType.ORIGINATE], distinct[EventType.ANSWER])
    assert summarise(facts).legs[LegOutcome.ANSWERED] <= distinct[EventType.ANSWER]
    answered_calls = len({conf for conf, event, _ in received if event is EventType.ANSWER})
    assert summarise(facts).calls[CallOutcome.ANSWERED] <= answered_calls


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), workload())
def test_answers_never_exceed_attempts_per_call_without_lost_originates(data, generated):
    events, _ = generated
    deliveries = deliver(data.draw, events, duplicate=True, lose=False)
    correlator = Correlator(ttl=TTL, grace=GRACE)
    attempts: Counter = Counter()
    answers: Counter = Counter()
    for i, n in enumerate(deliveries):
        duplicate, _ = correlator.apply(n, NOW + i * 0.01)
        if not duplicate:  # what mtt_call_attempts_total / mtt_call_answers_total count
            attempts[n.conf_id] += n.event is EventType.ORIGINATE
            answers[n.conf_id] += n.event is EventType.ANSWER
    assert all(answers[conf] <= attempts[conf] for conf in answers)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), workload())
def test_a_restart_anywhere_changes_nothing(data, generated):
    events, truth = generated
    deliveries = deliver(data.draw, events, duplicate=True, lose=False)
    cut = data.draw(st.integers(0, len(deliveries)))
    facts, correlator, legs = correlate(deliveries, restart_at=cut)
    assert summarise(facts) == truth
    assert correlator.in_progress() == 0 and len(correlator) == 0


@settings(max_examples=100, deadline=None)
@given(st.data(), workload(max_calls=6), st.integers(1, 3))
def test_a_small_cap_evicts_and_still_ends_every_call_once(data, generated, cap):
    events, _ = generated
    correlator = Correlator(ttl=TTL, max_calls=cap, grace=GRACE)
    facts = []
    for i, n in enumerate(deliver(data.draw, events, duplicate=True, lose=True)):
        facts += correlator.apply(n, NOW + i)[1]
        assert len(correlator) <= cap
    facts += correlator.expire(NOW + 10 * TTL)
    evicted = sum(isinstance(f, Evicted) and f.reason is EvictionReason.CAPACITY for f in facts)
    assert sum(isinstance(f, CallStarted) for f in facts) == sum(isinstance(f, CallEnded) for f in facts)
    assert evicted <= sum(isinstance(f, CallEnded) and f.outcome is CallOutcome.EXPIRED for f in facts)
    assert correlator.in_progress() == 0


# --- 3. the app --------------------------------------------------------------------------

HEADER_VALUES = {
    "Content-Type": ["application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x",
                     "application/json; charset=latin-1", "", "application/json, text/html"],
    "Content-Encoding": ["gzip", "deflate", "identity", "br", "x-unknown"],
    "Authorization": ["Bearer ", "Basic !!!", "Basic " + "QQ==" * 3, "Digest x", "Bearer " + "x" * 300],
    "X-Forwarded-For": ["1.2.3.4", "garbage", ", ,", "::1, 10.0.0.1", "1.2.3.4:80", "[::1]"],
    "Accept": ["application/openmetrics-text; version=1.0.0", "*/*", "text/plain;q=0"],
}
PATHS = ["/notify", "/notify/", "/notify/x", "/notify?token=", "/notify?token=a&token=b", "/metrics", "/", "/-/ready"]


def sample_keys(text: str) -> set[tuple[str, str, tuple]]:
    """(family, sample, labels) of every mtt_ sample."""
    return {(f.name, s.name, tuple(sorted(s.labels.items()))) for f in text_string_to_metric_families(text)
            for s in f.samples if s.name.startswith("mtt_")}


def _values(enum) -> set[str]:
    return {member.value for member in enum}


EVENTS, SIDES = _values(EventType), _values(Side)
#: family -> label -> the closed set its values come from
#: Without --label-map every line and destination is "other" (random sip_ids included).
NO_MAP = {"other"}
CLOSED = {
    "mtt_notifications": {"event": EVENTS},
    "mtt_notifications_duplicate": {"event": EVENTS},
    "mtt_notifications_rejected": {"reason": _values(Reason)},
    "mtt_notification_conflicts": {"field": _values(Conflict)},
    "mtt_call_hangups": {"cause": {str(c) for c in range(CAUSE_MAX + 1)} | {"unknown"}, "side": SIDES,
                         "cause_class": _values(CauseClass),
                         "cause_name": {cause_name(c) for c in [*range(CAUSE_MAX + 1), None]}, "line": NO_MAP},
    "mtt_call_attempts": {"line": NO_MAP},
    "mtt_call_answers": {"line": NO_MAP},
    "mtt_call_legs": {"outcome": _values(LegOutcome), "destination": NO_MAP},
    "mtt_calls": {"outcome": _values(CallOutcome), "line": NO_MAP},
    "mtt_call_wait_seconds": {"outcome": {"answered", "abandoned"}, "line": NO_MAP},
    "mtt_calls_evicted": {"reason": _values(EvictionReason)},
    "mtt_premedia_duration_seconds": {"side": SIDES},
    "mtt_ring_duration_seconds": {"outcome": {"answered", "unanswered"}, "destination": NO_MAP},
    "mtt_label_map_reloads": {"result": {"success", "failure"}},
}


def test_the_app_answers_anything_with_2xx_or_4xx():
    """One app for all examples (an event loop per example would be slow)."""
    loop = asyncio.new_event_loop()
    options = Settings(_cli_parse_args=[], trusted_proxy=["127.0.0.1"], max_body_bytes=4096, max_batch_items=20)  # type: ignore[call-arg]
    app = create_app(options, registry=CollectorRegistry())
    server = TestServer(app, loop=loop)
    client = TestClient(server, loop=loop)
    loop.run_until_complete(server.start_server(**runner_options(options)))
    loop.run_until_complete(client.start_server())
    statuses: Counter = Counter()

    async def scrape() -> str:
        return await (await client.get("/metrics")).text()

    before = sample_keys(loop.run_until_complete(scrape()))

    @settings(max_examples=400, deadline=None)
    @given(
        body=st.one_of(
            st.binary(max_size=600),
            JSON.map(lambda v: json.dumps(v).encode()),
            mutated_seed().map(lambda v: json.dumps(v).encode()),
            st.lists(mutated_seed(), min_size=1, max_size=25).map(lambda v: json.dumps(v).encode()),
        ),
        headers=st.dictionaries(st.sampled_from(sorted(HEADER_VALUES)), st.just(None), max_size=3).flatmap(
            lambda keys: st.fixed_dictionaries({k: st.sampled_from(HEADER_VALUES[k]) for k in keys})),
        path=st.sampled_from(PATHS),
        method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
    )
    def check(body, headers, path, method):
        async def send() -> int:
            async with client.session.request(method, client.make_url(path), data=body, headers=headers) as response:
                await response.read()
                return response.status

        status = loop.run_until_complete(send())
        statuses[status // 100] += 1
        assert 200 <= status < 500, status

    try:
        check()
        after = sample_keys(loop.run_until_complete(scrape()))
    finally:
        loop.run_until_complete(client.close())
        loop.close()
    assert after == before  # no series appeared: every label value was pre-created
    for family, _, labels in after:
        for name, label in labels:
            if name not in ("le", "version"):
                assert label in CLOSED[family][name], (family, name, label)
    assert statuses[2] and statuses[4]  # both kinds were exercised
