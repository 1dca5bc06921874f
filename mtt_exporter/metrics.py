"""Every metric, label value and bucket of the exporter, the code that records facts, and
their exposition.

The only module that imports prometheus_client. Label values come from closed sets
(enums, causes 0..127 + "unknown") and the operator's label map (`line`, `destination`:
its names plus "other" and "unknown"), all pre-created at 0 so rates and alerts see them
before the first event. A name the map in force does not know (a call saved under an
older map) is recorded as "other".

The metric families below (`Counter`, `Gauge`, `Histogram`: the subset of
prometheus_client's API this exporter uses) keep plain numbers: the event loop is their
only writer, so an update is one addition, without the lock prometheus_client takes. Each
family renders its own exposition, text format or OpenMetrics, and re-renders at a scrape
only the series whose numbers changed since the last one. They are prometheus_client
`Metric`s and collectors too, so any registry reads them (`get_sample_value`,
`generate_latest`); other collectors (process, GC, the state backend) are rendered by
prometheus_client. tests/test_exposition.py proves both renderings parse to the same samples.
"""

from __future__ import annotations

import gzip
import struct
import time
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder, generate_latest, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

from . import __version__
from .cause import CAUSE_MAX, LegOutcome, cause_class, cause_label, cause_name
from .correlator import (
    Applied,
    CallEnded,
    CallOutcome,
    CallRestored,
    CallStarted,
    Duration,
    EvictionReason,
    Evicted,
    Fact,
    LegEnded,
    Phase,
    RingOutcome,
    Waited,
    WaitOutcome,
)
from .labelmap import NO_LABELS, OTHER, LabelMap
from .model import Conflict, EventType, Notification, Reason, Side
from .state import BackendOperation, BackendStats
from .statefile import SetAside

#: Notification delay: MTT posts within seconds; minutes mean a backlog.
DELAY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 900)
#: Prompts last seconds; event times have 1 s resolution.
PREMEDIA_BUCKETS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 120)
#: Ringing: operators give up after 20-60 s; follow-me timeouts up to a few minutes.
RING_BUCKETS = (1, 2, 3, 5, 7, 10, 15, 20, 25, 30, 45, 60, 90, 120, 180)
#: Conversations: from "short call" (< 6 s) to over an hour.
CALL_BUCKETS = (1, 3, 6, 10, 15, 30, 60, 90, 120, 180, 300, 600, 900, 1200, 1800, 2700, 3600, 7200)
#: The caller's wait: service levels are read at 10/15/20/30/60 s; abandonment comes late.
WAIT_BUCKETS = (3, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)

# `_created` series double the exposition and no dashboard reads them
disable_created_metrics()

SIDES = tuple(Side)
CAUSES: tuple[int | None, ...] = (*range(CAUSE_MAX + 1), None)


class Metrics:
    """The exporter's metrics in one registry; `record_*` turn parsed input and facts into samples."""

    def __init__(self, registry: CollectorRegistry, exemplars: bool = True) -> None:
        self.registry = registry
        self.exemplars = exemplars
        r = registry
        self.notifications = Counter(
            "mtt_notifications", "Notifications accepted, duplicates included, by event type.",
            ["event"], registry=r)
        self.rejected = Counter(
            "mtt_notifications_rejected", "Notifications (or whole requests) refused, by reason.",
            ["reason"], registry=r)
        self.duplicates = Counter(
            "mtt_notifications_duplicate",
            "Notifications already seen for the same call (answered 200, not counted again).",
            ["event"], registry=r)
        self.conflicts = Counter(
            "mtt_notification_conflicts",
            "Notifications whose `event` object and `data`/top-level fields disagreed (event wins).",
            ["field"], registry=r)
        self.delay = Histogram(
            "mtt_notification_delay_seconds",
            "Receipt time minus event time of accepted notifications.",
            buckets=DELAY_BUCKETS, registry=r)
        self.attempts = Counter(
            "mtt_call_attempts", "Forwarding legs originated (one per `o` notification), by line.",
            ["line"], registry=r)
        self.answers = Counter(
            "mtt_call_answers", "Forwarding legs answered (one per `s` notification), by line.",
            ["line"], registry=r)
        self.hangups = Counter(
            "mtt_call_hangups",
            "Hangups (`h` notifications) by Q.850 cause, cause name and class, the side that hung up, and line.",
            ["cause", "cause_name", "cause_class", "side", "line"], registry=r)
        self.legs = Counter(
            "mtt_call_legs", "Forwarding legs ended, by outcome and destination group.",
            ["outcome", "destination"], registry=r)
        self.calls = Counter(
            "mtt_calls", "Incoming calls ended, by outcome and line.", ["outcome", "line"], registry=r)
        self.wait = Histogram(
            "mtt_call_wait_seconds",
            "The caller's wait per call, from the first notification (premedia A or `o`) to the first answer "
            "(outcome answered) or to the caller's hangup of a call never answered (outcome abandoned), by line.",
            ["outcome", "line"], buckets=WAIT_BUCKETS, registry=r)
        self.premedia = Histogram(
            "mtt_premedia_duration_seconds", "Premedia (prompt) duration, sp to ep, by side.",
            ["side"], buckets=PREMEDIA_BUCKETS, registry=r)
        self.ring = Histogram(
            "mtt_ring_duration_seconds",
            "Ring time of a leg: o to s (answered) or o to h (unanswered), by destination group.",
            ["outcome", "destination"], buckets=RING_BUCKETS, registry=r)
        self.answered = Histogram(
            "mtt_answered_duration_seconds", "Answered leg duration, s to h.",
            buckets=CALL_BUCKETS, registry=r)
        self.talk = Histogram(
            "mtt_talk_duration_seconds", "Conversation duration, t to h (extended events only).",
            buckets=CALL_BUCKETS, registry=r)
        self.in_progress = Gauge(
            "mtt_calls_in_progress", "Calls begun and not ended.", registry=r)
        self.evicted = Counter(
            "mtt_calls_evicted", "In-progress calls dropped from memory, by reason.",
            ["reason"], registry=r)
        self.build_info = Gauge(
            "mtt_exporter_build_info", "Exporter version; the value is always 1.",
            ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self.label_map_reloads = Counter(
            "mtt_label_map_reloads",
            "Reloads of the --label-map file (SIGHUP, POST /-/reload), by result; a failed one keeps the old map.",
            ["result"], registry=r)
        self.label_map_reload_ok = Gauge(
            "mtt_label_map_last_reload_successful", "1 if the last reload of the --label-map file succeeded.",
            registry=r)
        self.label_map_reload_ok.set(1)
        for result in ("success", "failure"):
            self.label_map_reloads.labels(result=result)
        #: receipt time of the last request that brought an accepted notification: a plain float
        #: the handler assigns (no lock per request), read at scrape time
        self.last_notification = 0.0
        Gauge(
            "mtt_last_notification_timestamp_seconds",
            "Receipt time (Unix seconds) of the last accepted notification, duplicates included; 0 before the first.",
            registry=r,
        ).set_function(lambda: self.last_notification)

        # pre-resolved children: label lookups stay off the hot path
        self._notifications = {e: self.notifications.labels(event=e.value) for e in EventType}
        self._duplicates = {e: self.duplicates.labels(event=e.value) for e in EventType}
        self._rejected = {x: self.rejected.labels(reason=x.value) for x in Reason}
        self._conflicts = {c: self.conflicts.labels(field=c.value) for c in Conflict}
        self._evicted = {x: self.evicted.labels(reason=x.value) for x in EvictionReason}
        self._durations = {
            **{(Phase.PREMEDIA, s.value): self.premedia.labels(side=s.value) for s in SIDES},
            (Phase.ANSWERED, ""): self.answered,
            (Phase.TALK, ""): self.talk,
        }
        self.lines: tuple[str, ...] = ()
        self.destinations: tuple[str, ...] = ()
        self.set_labels(NO_LABELS)

    def set_labels(self, labels: LabelMap) -> None:
        """Pre-create the series of every line and destination of `labels` (at 0), and remove
        those of names it no longer has: the exposition stays within the caps across reloads."""
        lines, destinations = labels.line_values, labels.destination_values
        by_line = {
            self.attempts: [(line,) for line in lines],
            self.answers: [(line,) for line in lines],
            self.hangups: [(cause_label(c), cause_name(c), cause_class(c).value, s.value, line)
                           for c in CAUSES for s in SIDES for line in lines],
            self.calls: [(o.value, line) for o in CallOutcome for line in lines],
            self.wait: [(o.value, line) for o in WaitOutcome for line in lines],
        }
        by_destination = {
            self.legs: [(o.value, d) for o in LegOutcome for d in destinations],
            self.ring: [(o.value, d) for o in RingOutcome for d in destinations],
        }
        gone_lines, gone_destinations = set(self.lines) - set(lines), set(self.destinations) - set(destinations)
        for metric, values in (*by_line.items(), *by_destination.items()):
            gone = gone_lines if metric in by_line else gone_destinations
            for old in metric._metrics.copy():  # noqa: SLF001 - prometheus_client has no public listing
                if old[-1] in gone:
                    metric.remove(*old)
            for value in values:
                metric.labels(*value)
        # pre-resolved children: label lookups stay off the hot path
        self._attempts = {line: self.attempts.labels(line) for line in lines}
        self._answers = {line: self.answers.labels(line) for line in lines}
        self._hangups = {
            (c, s, line): self.hangups.labels(cause_label(c), cause_name(c), cause_class(c).value, s.value, line)
            for c in CAUSES for s in SIDES for line in lines
        }
        self._calls = {(o, line): self.calls.labels(o.value, line) for o in CallOutcome for line in lines}
        self._waits = {(o, line): self.wait.labels(o.value, line) for o in WaitOutcome for line in lines}
        self._legs = {(o, d): self.legs.labels(o.value, d) for o in LegOutcome for d in destinations}
        self._rings = {(o.value, d): self.ring.labels(o.value, d) for o in RingOutcome for d in destinations}
        self.lines, self.destinations = lines, destinations

    def record_reload(self, ok: bool) -> None:
        """Count a reload of the label map."""
        self.label_map_reloads.labels(result="success" if ok else "failure").inc()
        self.label_map_reload_ok.set(1 if ok else 0)

    def reject(self, reason: Reason, count: int = 1) -> None:
        """Count refused notifications or requests."""
        self._rejected[reason].inc(count)

    def record_notification(self, n: Notification, now: float, duplicate: bool) -> None:
        """Count one accepted notification received at `now`."""
        self._notifications[n.event].inc()
        for conflict in n.conflicts:
            self._conflicts[conflict].inc()
        if duplicate:
            self._duplicates[n.event].inc()
            return
        delay = now - n.time
        self.delay.observe(delay if delay > 0 else 0.0)

    def record_facts(self, facts: list[Fact]) -> None:
        """Record what the correlator concluded (originates, answers and hangups included)."""
        # a name the map in force does not know (a call saved under an older map) counts as other
        for fact in facts:
            kind = type(fact)
            if kind is Applied:
                event = fact.event
                if event is EventType.ORIGINATE:
                    (self._attempts.get(fact.line) or self._attempts[OTHER]).inc()
                elif event is EventType.ANSWER:
                    (self._answers.get(fact.line) or self._answers[OTHER]).inc()
                elif event is EventType.HANGUP:
                    hangups = self._hangups
                    (hangups.get((fact.cause, fact.side, fact.line)) or hangups[(fact.cause, fact.side, OTHER)]).inc()
            elif kind is Duration:
                if fact.phase is Phase.RING:
                    child = self._rings.get((fact.label, fact.destination)) or self._rings[(fact.label, OTHER)]
                else:
                    child = self._durations[(fact.phase, fact.label)]
                if self.exemplars and fact.conf_id:
                    child.observe(fact.seconds, {"call_id": fact.conf_id})
                else:
                    child.observe(fact.seconds)
            elif kind is LegEnded:
                legs = self._legs
                (legs.get((fact.outcome, fact.destination)) or legs[(fact.outcome, OTHER)]).inc()
            elif kind is CallStarted or kind is CallRestored:
                self.in_progress.inc()
            elif kind is CallEnded:
                (self._calls.get((fact.outcome, fact.line)) or self._calls[(fact.outcome, OTHER)]).inc()
                self.in_progress.dec()
            elif kind is Waited:
                (self._waits.get((fact.outcome, fact.line)) or self._waits[(fact.outcome, OTHER)]).observe(fact.seconds)
            elif kind is Evicted:
                self._evicted[fact.reason].inc()

    def exposition(self, accept: str = "", accept_encoding: str = "") -> tuple[bytes, dict[str, str]]:
        """The body of /metrics for the request's Accept and Accept-Encoding, and its headers."""
        return exposition(self.registry, accept, accept_encoding)

    def track(self, tracked: Callable[[], int]) -> None:
        """Expose the number of calls held in memory, read at scrape time."""
        Gauge(
            "mtt_calls_tracked",
            "Calls held in memory: in progress, and ended ones kept for duplicate detection.",
            registry=self.registry,
        ).set_function(tracked)

    def track_state_file(self) -> None:
        """Expose `mtt_state_file_set_aside_total`, only with --state-file."""
        self.state_set_aside = Counter(
            "mtt_state_file_set_aside",
            "State files not loaded at start but set aside, by reason (corrupt, unreadable, oversize, undated, stale, future).",
            ["reason"], registry=self.registry)
        for reason in SetAside:
            self.state_set_aside.labels(reason=reason.value)

    def track_backend(self, stats: BackendStats) -> None:
        """Expose the shared state backend's health and counters, read at scrape time."""
        self.registry.register(_BackendCollector(stats))


class _BackendCollector(Collector):
    """`mtt_state_backend_*`, only with --state-backend: plain counters kept by state.py."""

    def __init__(self, stats: BackendStats) -> None:
        self.stats = stats

    def collect(self):
        stats = self.stats
        yield GaugeMetricFamily(
            "mtt_state_backend_up",
            "1 while the shared state backend answers; 0 while notifications are correlated in local memory.",
            value=float(stats.up))
        yield GaugeMetricFamily(
            "mtt_state_backend_calls",
            "Calls held in the shared state backend, as of the last tick (the same on every replica: use max).",
            value=stats.calls)
        yield GaugeMetricFamily(
            "mtt_state_backend_calls_in_progress",
            "Calls begun and not ended, counted in the shared state backend as of the last tick; "
            "the same on every replica (use max), and unaffected by replica restarts.",
            value=stats.in_progress)
        errors = CounterMetricFamily(
            "mtt_state_backend_errors", "Failed requests to the shared state backend, by operation.",
            labels=["operation"])
        for operation in BackendOperation:
            errors.add_metric([operation.value], stats.errors[operation])
        yield errors
        yield CounterMetricFamily(
            "mtt_state_backend_fallbacks",
            "Notifications correlated in local memory: backend unreachable, or their call is held locally since.",
            value=stats.fallbacks)
        yield GaugeMetricFamily(
            "mtt_state_backend_queued",
            "Notifications answered and waiting to be applied in the shared state backend.",
            value=stats.queued)
        yield GaugeMetricFamily(
            "mtt_state_backend_behind",
            "1 while the shared state backend cannot keep up (too many notifications queued): "
            "the notifications of new calls are correlated in local memory.",
            value=float(stats.behind))
        yield CounterMetricFamily(
            "mtt_state_backend_overflows",
            "Notifications correlated in local memory because the shared state backend was behind "
            "(also counted in mtt_state_backend_fallbacks_total).",
            value=stats.overflows)
        yield CounterMetricFamily(
            "mtt_state_backend_retries",
            "Writes of a call retried because it was not as this replica last saw it (written by another replica or request).",
            value=stats.retries)


# --- the mechanism: families of plain numbers that render their own exposition ------------

#: Text format's end of an OpenMetrics exposition.
_EOF = b"# EOF\n"


def _escape(value: str) -> str:
    """A label value (and OpenMetrics HELP) as both formats escape it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    """HELP text as the text format escapes it (quotes stay)."""
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _label_text(labels: dict[str, str]) -> str:
    """`{a="x",b="y"}`, sorted by name as prometheus_client writes them; "" without labels."""
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in sorted(labels.items())) + "}"


def _number(value: float) -> str:
    """prometheus_client's floatToGoString, its common case (a float below 10^6) first."""
    if -1e6 < value < 1e6:
        return repr(value)
    return floatToGoString(value)


class _Value:
    """One series of a counter or gauge: a plain number, and its last rendered line."""

    __slots__ = ("value", "prefix", "shown", "line")

    def __init__(self, prefix: str) -> None:
        self.value = 0.0
        self.prefix = prefix  # `name{labels} `
        self.shown: float | None = None  # the value `line` shows
        self.line = ""

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class _CounterValue(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class _Read(_Value):
    """A gauge read from a function at scrape time."""

    __slots__ = ("read",)

    def __init__(self, prefix: str, read: Callable[[], float]) -> None:
        self.prefix, self.shown, self.line, self.read = prefix, None, "", read

    @property  # type: ignore[override]
    def value(self) -> float:
        return float(self.read())


class _Buckets:
    """One series of a histogram: plain counts per bucket (not cumulative), sum, exemplars."""

    __slots__ = ("bounds", "counts", "sum", "count", "exemplars", "prefixes", "count_prefix", "sum_prefix",
                 "shown", "text", "om")

    def __init__(self, bounds: tuple[float, ...], prefixes: list[str], count_prefix: str,
                 sum_prefix: str | None) -> None:
        self.bounds = bounds
        self.counts = [0.0] * len(bounds)
        self.sum = 0.0
        self.count = 0  # observations: tells a scrape whether to render again
        self.exemplars: list[Exemplar | None] = [None] * len(bounds)
        self.prefixes = prefixes  # `name_bucket{labels,le="..."} `, one per bucket
        self.count_prefix, self.sum_prefix = count_prefix, sum_prefix
        self.shown: int | None = None
        self.text = self.om = ""

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        index = bisect_left(self.bounds, amount)  # the first bucket with amount <= le
        self.counts[index] += 1
        self.sum += amount
        self.count += 1
        if exemplar:
            self.exemplars[index] = Exemplar(exemplar, amount, time.time())

    def render(self) -> None:
        """Format `text` and `om` (with the exemplars) again."""
        lines, exemplars, cumulative = [], [], 0.0
        for prefix, count, exemplar in zip(self.prefixes, self.counts, self.exemplars):
            cumulative += count
            lines.append(prefix + _number(cumulative))
            exemplars.append(
                "" if exemplar is None else
                f" # {_label_text(exemplar.labels)} {_number(exemplar.value)} {exemplar.timestamp}")
        lines.append(self.count_prefix + _number(cumulative))
        if self.sum_prefix is not None:
            lines.append(self.sum_prefix + _number(self.sum))
        self.text = "\n".join(lines) + "\n"
        if any(exemplars):
            exemplars += [""] * (len(lines) - len(exemplars))
            self.om = "".join(line + exemplar + "\n" for line, exemplar in zip(lines, exemplars))
        else:
            self.om = self.text


class _Family(Metric, Collector):
    """A metric family: its series by label values, and its rendered exposition.

    A prometheus_client `Metric` (its `samples` are built when read, for tests and the
    library's own exposition) and a `Collector` of itself (registered like the library's
    metrics). `render` is the fast exposition of /metrics.
    """

    type: ClassVar[str]
    # a registry keys its collectors by identity (Metric compares samples)
    __eq__ = object.__eq__
    __hash__ = object.__hash__
    #: The family's name in the text format (counters: `_total`).
    _text_suffix: ClassVar[str] = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name, self.documentation, self.unit = name, documentation, ""
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        self._blocks: dict[bool, bytes] = {}  # the rendered family by format (OpenMetrics?)
        self._deflated: dict[bool, tuple[bytes, bytes]] = {}  # a block and its compressed piece
        text_name = name + self._text_suffix
        self._headers = {
            False: f"# HELP {text_name} {_escape_help(documentation)}\n# TYPE {text_name} {self.type}\n",
            True: f"# HELP {name} {_escape(documentation)}\n# TYPE {name} {self.type}\n",
        }
        if not self._labelnames:
            self._only = self._child(())
        if registry is not None:
            registry.register(self)

    def labels(self, *values: object, **named: object) -> Any:
        """The series of these label values (created at 0 on first use)."""
        if not self._labelnames:
            raise ValueError(f"No label names were set when constructing {self.name}")
        if named:
            if values or sorted(named) != sorted(self._labelnames):
                raise ValueError("Incorrect label names")
            values = tuple(named[name] for name in self._labelnames)
        elif len(values) != len(self._labelnames):
            raise ValueError("Incorrect label count")
        key = tuple(str(value) for value in values)
        child = self._children.get(key)
        return child if child is not None else self._child(key)

    def remove(self, *values: object) -> None:
        """Drop the series of these label values, if there is one."""
        if len(values) != len(self._labelnames) or not self._labelnames:
            raise ValueError("Incorrect label count")
        if self._children.pop(tuple(str(value) for value in values), None) is not None:
            self._blocks.clear()  # the others did not change: render again without it

    @property
    def _metrics(self) -> dict[tuple[str, ...], Any]:
        """The series by label values, under prometheus_client's name for them."""
        return self._children

    def _child(self, key: tuple[str, ...]) -> Any:
        child = self._children[key] = self._new_child(dict(zip(self._labelnames, key)))
        return child

    def _new_child(self, labels: dict[str, str]) -> Any:
        raise NotImplementedError

    def collect(self) -> Iterable[Metric]:
        return [self]

    def describe(self) -> Iterable[Metric]:
        return [self]

    def render(self, om: bool = False) -> bytes:
        """This family's exposition; only the series whose numbers changed are formatted again."""
        if self._refresh():
            self._blocks.clear()
        block = self._blocks.get(om)
        if block is None:
            block = self._blocks[om] = (self._headers[om] + "".join(self._lines(om))).encode()
        return block

    def _refresh(self) -> bool:
        """Render the series whose numbers changed; True if any did."""
        raise NotImplementedError

    def _lines(self, om: bool) -> Iterable[str]:
        raise NotImplementedError


class _ValueFamily(_Family):
    """Counter or gauge: one plain number a series."""

    _sample_suffix: ClassVar[str] = ""
    _child_type: ClassVar[type[_Value]] = _Value

    def _new_child(self, labels: dict[str, str]) -> _Value:
        return self._child_type(f"{self.name}{self._sample_suffix}{_label_text(labels)} ")

    def _refresh(self) -> bool:
        changed = False
        for child in self._children.values():
            value = child.value
            if value != child.shown:  # NaN is never equal: rendered every time, correctly
                child.shown = value
                child.line = child.prefix + _number(value) + "\n"
                changed = True
        return changed

    def _lines(self, om: bool) -> Iterable[str]:
        return (child.line for child in self._children.values())

    @property  # type: ignore[override]
    def samples(self) -> list[Sample]:
        return [Sample(self.name + self._sample_suffix, dict(zip(self._labelnames, key)), child.value, None, None)
                for key, child in self._children.items()]

    @samples.setter
    def samples(self, value: object) -> None:  # Metric.__init__ and copies assign it: ignored
        pass


class Counter(_ValueFamily):
    """A counter family; `name` without `_total` (added in the exposition)."""

    type = "counter"
    _text_suffix = _sample_suffix = "_total"
    _child_type = _CounterValue

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def inc(self, amount: float = 1.0) -> None:
        self._only.inc(amount)


class Gauge(_ValueFamily):
    """A gauge family."""

    type = "gauge"

    def inc(self, amount: float = 1.0) -> None:
        self._only.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self._only.value -= amount

    def set(self, value: float) -> None:
        self._only.set(value)

    def set_function(self, read: Callable[[], float]) -> None:
        """The value is `read()` at each scrape."""
        self._only = self._children[()] = _Read(self._only.prefix, read)


class Histogram(_Family):
    """A histogram family with fixed buckets (`+Inf` added)."""

    type = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None, *, buckets: Sequence[float]) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self._bounds = tuple(bounds)
        self._le = [floatToGoString(b) for b in bounds]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self, labels: dict[str, str]) -> _Buckets:
        name = self.name
        prefixes = [f"{name}_bucket{_label_text({**labels, 'le': le})} " for le in self._le]
        # as prometheus_client: no _sum when there are negative buckets
        sum_prefix = f"{name}_sum{_label_text(labels)} " if self._bounds[0] >= 0 else None
        return _Buckets(self._bounds, prefixes, f"{name}_count{_label_text(labels)} ", sum_prefix)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        self._only.observe(amount, exemplar)

    def _refresh(self) -> bool:
        changed = False
        for child in self._children.values():
            if child.count != child.shown:
                child.shown = child.count
                child.render()
                changed = True
        return changed

    def _lines(self, om: bool) -> Iterable[str]:
        if om:
            return (child.om for child in self._children.values())
        return (child.text for child in self._children.values())

    @property  # type: ignore[override]
    def samples(self) -> list[Sample]:
        name, out = self.name, []
        for key, child in self._children.items():
            labels = dict(zip(self._labelnames, key))
            cumulative = 0.0
            for le, count, exemplar in zip(self._le, child.counts, child.exemplars):
                cumulative += count
                out.append(Sample(f"{name}_bucket", {**labels, "le": le}, cumulative, None, exemplar))
            out.append(Sample(f"{name}_count", labels, cumulative, None, None))
            if self._bounds[0] >= 0:
                out.append(Sample(f"{name}_sum", labels, child.sum, None, None))
        return out

    @samples.setter
    def samples(self, value: object) -> None:
        pass


class _Listed:
    """Metric families as a collector, for prometheus_client's encoders."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def render(registry: CollectorRegistry, om: bool = False, encoder: Callable[[Any], bytes] | None = None,
           gzip: bool = False) -> bytes:
    """The exposition of every collector in `registry`: text format, or OpenMetrics if `om`;
    gzip-compressed if `gzip`.

    This module's families render themselves (what changed since the last scrape); other
    collectors' families are rendered by prometheus_client's `encoder` for the format.
    """
    if encoder is None:
        encoder = openmetrics.generate_latest if om else generate_latest
    parts: list[tuple[bytes, _Family | None]] = []
    others: list[Metric] = []
    for metric in registry.collect():
        if isinstance(metric, _Family):
            if others:
                parts.append((_rendered_by(encoder, others, om), None))
                others = []
            parts.append((metric.render(om), metric))
        else:
            others.append(metric)
    if others:
        parts.append((_rendered_by(encoder, others, om), None))
    if om:
        parts.append((_EOF, None))
    if gzip:
        return _gzip(parts, om)
    return b"".join(part for part, _ in parts)


def _rendered_by(encoder: Callable[[Any], bytes], metrics: list[Metric], om: bool) -> bytes:
    body = encoder(_Listed(metrics))
    return body[: -len(_EOF)] if om else body


#: A gzip member's header: deflate, no name, no time, unknown OS.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
#: An empty final deflate block: ends the stream of pieces.
_LAST_BLOCK = b"\x03\x00"


def _deflate(data: bytes) -> bytes:
    """Raw deflate of `data`, not final and ending on a byte boundary (a sync flush): such
    pieces, compressed separately, concatenate into one valid deflate stream."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _gzip(parts: list[tuple[bytes, _Family | None]], om: bool) -> bytes:
    """One gzip member of the parts, each family's piece compressed again only when its text changed."""
    pieces, crc, size = [_GZIP_HEADER], 0, 0
    for part, family in parts:
        if family is None:
            pieces.append(_deflate(part))
        else:
            kept = family._deflated.get(om)
            if kept is None or kept[0] is not part:  # `render` made a new block: it changed
                kept = family._deflated[om] = (part, _deflate(part))
            pieces.append(kept[1])
        crc, size = zlib.crc32(part, crc), size + len(part)
    pieces += [_LAST_BLOCK, struct.pack("<II", crc, size & 0xFFFFFFFF)]
    return b"".join(pieces)


def _quality(element: str) -> float:
    """The q-value of one element of an Accept or Accept-Encoding header (1 when absent or unreadable)."""
    for param in element.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 1.0
    return 1.0


def _acceptable(header: str) -> str:
    """`header` without its elements of q=0, which RFC 9110 (12.4.2) makes "not acceptable"."""
    return ",".join(element for element in header.split(",") if _quality(element) > 0)


def exposition(registry: CollectorRegistry, accept: str = "", accept_encoding: str = "") -> tuple[bytes, dict[str, str]]:
    """`/metrics` for a request's Accept and Accept-Encoding headers: the body and its headers.

    The format is negotiated by prometheus_client. Escaping schemes that leave legacy
    names as they are (all of this exporter's names are) render here; "dots" rewrites
    every name and is left to prometheus_client.
    """
    try:  # prometheus_client reads no q-values: what the client refused (q=0) is dropped first
        encoder, content_type = choose_encoder(_acceptable(accept))
    except Exception:  # e.g. a version that is not a number: the text format, as for no Accept at all
        encoder, content_type = choose_encoder("")
    headers = {"Content-Type": content_type}
    compress = gzip_accepted(_acceptable(accept_encoding))
    if compress:
        headers["Content-Encoding"] = "gzip"
    options = encoder.keywords if isinstance(encoder, partial) else {}
    if options.get("escaping", openmetrics.UNDERSCORES) == openmetrics.DOTS:
        body = encoder(registry)
        return (gzip.compress(body) if compress else body), headers
    om = getattr(encoder, "func", encoder) is openmetrics.generate_latest
    return render(registry, om, encoder, gzip=compress), headers
