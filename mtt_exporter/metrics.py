"""Every metric, label value and bucket of the exporter, and the code that records facts.

The only module that imports prometheus_client. Label values come from closed sets
(enums, causes 0..127 + "unknown"), all pre-created at 0 so rates and alerts see them
before the first event.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from .cause import CAUSE_MAX, LegOutcome, cause_class, cause_label, cause_name
from .correlator import (
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
)
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
            "mtt_call_attempts", "Forwarding legs originated (one per `o` notification).", registry=r)
        self.answers = Counter(
            "mtt_call_answers", "Forwarding legs answered (one per `s` notification).", registry=r)
        self.hangups = Counter(
            "mtt_call_hangups",
            "Hangups (`h` notifications) by Q.850 cause, cause name and class, and the side that hung up.",
            ["cause", "cause_name", "cause_class", "side"], registry=r)
        self.legs = Counter(
            "mtt_call_legs", "Forwarding legs ended, by outcome.", ["outcome"], registry=r)
        self.calls = Counter(
            "mtt_calls", "Incoming calls ended, by outcome.", ["outcome"], registry=r)
        self.premedia = Histogram(
            "mtt_premedia_duration_seconds", "Premedia (prompt) duration, sp to ep, by side.",
            ["side"], buckets=PREMEDIA_BUCKETS, registry=r)
        self.ring = Histogram(
            "mtt_ring_duration_seconds",
            "Ring time of a leg: o to s (answered) or o to h (unanswered).",
            ["outcome"], buckets=RING_BUCKETS, registry=r)
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
        self._hangups = {
            (c, s): self.hangups.labels(
                cause=cause_label(c), cause_name=cause_name(c), cause_class=cause_class(c).value,
                side=s.value)
            for c in CAUSES for s in SIDES
        }
        self._legs = {o: self.legs.labels(outcome=o.value) for o in LegOutcome}
        self._calls = {o: self.calls.labels(outcome=o.value) for o in CallOutcome}
        self._evicted = {x: self.evicted.labels(reason=x.value) for x in EvictionReason}
        self._durations = {
            **{(Phase.PREMEDIA, s.value): self.premedia.labels(side=s.value) for s in SIDES},
            **{(Phase.RING, o.value): self.ring.labels(outcome=o.value) for o in RingOutcome},
            (Phase.ANSWERED, ""): self.answered,
            (Phase.TALK, ""): self.talk,
        }

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
        if n.event is EventType.ORIGINATE:
            self.attempts.inc()
        elif n.event is EventType.ANSWER:
            self.answers.inc()
        elif n.event is EventType.HANGUP:
            self._hangups[(n.cause, n.side)].inc()

    def record_facts(self, facts: list[Fact]) -> None:
        """Record what the correlator concluded."""
        for fact in facts:
            if isinstance(fact, Duration):
                child = self._durations[(fact.phase, fact.label)]
                if self.exemplars and fact.conf_id:
                    child.observe(fact.seconds, {"call_id": fact.conf_id})
                else:
                    child.observe(fact.seconds)
            elif isinstance(fact, LegEnded):
                self._legs[fact.outcome].inc()
            elif isinstance(fact, CallStarted | CallRestored):
                self.in_progress.inc()
            elif isinstance(fact, CallEnded):
                self._calls[fact.outcome].inc()
                self.in_progress.dec()
            elif isinstance(fact, Evicted):
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
