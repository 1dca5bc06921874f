"""Prometheus rules: `promtool check rules`, and `promtool test rules` on crafted traffic.

Each scenario is one job's traffic, minute by minute, over two days (or eight, for the alerts
that compare with a week ago): business hours 08:00-20:00 with a normal mix of leg outcomes,
quiet nights, and an incident. At every evaluation time the test states the complete set of
firing alerts, so every alert is proven to fire on its incident and to stay silent on normal
traffic, at night and on the other incidents. The promtool test files are written from these
tables (multi-day series are impractical by hand); expected annotations are the rule's own
templates filled with the values computed here by hand.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import yaml

from mtt_exporter.cause import cause_class, cause_name

from .grafana import CLUSTER_CONFIG, CLUSTER_LABELS, ROOT, render_mixin, rule_files

RUNBOOK = ROOT / "docs" / "runbook.md"
INSTANCE = "exporter:9888"
DAY = 24 * 60


def at(day: int, hour: int, minute: int = 0) -> int:
    """Minutes since the start of a scenario."""
    return day * DAY + hour * 60 + minute


def business(minute: int) -> bool:
    return at(0, 8) <= minute % DAY < at(0, 20)


# --- traffic -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """What one job's exporter counts per minute while traffic flows."""

    #: (leg outcome, hangup cause) -> legs per minute; every leg has an o and an h, answered ones an s
    legs: dict[tuple[str, int], int]
    rejected: dict[str, int] = field(default_factory=dict)
    evicted_capacity: int = 0
    #: notifications arrive ~a minute late instead of within a second
    slow: bool = False
    #: notifications correlated in local memory instead of the shared state backend
    fallbacks: int = 0
    #: line -> calls ended per minute: (answered within the service level, answered later, abandoned,
    #: unanswered); answered and abandoned ones also in the caller's wait histogram
    calls: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)

    def with_legs(self, **changes: int) -> Mix:
        """A copy with legs changed, e.g. answered_16=2, no_answer_19=14."""
        legs = dict(self.legs)
        for key, count in changes.items():
            outcome, _, cause = key.rpartition("_")
            legs[(outcome, int(cause))] = count
        return replace(self, legs=legs)


#: 23 legs a minute: 12 answered, 4 busy, 4 not answered, 2 parallel-ringing losers, 1 network failure
NORMAL = Mix({("answered", 16): 12, ("busy", 17): 4, ("no_answer", 19): 4, ("not_selected", 26): 2,
              ("network_failure", 41): 1})
QUIET = Mix({})
REJECTED_REASON = "unauthorized"
DELAY_BUCKETS = ("1", "60", "+Inf")


def counters(mix: Mix) -> dict[str, float]:
    """Series (without job/instance) -> increment per minute."""
    out: dict[str, float] = defaultdict(float)
    attempts = answers = 0
    for (outcome, cause), n in mix.legs.items():
        attempts += n
        answers += n if outcome == "answered" else 0
        out[f'mtt_call_legs_total{{outcome="{outcome}"}}'] += n
        out[f'mtt_call_hangups_total{{cause="{cause}", cause_name="{cause_name(cause)}", '
            f'cause_class="{cause_class(cause).value}", side="B"}}'] += n
    out["mtt_call_attempts_total"] += attempts
    out["mtt_call_answers_total"] += answers
    for event, n in (("originate", attempts), ("answer", answers), ("hangup", attempts)):
        out[f'mtt_notifications_total{{event="{event}"}}'] += n
    accepted = 2 * attempts + answers
    for le in DELAY_BUCKETS:
        out[f'mtt_notification_delay_seconds_bucket{{le="{le}"}}'] += 0 if mix.slow and le == "1" else accepted
    out[f'mtt_notifications_rejected_total{{reason="{REJECTED_REASON}"}}'] += mix.rejected.get(REJECTED_REASON, 0)
    out['mtt_calls_evicted_total{reason="capacity"}'] += mix.evicted_capacity
    if mix.fallbacks:
        out["mtt_state_backend_fallbacks_total"] += mix.fallbacks
    for line, (fast, slow, abandoned, unanswered) in mix.calls.items():
        for outcome, n in (("answered", fast + slow), ("abandoned", abandoned), ("unanswered", unanswered)):
            out[f'mtt_calls_total{{outcome="{outcome}", line="{line}"}}'] += n
        out[f'mtt_call_wait_seconds_bucket{{outcome="answered", line="{line}", le="20.0"}}'] += fast
        out[f'mtt_call_wait_seconds_count{{outcome="answered", line="{line}"}}'] += fast + slow
        out[f'mtt_call_wait_seconds_count{{outcome="abandoned", line="{line}"}}'] += abandoned
    return out


@dataclass(frozen=True)
class Mixin:
    """Rules generated for one config, and the target labels its selector and aggregation need."""

    root: Path
    #: labels of every scraped series beside job and instance
    target: dict[str, str] = field(default_factory=dict)
    #: labels an aggregated alert keeps beside job
    kept: dict[str, str] = field(default_factory=dict)
    #: target labels outside the config's selector (None: the config selects everything)
    outside: dict[str, str] | None = None

    @property
    def rule_files(self) -> list[Path]:
        return rule_files(self.root)


DEFAULT = Mixin(ROOT)


@pytest.fixture(scope="module", params=["default", "cluster-job"])
def mixin(request, tmp_path_factory) -> Mixin:
    """The committed rules, and the rules of a config aggregating by cluster and job under a selector."""
    if request.param == "default":
        return DEFAULT
    return Mixin(render_mixin(tmp_path_factory.mktemp("mixin"), CLUSTER_CONFIG), CLUSTER_LABELS,
                 {"cluster": CLUSTER_LABELS["cluster"]}, {**CLUSTER_LABELS, "namespace": "elsewhere"})


def labelled(series: str, job: str, target: dict[str, str] | None = None) -> str:
    name, _, rest = series.partition("{")
    extra = ", " + rest.rstrip("}") if rest else ""
    more = "".join(f', {k}="{v}"' for k, v in (target or {}).items())
    return f'{name}{{job="{job}", instance="{INSTANCE}"{more}{extra}}}'


# --- expectations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Firing:
    """An alert expected to fire: its alert-specific labels and its $value as Prometheus formats it."""

    alert: str
    value: str = ""
    labels: tuple[tuple[str, str], ...] = ()


def hangup_labels(cause: int) -> tuple[tuple[str, str], ...]:
    return (("cause", str(cause)), ("cause_class", cause_class(cause).value), ("cause_name", cause_name(cause)))


@dataclass(frozen=True)
class Scenario:
    """One job: what flows each minute, whether it is up, and what fires when (nothing at other checks)."""

    name: str
    days: int
    traffic: Callable[[int], Mix]
    firing: dict[int, list[Firing]]
    up: Callable[[int], bool] = lambda minute: True
    #: whether the target is in service discovery at all (when not, even `up` is absent)
    present: Callable[[int], bool] = lambda minute: True
    #: with --state-backend: whether the backend answers (None: no backend, no such series)
    backend_up: Callable[[int], bool] | None = None
    #: an exporter the config's selector leaves out, when it has one: nothing of it may fire then
    outside: bool = False

    def input_series(self, target: dict[str, str] | None = None) -> list[dict]:
        minutes = range(at(self.days, 0) + 1)
        mixes = [self.traffic(minute) for minute in minutes]
        increments = [counters(mix) for mix in mixes]
        names = sorted(set(counters(NORMAL)).union(*increments))
        totals = dict.fromkeys(names, 0.0)
        values: dict[str, list[float | None]] = {name: [] for name in names}
        present = [self.present(minute) for minute in minutes]
        health = [self.up(minute) and p for minute, p in zip(minutes, present)]
        for up, increment in zip(health, increments):
            for name in names:
                totals[name] += increment.get(name, 0)
                values[name].append(totals[name] if up else None)
        # the receipt time of the last notification: the last minute with traffic, 0 before any
        last, stamps = 0.0, []
        for minute, mix, up in zip(minutes, mixes, health):
            last = minute * 60.0 if mix.legs else last
            stamps.append(last if up else None)
        values["mtt_last_notification_timestamp_seconds"] = stamps
        if self.backend_up is not None:
            values["mtt_state_backend_up"] = [float(self.backend_up(m)) if u else None for m, u in zip(minutes, health)]
        series = [{"series": labelled(name, self.name, target), "values": encode(v)} for name, v in values.items()]
        series.append({"series": labelled("up", self.name, target),
                       "values": encode([float(u) if p else None for u, p in zip(health, present)])})
        series.append({"series": labelled('mtt_exporter_build_info{version="0.1.0"}', self.name, target),
                       "values": encode([1.0 if u else None for u in health])})
        return series


def encode(values: list[float | None]) -> str:
    """promtool's expanding notation: runs of a constant step as 'a+bxn', gaps as 'stale _xn'."""
    out: list[str] = []
    i = 0
    while i < len(values):
        if values[i] is None:
            j = i
            while j < len(values) and values[j] is None:
                j += 1
            out.append("stale" + (f" _x{j - i - 1}" if j - i > 1 else ""))
            i = j
            continue
        j = i
        step = values[i + 1] - values[i] if i + 1 < len(values) and values[i + 1] is not None else 0.0
        while j + 1 < len(values) and values[j + 1] is not None and values[j + 1] - values[j] == step:
            j += 1
        out.append(f"{number(values[i])}{'+' if step >= 0 else '-'}{number(abs(step))}x{j - i}")
        i = j + 1
    return " ".join(out)


def number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def business_days(incident: Mix | None = None, start: int = 0, end: int = 0) -> Callable[[int], Mix]:
    """Normal traffic in business hours, with `incident` instead from minute `start` to `end`."""
    return daytime(lambda m: incident if incident is not None and start <= m < end else NORMAL)


def daytime(traffic: Callable[[int], Mix]) -> Callable[[int], Mix]:
    """`traffic` in business hours, nothing at night."""
    return lambda m: traffic(m) if business(m) else QUIET


# --- the scenarios -----------------------------------------------------------------------

D1 = 1  # incidents happen on the second day, after a normal first day as baseline
INCIDENT, INCIDENT_END = at(D1, 10), at(D1, 12)
ASR_LOW = NORMAL.with_legs(answered_16=2, no_answer_19=14)  # staff stop answering
ASR_DIP = NORMAL.with_legs(answered_16=8, no_answer_19=8)
NIGHT_TRICKLE = Mix({("network_failure", 34): 1}, rejected={REJECTED_REASON: 1}, slow=True)
CAUSE_34 = Firing("MttHangupCauseSpike", "30.3%", hangup_labels(34))  # 10 of 33 hangups a minute
RESOURCES = Firing("MttHangupCauseClassSpike", "33.33%", (("cause_class", "resource_unavailable"),))  # 34 and 41

#: Every day scenario is checked at all of these times: the night, before, during and after the incidents.
DAY_CHECKS = (at(D1, 3), at(D1, 5, 55), at(D1, 9, 55), at(D1, 10, 30), at(D1, 11, 30), at(D1, 14), at(D1, 21))
DAY_SCENARIOS = [
    Scenario("idle", 2, lambda m: QUIET, {}),
    Scenario(
        # a failing call a minute, a token scanner and late notifications, all at night: below every guard
        "night-trickle", 2,
        lambda m: NIGHT_TRICKLE if at(D1, 0) <= m < at(D1, 6) else business_days()(m), {},
    ),
    # 15% of hangups are cause 41 all the time: above the floor, but normal for this job
    Scenario("steady-failure", 2, daytime(lambda m: NORMAL.with_legs(network_failure_41=4)), {}),
    Scenario(
        "cause-spike", 2, business_days(NORMAL.with_legs(network_failure_34=10), INCIDENT, INCIDENT_END),
        # after an hour the failures also pull the hour's ASR (12 of 31) below 70% of yesterday's (12 of 21)
        {at(D1, 10, 30): [CAUSE_34, RESOURCES],
         at(D1, 11, 30): [CAUSE_34, RESOURCES, Firing("MttAsrDrop", "38.71%")]},
    ),
    Scenario(
        "asr-low", 2, business_days(ASR_LOW, INCIDENT, INCIDENT_END),
        # ASR = 2 answered / 21 seizures; the 1-hour drop alert is still pending at 10:30
        {at(D1, 10, 30): [Firing("MttAsrLow", "9.524%")],
         at(D1, 11, 30): [Firing("MttAsrLow", "9.524%"), Firing("MttAsrDrop", "9.524%")]},
    ),
    # 8 of 21 seizures answered against 12 yesterday: above the floor, far below the day before
    Scenario("asr-drop", 2, business_days(ASR_DIP, INCIDENT, INCIDENT_END),
             {at(D1, 11, 30): [Firing("MttAsrDrop", "38.1%")]}),
    Scenario(
        # 5 refused a minute against 58 accepted
        "rejected", 2, business_days(replace(NORMAL, rejected={REJECTED_REASON: 5}), INCIDENT, INCIDENT_END),
        {t: [Firing("MttNotificationsRejected", "7.937%", (("reason", REJECTED_REASON),))]
         for t in (at(D1, 10, 30), at(D1, 11, 30))},
    ),
    # three calls evicted once, at 10:20: the alert resolves 15 minutes later
    Scenario("evicted", 2, business_days(replace(NORMAL, evicted_capacity=3), at(D1, 10, 20), at(D1, 10, 21)),
             {at(D1, 10, 30): [Firing("MttCallsEvictedCapacity", "3")]}),
    Scenario(
        # every notification lands in the 1-60 s bucket: p95 = 1 + 59 * 0.95
        "delay", 2, business_days(replace(NORMAL, slow=True), INCIDENT, INCIDENT_END),
        {t: [Firing("MttNotificationDelayHigh", "57.05s")] for t in (at(D1, 10, 30), at(D1, 11, 30))},
    ),
    Scenario(
        "down", 2, business_days(),
        {t: [Firing("MttExporterDown", labels=(("instance", INSTANCE),))] for t in (at(D1, 10, 30), at(D1, 11, 30))},
        up=lambda m: not INCIDENT <= m < INCIDENT_END,
    ),
    # the same, in another namespace: a config whose selector leaves it out must not page for it
    Scenario(
        "down-elsewhere", 2, business_days(),
        {t: [Firing("MttExporterDown", labels=(("instance", INSTANCE),))] for t in (at(D1, 10, 30), at(D1, 11, 30))},
        up=lambda m: not INCIDENT <= m < INCIDENT_END, outside=True,
    ),
    # gone from service discovery: no `up` at all, so MttExporterDown cannot see it
    Scenario("vanished", 2, business_days(),
             {t: [Firing("MttExporterAbsent")] for t in (at(D1, 10, 30), at(D1, 11, 30))},
             present=lambda m: not INCIDENT <= m < INCIDENT_END),
    Scenario(
        # a new installation: its first notifications ever at 09:00-09:30 on the second day, then none;
        # no week (not even a day) of history, which MttNotificationsStopped needs
        "first-day-silent", 2, lambda m: NORMAL if at(D1, 9) <= m < at(D1, 9, 30) else QUIET,
        {t: [Firing("MttNotificationsSilent", value, ())]
         for t, value in ((at(D1, 10, 30), "1h 1m 0s"), (at(D1, 11, 30), "2h 1m 0s"), (at(D1, 14), "4h 31m 0s"))},
    ),
    Scenario(
        # the backend is down 10:00-12:00: every notification (58 a minute) is correlated locally
        "backend-down", 2, business_days(replace(NORMAL, fallbacks=58), INCIDENT, INCIDENT_END),
        {t: [Firing("MttStateBackendDown", labels=(("instance", INSTANCE),)),
             Firing("MttStateBackendFallback", "100%", (("instance", INSTANCE),))]
         for t in (at(D1, 10, 30), at(D1, 11, 30))},
        backend_up=lambda m: not INCIDENT <= m < INCIDENT_END,
    ),
    Scenario(
        # the backend answers, but 10 of 58 notifications a minute are correlated locally (calls kept
        # local since a blip); 2 of 58 the rest of the day stay below the threshold
        "backend-fallback", 2,
        daytime(lambda m: replace(NORMAL, fallbacks=10 if INCIDENT <= m < INCIDENT_END else 2)),
        {t: [Firing("MttStateBackendFallback", "17.24%", (("instance", INSTANCE),))]
         for t in (at(D1, 10, 30), at(D1, 11, 30))},
        backend_up=lambda m: True,
    ),
]

#: Two lines of a contact centre, 12 calls a minute each: 8 answered within 20 s, 2 later, 1 abandoned,
#: 1 unanswered (answer rate 83%, service level 8 of 11 waits = 73%).
LINES_OK = {"sales": (8, 2, 1, 1), "support": (8, 2, 1, 1)}
TWO_LINES = replace(NORMAL, calls=LINES_OK)


def lines_with(**support: tuple[int, int, int, int]) -> Mix:
    return replace(NORMAL, calls={**LINES_OK, **support})


def line_firing(value: str) -> list[Firing]:
    return [Firing("MttLineAnswerRateCollapse", value, (("line", "support"),))]


LINE_SCENARIOS = [
    Scenario("two-lines", 2, business_days(TWO_LINES), {}),
    Scenario(
        # support's destinations stop answering: 2 of 12 calls answered, while sales answers 10 of 12
        "line-collapse", 2, daytime(lambda m: lines_with(support=(1, 1, 5, 5)) if INCIDENT <= m < INCIDENT_END else TWO_LINES),
        {t: line_firing("16.67%") for t in (at(D1, 10, 30), at(D1, 11, 30))},
    ),
    Scenario(
        # support still answers 10 of 12, but only 1 within 20 s: service level 1 of 11 waits
        "line-slow", 2,
        daytime(lambda m: lines_with(support=(1, 9, 1, 1)) if INCIDENT <= m < INCIDENT_END else TWO_LINES),
        {t: line_firing("9.091%") for t in (at(D1, 10, 30), at(D1, 11, 30))},
    ),
    # both lines collapse together: not one line's routing (the job-wide alerts' business), silent here
    Scenario("lines-all-down", 2, daytime(
        lambda m: lines_with(sales=(1, 1, 5, 5), support=(1, 1, 5, 5)) if INCIDENT <= m < INCIDENT_END else TWO_LINES),
        {}),
    # support gets one call a minute, never answered: below the guard of 10 calls in 5 minutes
    Scenario("line-trickle", 2, daytime(
        lambda m: lines_with(support=(0, 0, 0, 1)) if INCIDENT <= m < INCIDENT_END else TWO_LINES), {}),
]
DAY_SCENARIOS += LINE_SCENARIOS

D7 = 7  # the week-long scenarios compare day 7 with day 0
WEEK_CHECKS = (at(D7, 3), at(D7, 9, 45), at(D7, 10, 30), at(D7, 11, 45), at(D7, 14), at(D7, 16, 30),
               at(D7, 20, 15), at(D7, 21), at(D7, 23))
WEEK_SCENARIOS = [
    Scenario("normal-week", 8, business_days(), {}),
    Scenario(
        # the feed dies at 10:00 on day 7; a week ago 58 notifications a minute arrived until 20:00
        "feed-stopped", 8, business_days(QUIET, at(D7, 10), at(D7, 24)),
        # MttNotificationsSilent follows once the silence exceeds 30 minutes (and 5 more), until 20:00
        {at(D7, 10, 30): [Firing("MttNotificationsStopped", "58")],
         **{t: [Firing("MttNotificationsStopped", "58"), Firing("MttNotificationsSilent", silence)]
            for t, silence in ((at(D7, 11, 45), "1h 46m 0s"), (at(D7, 14), "4h 1m 0s"),
                               (at(D7, 16, 30), "6h 31m 0s"))}},
    ),
    Scenario(
        # ASR dips 10:00-12:00 on day 0 and day 7 (a weekly pattern: no alert), and 15:00-17:00 on day 7
        "weekly-asr", 8,
        daytime(lambda m: ASR_DIP if m % DAY in range(at(0, 10), at(0, 12)) and m // DAY in (0, D7)
                or at(D7, 15) <= m < at(D7, 17) else NORMAL),
        {at(D7, 16, 30): [Firing("MttAsrDrop", "38.1%")]},
    ),
]


# --- promtool test files -----------------------------------------------------------------


#: Alerts on one target rather than an aggregation: they keep every label of its `up` series.
TARGET_ALERTS = {"MttExporterDown"}


def load_alerts(mixin: Mixin = DEFAULT) -> dict[str, dict]:
    groups = yaml.safe_load(mixin.rule_files[1].read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def fill(template: str, labels: dict[str, str], value: str) -> str:
    """The rule's annotation with $labels and $value as Prometheus renders them (value given)."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], template)
    return re.sub(r"\{\{ \$value(?: \| \w+)? \}\}", value, text)


def promtool_file(mixin: Mixin, name: str, scenarios: list[Scenario], checks: tuple[int, ...],
                  evaluation_interval: str) -> dict:
    """One promtool test: each scenario a job; at every check time, exactly the alerts expected."""
    alerts = load_alerts(mixin)
    for s in scenarios:
        assert set(s.firing) <= set(checks), s.name
        assert {f.alert for fs in s.firing.values() for f in fs} <= alerts.keys(), s.name
    tests = []
    for minute in checks:
        for alert, rule in alerts.items():
            expected = []
            for s in scenarios:
                firing = [] if s.outside and mixin.outside is not None else s.firing.get(minute, [])
                for f in (f for f in firing if f.alert == alert):
                    kept = mixin.target if alert in TARGET_ALERTS else mixin.kept
                    labels = {"job": s.name, **kept, **dict(f.labels)}
                    expected.append({
                        "exp_labels": {**labels, **rule["labels"]},
                        "exp_annotations": {k: fill(v, labels, f.value) for k, v in rule["annotations"].items()},
                    })
            tests.append({"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": expected})
    series = [item for s in scenarios for item in s.input_series(
        mixin.outside if s.outside and mixin.outside is not None else mixin.target)]
    # recording groups first: otherwise, when an alert group happens to run first, it sees the
    # recorded series of the previous step, beyond the 5-minute lookback at a 15-minute step
    groups = [g["name"] for f in mixin.rule_files for g in yaml.safe_load(f.read_text())["groups"]]
    return {"rule_files": [str(f) for f in mixin.rule_files], "evaluation_interval": evaluation_interval,
            "group_eval_order": groups,
            "tests": [{"name": name, "interval": "1m", "input_series": series, "alert_rule_test": tests}]}


def test_promtool_check_rules(promtool, mixin):
    result = subprocess.run([promtool, "check", "rules", *map(str, mixin.rule_files)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 14 rules found" in result.stdout


def test_promtool_unit_tests(promtool, tmp_path, mixin):
    # the 2-day scenarios evaluate every 5 minutes, the week-long ones every 15 (promtool's cost is
    # per evaluation); both files run at once
    files = {"day": (DAY_SCENARIOS, DAY_CHECKS, "5m"), "week": (WEEK_SCENARIOS, WEEK_CHECKS, "15m")}
    runs = {}
    for name, (scenarios, checks, interval) in files.items():
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump(promtool_file(mixin, name, scenarios, checks, interval), sort_keys=False,
                                       width=1 << 16))
        runs[name] = subprocess.Popen([promtool, "test", "rules", str(path)], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
    for name, run in runs.items():
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, f"{name}:\n{output}"


def test_every_alert_fires_somewhere_and_scenarios_cover_quiet_times():
    scenarios = DAY_SCENARIOS + WEEK_SCENARIOS
    fired = {f.alert for s in scenarios for fs in s.firing.values() for f in fs}
    assert fired == set(load_alerts())
    assert {"idle", "night-trickle", "steady-failure", "normal-week", "two-lines", "lines-all-down", "line-trickle"} <= {
        s.name for s in scenarios if not s.firing}
    # every scenario is also checked at night, and once more after its incident (silent again)
    for scenarios, checks in ((DAY_SCENARIOS, DAY_CHECKS), (WEEK_SCENARIOS, WEEK_CHECKS)):
        assert any(not business(t) for t in checks)
        assert all(max(checks) > max(s.firing, default=0) for s in scenarios)


def test_encode_round_trip():
    values = [0.0, 1.0, 2.0, 2.0, 2.0, None, None, None, 5.0, 3.0]
    assert encode(values) == "0+1x2 2+0x1 stale _x2 5-2x1"


def test_alerts_are_documented():
    alerts = load_alerts()
    headings = set(re.findall(r"^## (\w+)$", RUNBOOK.read_text(), re.M))
    for name, rule in alerts.items():
        assert rule["for"] and rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"].endswith(f"docs/runbook.md#{name.lower()}"), name
        assert name in headings, f"docs/runbook.md has no section for {name}"
        if name not in ("MttExporterDown", "MttExporterAbsent", "MttStateBackendDown"):  # value 0 or 1: no news
            assert "$value" in annotations["description"], name
