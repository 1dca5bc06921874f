"""Lines, destinations and the caller's wait: correlator facts, saved state, metrics, reload."""

from __future__ import annotations

import json
import signal
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mtt_exporter.cause import LegOutcome
from mtt_exporter.correlator import (
    Applied,
    CallEnded,
    CallOutcome,
    Correlator,
    LegEnded,
    Waited,
    WaitOutcome,
    call_from_dict,
    call_to_dict,
    dump_state,
    load_state,
)
from mtt_exporter.labelmap import OTHER, UNKNOWN, load
from mtt_exporter.metrics import Metrics
from mtt_exporter.model import EVENT_BY_CODE, Notification, Side, parse
from mtt_exporter.server import CORRELATOR, METRICS, tick

from .conftest import DATA
from .process import Exporter

NOW = 1_000_000.0
MAP = DATA / "labelmap" / "good.yml"
SALES, SUPPORT, KAZAN = "79586488002", "79586488003", "0004"
DUTY, PBX, STRANGER = "79684881033", "74950000000", "79990000000"


def note(code: str, t: float, number: str = "", side: str = "", cause: int | None = None,
         sip_id: str = SALES, extension: str = "", conf: str = "C1") -> Notification:
    premedia_a = side == "A" and code in ("sp", "ep")
    return Notification(
        conf_id=conf, event=EVENT_BY_CODE[code], time=float(t), side=Side(side) if side else Side.UNKNOWN,
        cause=cause, redirect_number="" if premedia_a else number, number_a="79154368886",
        sip_id=sip_id, extension=extension)


def run(steps, labels=None, until: float = 60):
    correlator = Correlator(grace=15, labels=load(MAP) if labels is None else labels)
    facts = []
    for offset, n in steps:
        facts += correlator.expire(NOW + offset)
        facts += correlator.apply(n, NOW + offset)[1]
    for offset in range(int(steps[-1][0]), int(until) + 1):
        facts += correlator.expire(NOW + offset)
    return correlator, facts


def of(kind, facts):
    return [f for f in facts if isinstance(f, kind)]


ANSWERED = [(0, note("sp", 0, side="A")), (7, note("ep", 7, side="A")), (8, note("o", 8, DUTY)),
            (19, note("s", 19, DUTY)), (108, note("h", 108, DUTY, side="B", cause=16))]

WAITS = {
    "answered: premedia A to the first s": dict(steps=ANSWERED, waits=[(WaitOutcome.ANSWERED, 19.0, "sales")]),
    # measured when the grace period after the answer ends: premedia A arriving after `s` still counts
    "answered, delivered in reverse": dict(
        steps=[(i, n) for i, (_, n) in enumerate(reversed(ANSWERED))], waits=[(WaitOutcome.ANSWERED, 19.0, "sales")]),
    "answered on the second leg, no premedia": dict(
        steps=[(0, note("o", 0, DUTY)), (20, note("h", 20, DUTY, side="B", cause=19)), (21, note("o", 21, PBX)),
               (30, note("s", 30, PBX)), (90, note("h", 90, PBX, side="A", cause=16))],
        waits=[(WaitOutcome.ANSWERED, 30.0, "sales")]),
    "abandoned while ringing": dict(
        steps=[(0, note("sp", 0, side="A")), (5, note("ep", 5, side="A")), (6, note("o", 6, DUTY)),
               (40, note("h", 40, DUTY, side="A", cause=16))],
        waits=[(WaitOutcome.ABANDONED, 40.0, "sales")]),
    "abandoned during premedia, no leg": dict(
        steps=[(0, note("sp", 0, side="A")), (4, note("h", 4, side="A", cause=16))],
        waits=[(WaitOutcome.ABANDONED, 4.0, "sales")]),
    "unanswered (destination busy): no wait": dict(
        steps=[(0, note("o", 0, DUTY)), (3, note("h", 3, DUTY, side="B", cause=17))], waits=[]),
    "answer twice on two legs: one wait": dict(
        steps=[(0, note("o", 0, DUTY)), (1, note("o", 1, PBX)), (5, note("s", 5, DUTY)), (6, note("s", 6, PBX)),
               (9, note("h", 9, DUTY, side="B", cause=16))],
        waits=[(WaitOutcome.ANSWERED, 5.0, "sales")]),
}


@pytest.mark.parametrize("case", [pytest.param(v, id=k) for k, v in WAITS.items()])
def test_wait(case):
    _, facts = run(case["steps"])
    assert [(w.outcome, w.seconds, w.line) for w in of(Waited, facts)] == case["waits"]


@pytest.mark.parametrize(
    ("sip_ids", "line"),
    [
        pytest.param([SALES, SUPPORT, SUPPORT], "sales", id="decided by the first, kept"),
        pytest.param(["", "", SUPPORT], "support", id="first notification with a sip_id"),
        pytest.param(["", "", ""], UNKNOWN, id="no sip_id at all"),
        pytest.param([STRANGER, SALES, SALES], OTHER, id="not in the map"),
    ],
)
def test_line_is_decided_once(sip_ids, line):
    steps = [(0, note("o", 0, DUTY, sip_id=sip_ids[0])), (5, note("s", 5, DUTY, sip_id=sip_ids[1])),
             (9, note("h", 9, DUTY, side="B", cause=16, sip_id=sip_ids[2]))]
    correlator, facts = run(steps)
    ended = of(CallEnded, facts)
    assert ended == [CallEnded(CallOutcome.ANSWERED, line)]
    # every originate/answer/hangup is counted under the line known when it came in
    assert [a.line for a in of(Applied, facts)][-1] == line


def test_extension_picks_its_own_line():
    _, facts = run([(0, note("o", 0, DUTY, sip_id=SUPPORT, extension=KAZAN)),
                    (3, note("h", 3, DUTY, side="B", cause=17, sip_id=SUPPORT))])
    assert of(CallEnded, facts) == [CallEnded(CallOutcome.UNANSWERED, "support-kazan")]


def test_destinations_of_legs():
    _, facts = run([(0, note("o", 0, DUTY)), (2, note("h", 2, DUTY, side="B", cause=17)),
                    (3, note("o", 3, STRANGER)), (5, note("h", 5, STRANGER, side="B", cause=17)),
                    (6, note("o", 6, "74950000001")), (9, note("s", 9, "74950000001")),
                    (20, note("h", 20, "74950000001", side="A", cause=16))])
    assert sorted((f.outcome.value, f.destination) for f in of(LegEnded, facts)) == [
        ("answered", "office-pbx"), ("busy", "duty-mobile"), ("busy", OTHER)]


def test_state_keeps_line_and_wait_start_and_reads_version_1():
    correlator, _ = run([(0, note("sp", 0, side="A", sip_id=SUPPORT)), (6, note("o", 6, DUTY, sip_id=SALES))], until=6)
    data = call_to_dict(correlator.calls["C1"])
    assert (data["line"], data["start"]) == ("support", 0.0)
    assert call_to_dict(call_from_dict(data)) == data
    saved = json.loads(json.dumps(dump_state(correlator)))
    old = {**saved, "version": 1, "calls": [[c, {k: v for k, v in d.items() if k not in ("line", "start")}]
                                            for c, d in saved["calls"]]}
    for state, line, waits in ((saved, "support", [40.0]), (old, UNKNOWN, [])):
        fresh = Correlator(grace=15, labels=load(MAP))
        load_state(state, fresh)
        facts = fresh.apply(note("h", 40, DUTY, side="A", cause=16, sip_id=""), NOW + 40)[1] + fresh.expire(NOW + 60)
        assert of(CallEnded, facts) == [CallEnded(CallOutcome.ABANDONED, line)]
        assert [w.seconds for w in of(Waited, facts)] == waits


@pytest.mark.parametrize(
    "line",
    [pytest.param(123, id="not a string"), pytest.param("x" * 41, id="too long")],
)
def test_damaged_line_in_state_is_refused(line):
    correlator, _ = run([(0, note("o", 0, DUTY))], until=0)
    data = call_to_dict(correlator.calls["C1"])
    with pytest.raises(ValueError):
        call_from_dict({**data, "line": line})


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def test_metrics_precreate_the_map_and_fall_back_to_other():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_labels(load(MAP))
    for line in ("sales", "support", "support-kazan", OTHER, UNKNOWN):
        assert sample(registry, "mtt_calls_total", outcome="answered", line=line) == 0
        assert sample(registry, "mtt_call_wait_seconds_bucket", outcome="answered", line=line, le="20.0") == 0
    assert sample(registry, "mtt_call_legs_total", outcome="busy", destination="night-shift") == 0
    # a call saved under an older map: its name is not known any more
    metrics.record_facts([CallEnded(CallOutcome.ANSWERED, "gone"), Waited(WaitOutcome.ANSWERED, 12.0, "sales"),
                          Applied(EVENT_BY_CODE["h"], Side.B, 17, "gone"), LegEnded(LegOutcome.BUSY, "gone")])
    assert sample(registry, "mtt_calls_total", outcome="answered", line=OTHER) == 1
    assert sample(registry, "mtt_call_wait_seconds_bucket", outcome="answered", line="sales", le="15.0") == 1
    assert sample(registry, "mtt_call_wait_seconds_bucket", outcome="answered", line="sales", le="10.0") == 0
    assert sample(registry, "mtt_call_hangups_total", cause="17", cause_name="User busy", cause_class="normal",
                  side="B", line=OTHER) == 1
    assert sample(registry, "mtt_call_legs_total", outcome="busy", destination=OTHER) == 1


def test_reload_removes_names_no_longer_mapped():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_labels(load(MAP))
    metrics.set_labels(load(MAP).__class__(lines={SALES: "sales"}, mapped=True))
    text = generate_latest(registry).decode()
    assert 'line="sales"' in text and 'line="support"' not in text and 'destination="duty-mobile"' not in text


async def test_feeding_real_calls_shows_lines_and_never_a_number(make_client, seed_call, clock):
    client, app = await make_client(label_map=MAP)
    for item in seed_call:  # sip_id 79586488002 (sales), forwarded to 79684881033 (duty-mobile)
        assert (await client.post("/notify", json=item)).status == 200
    stranger = [{**item, "h323_conf_id": "OTHER", "sip_id": STRANGER} for item in seed_call]
    assert (await client.post("/notify", json=stranger)).status == 200
    clock.now += 60  # the waits are measured when the grace period after the answer ends
    tick(app, clock.now)
    registry = app[METRICS].registry
    assert sample(registry, "mtt_calls_total", outcome="answered", line="sales") == 1
    assert sample(registry, "mtt_calls_total", outcome="answered", line=OTHER) == 1
    assert sample(registry, "mtt_call_wait_seconds_count", outcome="answered", line="sales") == 1
    assert sample(registry, "mtt_call_legs_total", outcome="answered", destination="duty-mobile") == 2
    text = (await (await client.get("/metrics")).read()).decode()
    numbers = {item[k] for item in seed_call + stranger for k in ("sip_id", "numberA", "redirect_number") if k in item}
    assert not [n for n in numbers if n in text]


@pytest.mark.parametrize(
    ("peer_loopback", "token", "status"),
    [
        pytest.param(True, None, 200, id="loopback"),
        pytest.param(False, None, 403, id="remote without token"),
        pytest.param(False, "s3cret", 200, id="remote with the token"),
        pytest.param(False, "wrong", 403, id="remote with a wrong token"),
    ],
)
async def test_reload_endpoint_access(make_client, tmp_path, peer_loopback, token, status):
    path = tmp_path / "map.yml"
    path.write_text(MAP.read_text())
    # the test client is on loopback: a trusted proxy's X-Forwarded-For stands for a remote client
    client, app = await make_client(label_map=path, token="s3cret", trusted_proxy=["127.0.0.1/32"])
    headers = {} if peer_loopback else {"X-Forwarded-For": "192.0.2.7"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    path.write_text('lines:\n  "79586488002": renamed\n')
    response = await client.post("/-/reload", headers=headers)
    assert response.status == status, await response.text()
    assert (app[CORRELATOR].labels.line(SALES) == "renamed") is (status == 200)


async def test_bad_new_map_is_refused_and_the_old_one_stays(make_client, tmp_path, caplog):
    path = tmp_path / "map.yml"
    path.write_text(MAP.read_text())
    client, app = await make_client(label_map=path)
    path.write_text('lines:\n  "79586488002": Bad Name\n')
    response = await client.post("/-/reload")
    assert response.status == 400
    assert (await response.json())["errors"] == [f"{path}:2: name 'Bad Name' must be lower-case letters, digits, "
                                                 "'_', '.', '-' and start with a letter or digit"]
    registry = app[METRICS].registry
    assert sample(registry, "mtt_label_map_reloads_total", result="failure") == 1
    assert sample(registry, "mtt_label_map_last_reload_successful") == 0
    assert app[CORRELATOR].labels.line(SALES) == "sales"
    assert "label map refused" in caplog.text


def test_start_with_a_bad_map_lists_every_error_and_sighup_reloads(tmp_path):
    bad = Exporter(tmp_path, "--label-map", str(DATA / "labelmap" / "bad.yml"))
    with pytest.raises(AssertionError, match="exited 1"):
        bad.start()
    log = bad.log()
    assert log.count("bad.yml:") == len((DATA / "labelmap" / "bad.errors").read_text().splitlines()), log

    path = tmp_path / "map.yml"
    path.write_text(MAP.read_text())
    exporter = Exporter(tmp_path, "--label-map", str(path)).start()
    try:
        assert 'line="support-kazan"' in exporter.metrics()
        path.write_text('lines:\n  "79586488002": renamed\n')
        exporter.process.send_signal(signal.SIGHUP)
        for _ in range(100):
            if 'line="renamed"' in (text := exporter.metrics()):
                break
            time.sleep(0.05)
        assert 'line="renamed"' in text and 'line="support-kazan"' not in text
        assert 'mtt_label_map_reloads_total{result="success"} 1.0' in text
    finally:
        assert exporter.stop() == 0


def test_state_file_of_version_1_loads(tmp_path):
    """A dated snapshot written before lines existed (version 1) is read: its calls have no line yet."""
    from mtt_exporter.statefile import StateFile

    correlator, _ = run([(0, note("o", 0, DUTY))], until=0)
    state = StateFile(tmp_path / "state.json", correlator)
    state.save()
    data = json.loads(state.path.read_text())
    data["version"] = 1
    for _, call in data["calls"]:
        call.pop("line"), call.pop("start")
    state.path.write_text(json.dumps(data))
    fresh = Correlator(grace=15, labels=load(MAP))
    assert len(StateFile(state.path, fresh).load()) == 1
    assert fresh.calls["C1"].line == ""
    facts = fresh.apply(note("h", 3, DUTY, side="B", cause=17, sip_id=SUPPORT), NOW + 3)[1] + fresh.expire(NOW + 30)
    assert of(CallEnded, facts) == [CallEnded(CallOutcome.UNANSWERED, "support")]  # decided by the next sip_id
