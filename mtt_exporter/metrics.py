"""Every metric, label value and bucket of the exporter, and the code that records facts.

The only module that imports prometheus_client. Label values come from closed sets
(enums, causes 0..127 + "unknown") and the operator's label map (`line`, `destination`:
its names plus "other" and "unknown"), all pre-created at 0 so rates and alerts see them
before the first event. A name the map in force does not know (a call saved under an
older map) is recorded as "other".
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

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
            "State files not loaded at start but set aside, by reason (corrupt, undated, stale, future).",
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
        yield CounterMetricFamily(
            "mtt_state_backend_retries",
            "Writes of a call retried because it was not as this replica last saw it (written by another replica or request).",
            value=stats.retries)
