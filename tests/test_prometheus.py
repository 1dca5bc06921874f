"""The dashboards and rules against a real Prometheus scraping a real exporter process.

Starts `python -m mtt_exporter` and Debian's `prometheus` (a skip locally when missing, a failure in
CI) on free loopback ports, scraping every second with the project's rule files and exemplar
storage; feeds crafted calls (tests/crafted_calls.py) covering every event, side, cause class,
leg and call outcome plus duplicates, conflicts, refusals, TTL expiry and capacity evictions,
and a realistic mix from the simulator (mtt_exporter.simulate); then runs every dashboard query
through the HTTP API with the template variables substituted.
That every exporter metric is on some panel is checked without Prometheus in test_dashboards.py;
that the OpenMetrics exposition carries the exemplars, in test_server.py (here: that Prometheus
stores them).
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mtt_exporter.metrics import Metrics
from mtt_exporter.model import normalise_conf_id
from mtt_exporter.simulate import SimConfig, generate, label_map_yaml
from mtt_exporter.state import BackendStats

from . import crafted_calls
from .conftest import need_binary
from .grafana import (CLUSTER_CONFIG, CLUSTER_LABELS, PROMETHEUS_SERIES, ROOT, dashboards, metric_names, render_mixin,
                      queries, recorded_names, rule_exprs, rule_files, substitute, variable_queries)

TOKEN = "integration-token"
JOB = "mtt"
MAX_CALLS = 400  # above the calls sent at once, or they would be evicted mid-call
OPEN_CALLS = MAX_CALLS + 10  # ten of them evicted by the cap, the rest expire by the TTL
TTL = 5
SIMULATED_CALLS = 200
LEG_OUTCOMES = ("answered", "busy", "no_answer", "rejected", "subscriber_absent", "not_selected", "address_error",
                "abandoned", "network_failure", "expired")
CALL_OUTCOMES = ("answered", "unanswered", "abandoned", "expired")
#: The families of --state-backend (HA), which this single exporter does not run: the queries reading
#: them must run, but may be empty (tests/test_replicas.py and test_state.py check the values).
BACKEND = "mtt_state_backend_"
#: The simulator's lines and destinations, named by the label map the exporter is started with.
LINES = dict(lines=3, destinations=3, mapped=True)
RATE_INTERVAL = "10s"  # Grafana: max($__interval + scrape interval, 4 x scrape interval), at 1 s scrapes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, KeyError, IndexError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Stack:
    """The exporter and Prometheus processes, and helpers to talk to them."""

    def __init__(self, exporter: str, prometheus: str, root: Path, level: str) -> None:
        self.exporter, self.prometheus = exporter, prometheus
        #: where the rules and dashboards under test are, and the level of their recorded names
        self.root, self.level = root, level
        self.started = time.time()
        self.truth: dict[str, Counter] = {}
        self.call_ids: set[str] = set()

    def post(self, body: Any, token: bool = True) -> int:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return http(f"{self.exporter}/notify{'/' + TOKEN if token else ''}", raw,
                    {"Content-Type": "application/json"})[0]

    def exposition(self) -> str:
        return http(f"{self.exporter}/metrics")[1].decode()

    def api(self, path: str, **params: Any) -> Any:
        status, body = http(f"{self.prometheus}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}")
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", f"{path} {params}: {payload}"
        return payload["data"]

    def value(self, expr: str) -> dict[str, float]:
        """Instant query -> {label values joined: value}."""
        result = self.api("query", query=expr)["result"]
        return {",".join(r["metric"].values()): float(r["value"][1]) for r in result}


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module", params=["default", "cluster-job"])
def stack(request, tmp_path_factory) -> Iterator[Stack]:
    """The committed rules and dashboards; then those of a config aggregating by cluster and job, on a
    target labelled as kube-prometheus or Thanos would label it."""
    prometheus_bin = need_binary("prometheus")
    tmp = tmp_path_factory.mktemp("stack")
    if request.param == "default":
        root, level, labels = ROOT, "job", {}
    else:
        root = render_mixin(tmp_path_factory.mktemp("mixin"), CLUSTER_CONFIG)
        level, labels = "cluster_job", CLUSTER_LABELS
    exporter_port, prometheus_port = free_port(), free_port()
    (tmp / "labels.yml").write_text(label_map_yaml(SimConfig(**LINES)))
    exporter = _start([sys.executable, "-m", "mtt_exporter", "--listen", f"127.0.0.1:{exporter_port}",
                       "--token", TOKEN, "--call-end-grace", "1", "--call-ttl", str(TTL),
                       "--max-calls", str(MAX_CALLS), "--label-map", str(tmp / "labels.yml")], tmp / "mtt_exporter.log")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(f) for f in rule_files(root)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"],
                                                                  "labels": labels}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = _start([prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}",
                         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{prometheus_port}",
                         "--enable-feature=exemplar-storage", "--log.level=warn"], tmp / "prometheus.log")
    s = Stack(f"http://127.0.0.1:{exporter_port}", f"http://127.0.0.1:{prometheus_port}", root, level)
    try:
        wait_for("the exporter", lambda: http(f"{s.exporter}/-/ready")[0] == 200)
        wait_for("prometheus", lambda: http(f"{s.prometheus}/-/ready")[0] == 200)
        wait_for("a first scrape", lambda: s.value(f'up{{job="{JOB}"}}') != {})
        feed(s)
        yield s
    except BaseException:
        for log in ("mtt_exporter.log", "prometheus.log"):
            print(f"--- {log}\n{(tmp / log).read_text()[-4000:]}")
        raise
    finally:
        _stop(prometheus)
        _stop(exporter)


def simulated(now: float) -> tuple[list[Any], dict[str, Counter]]:
    """The simulator's calls of the last half hour, in batches, and the leg and call outcomes they make."""
    workload = generate(SimConfig(calls=SIMULATED_CALLS, seed=3, run_id="it", start=int(now) - 1800, talk_max=600,
                                  **LINES))
    bodies = [d.body for d in workload.deliveries]
    batches = [bodies[i:i + 500] for i in range(0, len(bodies), 500)]  # in order: one call's events stay within grace
    truth = {metric: Counter({o: workload.truth.get(f"mtt_{metric}_total", outcome=o) for o in outcomes})
             for metric, outcomes in (("call_legs", LEG_OUTCOMES), ("calls", CALL_OUTCOMES))}
    return batches, {"legs": +truth["call_legs"], "calls": +truth["calls"]}


def feed(s: Stack) -> None:
    """Post the traffic, then wait until every call is decided and Prometheus has it."""
    workload = crafted_calls.calls(time.time())
    faults = crafted_calls.faults(time.time(), OPEN_CALLS)
    batches, simulated_truth = simulated(time.time())
    s.truth = {k: workload.truth[k] + faults.truth[k] + simulated_truth[k] for k in workload.truth}
    sent = [*workload.deliveries, *batches, faults.conflicting, faults.open_calls]
    s.call_ids = {normalise_conf_id(n["h323_conf_id"]) for body in sent for n in body}
    for body in workload.deliveries + batches:
        assert s.post(body) == 200
    assert s.post(workload.deliveries[0]) == 200  # MTT retrying: duplicates
    assert s.post(faults.conflicting) == 200
    for body, with_token in faults.refused:
        assert s.post(body, with_token) in (400, 401)
    # every call decided (grace period), so only the open calls below will be in progress
    wait_for("calls decided", lambda: "mtt_calls_in_progress 0.0" in s.exposition())
    assert s.post(faults.open_calls) == 200
    capped = OPEN_CALLS - MAX_CALLS  # nothing else is in progress: the oldest open calls go
    wait_for("open calls expired, scraped and recorded", lambda: (
        s.value(f'sum by (reason) (mtt_calls_evicted_total{{job="{JOB}"}})') == {"capacity": capped,
                                                                              "ttl": OPEN_CALLS - capped}
        and s.value(f'sum(mtt_calls_in_progress{{job="{JOB}"}})') == {"": 0}
        and s.value(f'{s.level}:mtt_calls_answered:ratio_rate5m{{job="{JOB}"}}') != {}))


def test_exporter_counted_the_traffic(stack):
    legs = stack.value(f'sum by (outcome) (mtt_call_legs_total{{job="{JOB}"}}) > 0')
    calls = stack.value(f'sum by (outcome) (mtt_calls_total{{job="{JOB}"}}) > 0')
    assert Counter(legs) == stack.truth["legs"] and Counter(calls) == stack.truth["calls"]
    assert set(legs) == set(LEG_OUTCOMES) and set(calls) == set(CALL_OUTCOMES)
    # how many values of each label saw traffic: all of them (of reasons, the four sent)
    expected = {("mtt_notifications_total", "event"): 6, ("mtt_call_hangups_total", "cause_class"): 8,
                ("mtt_call_hangups_total", "side"): 3, ("mtt_premedia_duration_seconds_count", "side"): 3,
                ("mtt_notifications_duplicate_total", "event"): 6, ("mtt_notification_conflicts_total", "field"): 3,
                ("mtt_notifications_rejected_total", "reason"): 4}
    seen = {(metric, label): stack.value(f'count(sum by ({label}) ({metric}{{job="{JOB}"}}) > 0)')[""]
            for metric, label in expected}
    assert seen == expected
    # the lines and destinations of the label map, and `other` for the numbers not in it; no number
    lines = stack.value(f'sum by (line) (mtt_calls_total{{job="{JOB}"}}) > 0')
    destinations = stack.value(f'sum by (destination) (mtt_call_legs_total{{job="{JOB}"}}) > 0')
    assert set(lines) == {"sales", "support", "kazan-office", "other"}, lines
    assert set(destinations) == {"duty-mobile", "office-pbx", "night-shift", "other"}, destinations
    waits = stack.value(f'sum by (outcome) (mtt_call_wait_seconds_count{{job="{JOB}"}}) > 0')
    assert set(waits) == {"answered", "abandoned"}
    assert not re.search(r'(line|destination)="\+?\d', stack.exposition())


def grafana_variables(stack: Stack) -> dict[str, str]:
    """What Grafana puts in the queries with every job and instance selected (a regex of the values)."""
    values = {}
    for board in dashboards(stack.root).values():
        for name, selector, label in variable_queries(board):
            found = stack.api(f"label/{label}/values", **{"match[]": substitute(selector, values)})
            assert found, f"variable {name} would be empty"
            values[name] = "(" + "|".join(re.escape(v).replace("\\", "\\\\") for v in found) + ")"
    return {**values, "__rate_interval": RATE_INTERVAL, "__interval": "2s", "__range": "5m"}


def test_every_panel_query_runs_and_shows_data(stack):
    variables = grafana_variables(stack)
    start, end = stack.started, time.time()
    empty = []
    for name, board in dashboards(stack.root).items():
        panels: dict[str, bool] = {}
        for where, expr in queries(board):
            promql = substitute(expr, variables)
            assert "$" not in promql, f"{name} {where}: variable left in {promql}"
            result = stack.api("query_range", query=promql, start=start, end=end, step=1)["result"]
            panel = where.rpartition(" / ")[0]
            if where.startswith("annotation"):
                continue  # ALERTS: empty unless an alert fires
            values = (float(v) for series in result for _, v in series["values"])
            backend = any(n.startswith(BACKEND) for n in metric_names(expr))
            panels[panel] = panels.get(panel, False) or backend or any(
                math.isfinite(v) and v != 0 for v in values)
        empty += [f"{name}: {panel}" for panel, data in panels.items() if not data]
    assert not empty, f"panels without data: {empty}"


def test_every_metric_named_exists(stack):
    exposed = {sample.name for family in text_string_to_metric_families(stack.exposition())
               for sample in family.samples}
    registries = with_backend, without = CollectorRegistry(), CollectorRegistry()
    Metrics(with_backend).track_backend(BackendStats())
    Metrics(without)
    with_backend_names, without_names = ({s.name for f in r.collect() for s in f.samples} for r in registries)
    backend = with_backend_names - without_names
    assert backend and all(name.startswith(BACKEND) for name in backend)
    known = exposed | backend | recorded_names(stack.root) | PROMETHEUS_SERIES
    boards = dashboards(stack.root).values()
    named = {(where, n) for board in boards for where, expr in queries(board) for n in metric_names(expr)}
    named |= {(f"variable {v}", n) for board in boards for v, selector, _ in variable_queries(board)
              for n in metric_names(selector)}
    named |= {(rule, n) for rule, expr in rule_exprs(stack.root) for n in metric_names(expr)}
    unknown = sorted((where, n) for where, n in named if n not in known)
    assert not unknown, f"not in the exposition nor recorded: {unknown}"


def test_rules_loaded_healthy_and_recorded(stack):
    groups = stack.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {g["file"] for g in groups} == {str(f) for f in rule_files(stack.root)}
    assert len(rules) == sum(1 for _ in rule_exprs(stack.root))
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy
    kept = "".join(f', {k}="{v}"' for k, v in CLUSTER_LABELS.items() if k in stack.level)
    missing = [name for name in sorted(recorded_names(stack.root)) if not stack.value(f'{name}{{job="{JOB}"{kept}}}')]
    assert not missing, f"recording rules without a result: {missing}"
    assert all(re.match(rf"{stack.level}(_\w+)?:", name) for name in recorded_names(stack.root))


@pytest.mark.parametrize("histogram", ["mtt_premedia_duration_seconds", "mtt_ring_duration_seconds",
                                       "mtt_answered_duration_seconds", "mtt_talk_duration_seconds"])
def test_prometheus_stores_the_call_id_exemplars(stack, histogram):
    data = stack.api("query_exemplars", query=f'{histogram}_bucket{{job="{JOB}"}}',
                     start=stack.started - 60, end=time.time())
    call_ids = {e["labels"]["call_id"] for series in data for e in series["exemplars"]}
    assert call_ids and call_ids <= stack.call_ids
