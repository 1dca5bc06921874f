"""HTTP: the seed call end to end, batches, bad input, auth, /metrics."""

from __future__ import annotations

import base64
import gzip
import json

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mtt_exporter.log import TextFormatter
from mtt_exporter.server import METRICS, READY, create_app, create_metrics_app, decode, tick
from mtt_exporter.settings import Settings


def logged(caplog) -> str:
    """Log lines as the exporter prints them, extras included."""
    return "\n".join(TextFormatter().format(r) for r in caplog.records) + caplog.text


def value(app, name, **labels):
    """Sum of the samples `name` whose labels include `labels` (over lines, destinations)."""
    return sum(
        sample.value
        for metric in app[METRICS].registry.collect()
        for sample in metric.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def rejected(app, reason):
    return value(app, "mtt_notifications_rejected_total", reason=reason)


async def test_seed_call_done_criteria(make_client, seed_call):
    client, app = await make_client()
    for item in seed_call:
        response = await client.post("/notify", json=item)
        assert response.status == 200, await response.text()
    assert value(app, "mtt_call_attempts_total") == 1
    assert value(app, "mtt_call_answers_total") == 1
    assert value(app, "mtt_call_hangups_total", cause="16", cause_name="Normal call clearing", cause_class="normal", side="B") == 1
    assert value(app, "mtt_premedia_duration_seconds_sum", side="A") == 7
    assert value(app, "mtt_premedia_duration_seconds_sum", side="B") == 9
    assert value(app, "mtt_ring_duration_seconds_sum", outcome="answered") == 11
    assert value(app, "mtt_answered_duration_seconds_sum") == 89
    assert value(app, "mtt_talk_duration_seconds_sum") == 79
    assert value(app, "mtt_calls_in_progress") == 0
    assert value(app, "mtt_calls_total", outcome="answered") == 1
    assert value(app, "mtt_call_legs_total", outcome="answered") == 1
    assert value(app, "mtt_notifications_total", event="premedia_start") == 2


async def test_batch_and_resend_is_deduplicated(make_client, seed_call):
    client, app = await make_client()
    first = await client.post("/notify", json=seed_call)
    assert (first.status, await first.json()) == (200, {"status": "ok", "accepted": 8, "duplicates": 0})
    again = await client.post("/notify", json=seed_call)
    assert (await again.json())["duplicates"] == 8
    assert value(app, "mtt_call_attempts_total") == 1
    assert value(app, "mtt_notifications_duplicate_total", event="hangup") == 1
    assert value(app, "mtt_answered_duration_seconds_count") == 1


async def test_batch_with_bad_items_records_the_good_ones(make_client, seed_call):
    client, app = await make_client()
    batch = [seed_call[2], {"h323_conf_id": "X", "event": {"type": "zz"}, "date_time": 1}, 42, seed_call[3]]
    response = await client.post("/notify", json=batch)
    body = await response.json()
    assert response.status == 400
    assert body["accepted"] == 2
    assert [(e["index"], e["reason"]) for e in body["errors"]] == [(1, "unknown_event"), (2, "malformed")]
    assert value(app, "mtt_call_answers_total") == 1
    assert rejected(app, "unknown_event") == rejected(app, "malformed") == 1


@pytest.mark.parametrize(("bodies", "stamped"), [
    pytest.param([None], True, id="accepted"),
    pytest.param([None, None], True, id="duplicate still proves the feed"),
    pytest.param([[None, 42]], True, id="batch with a bad item"),
    pytest.param([b"{not json"], False, id="refused"),
    pytest.param([[42]], False, id="batch of bad items"),
])
async def test_last_notification_timestamp(aiohttp_client, seed_call, clock, bodies, stamped):
    # the wall clock steps an hour ahead of the process clock: the gauge is compared with
    # Prometheus' time(), so it must be the wall clock's receipt time
    app = create_app(Settings(_cli_parse_args=[]), registry=CollectorRegistry(), clock=clock, monotonic=lambda: 0.0)
    client = await aiohttp_client(app)
    clock.now += 3600
    assert value(app, "mtt_last_notification_timestamp_seconds") == 0
    for body in bodies:
        if isinstance(body, bytes):
            await client.post("/notify", data=body, headers={"Content-Type": "application/json"})
        else:
            await client.post("/notify", json=[seed_call[0] if b is None else b for b in body]
                              if isinstance(body, list) else seed_call[0])
    assert value(app, "mtt_last_notification_timestamp_seconds") == (clock.now if stamped else 0)


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        pytest.param(b"{not json", {}, 400, "malformed", id="broken JSON"),
        pytest.param(b"\xff\xfe", {}, 400, "malformed", id="not UTF-8"),
        pytest.param(b"42", {}, 400, "malformed", id="JSON number"),
        pytest.param(b'"text"', {}, 400, "malformed", id="JSON string"),
        pytest.param(b"[]", {}, 400, "invalid", id="empty batch"),
        pytest.param(b'{"h323_conf_id": 1' + b"1" * 5000 + b"}", {}, 400, "malformed", id="int beyond digit limit"),
        pytest.param(b"[" * 100000, {}, 400, "malformed", id="deep nesting"),
        pytest.param(b"{}", {}, 400, "invalid", id="empty object"),
        pytest.param(b'{"h323_conf_id":"X","data":"event=zz_1_2019-05-23-15-15-19"}', {}, 400, "unknown_event", id="unknown event"),
        pytest.param(b"[" + b"{}," * 1000 + b"{}]", {}, 413, "too_many_items", id="batch too long"),
        pytest.param(b"x" * 2048, {}, 413, "too_large", id="body too large"),
    ],
)
async def test_bad_requests(make_client, seed_call, body, headers, status, reason):
    client, app = await make_client(max_body_bytes=1024 if reason == "too_large" else 1024 * 1024)
    await client.post("/notify", json=seed_call[2])  # something already recorded
    response = await client.post("/notify", data=body, headers=headers)
    assert response.status == status
    payload = await response.json()
    assert payload["status"] == "error" and payload["reason"] == reason and payload["error"]
    assert rejected(app, reason) == 1
    assert value(app, "mtt_call_attempts_total") == 1


async def test_json_with_wrong_or_missing_content_type(make_client, seed_call):
    client, app = await make_client()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        item = dict(seed_call[2], h323_conf_id=f"id-{content_type}")
        response = await client.post("/notify", data=json.dumps(item), headers={"Content-Type": content_type})
        assert response.status == 200
    assert value(app, "mtt_call_attempts_total") == 3


async def test_form_urlencoded(make_client):
    client, app = await make_client()
    form = {
        "data": "event=h_79684881033_2019-05-23-15-16-59&cause=16",
        "event[type]": "h", "event[side]": "A", "event[cause]": "17",
        "h323_conf_id": "BC5F236C 5AD211E9", "client_id ": "1",
    }
    response = await client.post("/notify", data=form)
    assert response.status == 200, await response.text()
    assert value(app, "mtt_call_hangups_total", cause="17", cause_name="User busy", cause_class="normal", side="A") == 1
    assert value(app, "mtt_notification_conflicts_total", field="cause") == 1


def test_decode_form_event_as_json():
    assert decode(b'event=%7B%22type%22%3A%22o%22%7D&h323_conf_id=1', "application/x-www-form-urlencoded") == {
        "event": {"type": "o"}, "h323_conf_id": "1"}


TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    ("path", "headers", "ok"),
    [
        pytest.param(f"/notify/{TOKEN}", {}, True, id="path segment"),
        pytest.param(f"/notify?token={TOKEN}", {}, True, id="query"),
        pytest.param("/notify", {"Authorization": f"Bearer {TOKEN}"}, True, id="bearer"),
        pytest.param("/notify", {"Authorization": "Basic " + base64.b64encode(f"mtt:{TOKEN}".encode()).decode()}, True, id="basic"),
        pytest.param("/notify", {}, False, id="none"),
        pytest.param("/notify/wrong", {}, False, id="wrong path"),
        pytest.param("/notify?token=wrong", {}, False, id="wrong query"),
        pytest.param("/notify", {"Authorization": f"Bearer {TOKEN}x"}, False, id="wrong bearer"),
        pytest.param("/notify", {"Authorization": "Basic " + base64.b64encode(f"{TOKEN}:x".encode()).decode()}, False, id="token as user"),
        pytest.param("/notify", {"Authorization": "Basic !!!"}, False, id="broken basic"),
    ],
)
async def test_token(make_client, seed_call, caplog, path, headers, ok):
    caplog.set_level("DEBUG")
    client, app = await make_client(token=TOKEN)
    response = await client.post(path, json=seed_call[2], headers=headers)
    assert response.status == (200 if ok else 401)
    assert rejected(app, "unauthorized") == (0 if ok else 1)
    assert value(app, "mtt_call_attempts_total") == (1 if ok else 0)
    assert TOKEN not in logged(caplog)


async def test_logs_mask_numbers(make_client, seed_call, caplog):
    client, _ = await make_client()
    caplog.set_level("DEBUG", logger="mtt_exporter")
    await client.post("/notify", json=seed_call[2])
    await client.post("/notify", json=dict(seed_call[2], event={"type": "zz"}))
    text = logged(caplog)
    assert "7968*****33" in text and "unknown_event" in text
    assert "79684881033" not in text and "79154368886" not in text


async def test_metrics_negotiation_and_gzip(make_client, seed_call):
    client, _ = await make_client()
    await client.post("/notify", json=seed_call)
    plain = await client.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(await plain.text())}
    assert "mtt_call_attempts" in families
    om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    text = await om.text()
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    # the call id rides along as an exemplar on the duration histograms
    assert '# {call_id="BC5F236C5AD211E981BA5CB901FED6FC"} 89.0' in text
    zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert b"mtt_call_attempts_total" in gzip.decompress(await zipped.read())


async def test_health_ready_index(make_client):
    client, _ = await make_client()
    assert (await client.get("/-/healthy")).status == 200
    assert (await client.get("/-/ready")).status == 200
    index = await (await client.get("/")).text()
    assert "/notify" in index and "/metrics" in index


async def test_separate_metrics_listener(make_client, aiohttp_client, seed_call):
    client, app = await make_client(metrics_listen="127.0.0.1:0")
    assert (await client.get("/metrics")).status == 404
    internal = await aiohttp_client(create_metrics_app(app))
    await client.post("/notify", json=seed_call[2])
    assert "mtt_call_attempts_total{line=\"other\"} 1.0" in await (await internal.get("/metrics")).text()
    assert (await internal.post("/notify", json=seed_call[2])).status in (404, 405)


async def test_ready_is_503_before_start(make_client):
    client, app = await make_client()
    app[READY].clear()
    assert (await client.get("/-/ready")).status == 503


async def test_tick_ends_unanswered_call_after_grace(make_client, clock):
    client, app = await make_client(call_end_grace=15)
    base = {"h323_conf_id": "Z1", "redirect_number": "79000000001"}
    await client.post("/notify", json=dict(base, data="event=o_79000000001_2026-01-01-03-00-00"))
    await client.post("/notify", json=dict(base, data="event=h_79000000001_2026-01-01-03-00-05&cause=17", event={"type": "h", "side": "B"}))
    assert value(app, "mtt_calls_in_progress") == 1
    clock.now += 16
    tick(app, clock.now)
    assert value(app, "mtt_calls_in_progress") == 0
    assert value(app, "mtt_call_legs_total", outcome="busy") == 1
    assert value(app, "mtt_calls_total", outcome="unanswered") == 1
    assert value(app, "mtt_ring_duration_seconds_sum", outcome="unanswered") == 5
