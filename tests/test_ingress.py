"""Issue #9, ingress: what an outside attacker sent, and what a sender in the wild sends.

Each table row is a fault reproduced on the code before the fix (see docs/reliability.md,
"Outside attacker").
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import tracemalloc

import pytest

from mtt_exporter import correlator as correlator_module
from mtt_exporter.correlator import Correlator
from mtt_exporter.log import RateLimitedLog, RefusalLog, mask_secrets
from mtt_exporter.model import MAX_FIELD_LENGTH, MAX_ID_LENGTH, PayloadError, Reason, parse
from mtt_exporter.server import REFUSALS as REFUSALS_KEY, _loop_errors

from .conftest import NOW
from .test_server import TOKEN, logged, rejected, value

OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
CONF = "0123456789ABCDEF0123456789ABCDEF"
SURROGATE = "\ud800"


def _o(**fields) -> dict:
    return {"h323_conf_id": CONF, "event": {"type": "o"}, "date_time": NOW - 10, "redirect_number": "79000000001", **fields}


def _s(**fields) -> dict:
    return {"h323_conf_id": CONF, "event": {"type": "s"}, "date_time": NOW - 8, "redirect_number": "79000000001", **fields}


def _h(**fields) -> dict:
    return {"h323_conf_id": CONF, "event": {"type": "h", "side": "B"}, "date_time": NOW - 5, "redirect_number": "79000000001",
            "cause": 16, **fields}


async def _post_raw(client, body: str, path: str = "/notify", content_type: str = "application/json"):
    return await client.post(path, data=body.encode("utf-8", "surrogatepass"), headers={"Content-Type": content_type})


# --- 1, 4, 5: every string bounded and printable before it is kept -------------------------

HOSTILE = {
    "lone surrogate in the conf id": (_o(h323_conf_id=f"AB{SURROGATE}CD"), "h323_conf_id"),
    "lone surrogate in redirect_number": (_o(redirect_number=f"7900{SURROGATE}"), "redirect_number"),
    "lone surrogate in side-A numberA": ({**_o(numberA=f"7915{SURROGATE}"), "event": {"type": "sp", "side": "A"}}, "numberA"),
    "lone surrogate in data's number": ({"h323_conf_id": CONF, "data": f"event=o_7900{SURROGATE}_2025-12-31-23-00-00"}, "data"),
    "lone surrogate in sip_id": (_o(sip_id=f"{SURROGATE}"), "sip_id"),
    "lone surrogate in event.type": (_o(event={"type": f"o{SURROGATE}"}), "event.type"),
    "control character in the conf id": (_o(h323_conf_id="AB\x00CD"), "h323_conf_id"),
    "escape sequence in the number": (_o(redirect_number="\x1b[31m7900"), "redirect_number"),
    "1 MB numberA": ({**_o(numberA="7" * 1_000_000), "event": {"type": "sp", "side": "A"}}, "numberA"),
    "conf id over 256 characters": (_o(h323_conf_id="A" * (MAX_FIELD_LENGTH + 1)), "h323_conf_id"),
    "number of 65 digits": (_o(redirect_number="7" * (MAX_ID_LENGTH + 1)), "redirect_number"),
    "sip_id as an array": (_o(sip_id=[1, 2]), "sip_id"),
}


@pytest.mark.parametrize(("item", "field"), [pytest.param(*v, id=k) for k, v in HOSTILE.items()])
async def test_hostile_field_is_refused_before_it_is_kept(make_client, item, field):
    client, app = await make_client(max_body_bytes=2 * 1024 * 1024)
    response = await _post_raw(client, json.dumps(item))  # lone surrogates travel as JSON "\ud800"
    body = await response.json()
    assert response.status == 400 and body["reason"] == "invalid", body
    assert body["error"].startswith(field), body
    assert rejected(app, "invalid") == 1
    assert value(app, "mtt_calls_tracked") == 0 and value(app, "mtt_calls_in_progress") == 0
    # the call's other notifications go on; the scrape OpenMetrics negotiates still works
    for good in (_o(), _s()):
        assert (await client.post("/notify", json=good)).status == 200
    scrape = await client.get("/metrics", headers=OPENMETRICS)
    assert scrape.status == 200
    assert f'call_id="{CONF}"' in await scrape.text()


async def test_surrogate_call_id_never_blinds_openmetrics(make_client):
    # the attack of item 1: o + h with a lone surrogate in the id used to make every
    # OpenMetrics scrape answer 500 for as long as the exemplar stayed
    client, app = await make_client()
    for item in (_o(h323_conf_id=SURROGATE), _s(h323_conf_id=SURROGATE)):
        assert (await _post_raw(client, json.dumps(item))).status == 400
    assert (await client.get("/metrics", headers=OPENMETRICS)).status == 200


async def test_a_failure_while_applying_keeps_nothing_and_answers_4xx(make_client, monkeypatch, caplog):
    # item 5: an unexpected exception after the call was inserted lost its CallStarted and
    # left mtt_calls_in_progress drifting; now nothing of the notification is kept
    client, app = await make_client()

    def broken(n):
        raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(correlator_module, "dedup_key", broken)
    response = await client.post("/notify", json=_o())
    assert response.status == 400
    assert (await response.json())["reason"] == "internal"
    assert rejected(app, "internal") == 1
    assert value(app, "mtt_calls_tracked") == 0 and value(app, "mtt_calls_in_progress") == 0
    monkeypatch.undo()
    for item in (_o(), _h()):
        assert (await client.post("/notify", json=item)).status == 200
    await asyncio.sleep(0)
    assert value(app, "mtt_calls_tracked") == 1
    bug = [r for r in caplog.records if r.getMessage() == "failed on a notification"]
    assert len(bug) == 1 and bug[0].exc_info is not None  # logged by the exporter, with the traceback
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")]  # not aiohttp's unhandled error


async def test_a_failure_outside_the_items_is_answered_by_the_exporter(make_client, monkeypatch, caplog):
    client, app = await make_client()
    monkeypatch.setattr("mtt_exporter.server.decode", lambda body, content_type: 1 / 0)
    response = await client.post("/notify", json=_o())
    assert response.status == 400 and (await response.json())["reason"] == "internal"
    assert rejected(app, "internal") == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == ["failed on a request"]


#: README, Security: bytes a call holds whatever its fields, as measured here (astral
#: characters, which CPython stores in 4 bytes each, included).
BYTES_PER_CALL = 2048
BYTES_PER_CALL_WORST = 500_000

#: Characters of the hostile fields: ASCII (1 byte each in CPython) or astral (4 bytes each;
#: a mathematical digit: printable, a digit, unchanged by upper()).
ALPHABETS = [
    pytest.param(("F", "1", "2", "3", "W"), id="ascii"),
    pytest.param(("\U0001D7D8", "\U0001D7D9", "\U0001D7DA", "\U0001F600", "\U0001D7DB"), id="astral"),
]


def _hostile_call(i: int, alphabet: tuple[str, ...] = ("F", "1", "2", "3", "W")) -> list[dict]:
    """A whole call (sp/ep A, o, s, sp/ep B, t, h) with every kept field at its longest."""
    f, one, two, three, _ = alphabet
    conf = f"{i:08d}".ljust(MAX_ID_LENGTH, f) + " " * 100  # spaces are removed, the rest kept
    a, b, sip = (one * MAX_ID_LENGTH), f"{i:08d}".rjust(MAX_ID_LENGTH, two), three * MAX_ID_LENGTH
    steps = [("sp", "A"), ("ep", "A"), ("o", None), ("s", None), ("sp", "B"), ("ep", "B"), ("t", None), ("h", "B")]
    return [{"h323_conf_id": conf, "event": {"type": code, **({"side": side} if side else {})}, "date_time": NOW - 100 + j,
             "numberA": a, "redirect_number": b, "sip_id": sip, "client_id": one * MAX_FIELD_LENGTH}
            for j, (code, side) in enumerate(steps)]


def test_a_week_ahead_is_the_limit():
    assert parse(_o(date_time=NOW + 7 * 86400), NOW).time == NOW + 7 * 86400
    with pytest.raises(PayloadError) as refused:
        parse(_o(date_time=NOW + 7 * 86400 + 1), NOW)
    assert refused.value.reason is Reason.IMPLAUSIBLE_TIME


@pytest.mark.parametrize("alphabet", ALPHABETS)
def test_bytes_per_call_stay_bounded_whatever_the_fields(alphabet):
    # item 4: 300 requests with a 1 MB numberA added 305 MB; now every kept field has a bound
    correlator, calls = Correlator(max_calls=10**6), 2000
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(calls):
            for item in _hostile_call(i, alphabet):
                correlator.apply(parse(item, NOW), NOW)
        gc.collect()
        per_call = tracemalloc.get_traced_memory()[0] / calls
        one = Correlator()
        before = tracemalloc.get_traced_memory()[0]
        for j in range(1000):  # the worst call: 1,000 notifications, each opening a new leg
            item = {"h323_conf_id": alphabet[4] * MAX_ID_LENGTH, "event": {"type": "o"}, "date_time": NOW - 2000 + j,
                    "redirect_number": f"{j:04d}".rjust(MAX_ID_LENGTH, alphabet[1])}
            one.apply(parse(item, NOW), NOW)
        gc.collect()
        worst = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(correlator) == calls
    assert per_call < BYTES_PER_CALL, f"{per_call:.0f} bytes per call"
    assert worst < BYTES_PER_CALL_WORST, f"{worst} bytes for the worst call"


# --- 12: implausible event times -------------------------------------------------------------

IMPLAUSIBLE = {
    "date_time 0": _o(date_time=0),
    "date_time 1e21": _o(date_time=1e21),
    "date_time 1e300": _o(date_time=1e300),
    "date_time negative": _o(date_time=-5),
    "year 9999 in data": {"h323_conf_id": CONF, "data": "event=o_79000000001_9999-12-31-23-59-59"},
    "year 0001 in data": {"h323_conf_id": CONF, "data": "event=o_79000000001_0001-01-01-00-00-00"},
    "before MTT: 1999": {"h323_conf_id": CONF, "data": "event=o_79000000001_1999-12-31-23-59-59"},
    "eight days after receipt": _o(date_time=NOW + 8 * 86400),
    "ISO 8601 year 9999": _o(date_time="9999-01-01T00:00:00Z"),
    "ISO 8601 year 0001": _o(date_time="0001-01-01T00:00:00+03:00"),
}


@pytest.mark.parametrize("item", [pytest.param(v, id=k) for k, v in IMPLAUSIBLE.items()])
async def test_implausible_event_time_is_refused_under_its_own_reason(make_client, item):
    client, app = await make_client()
    response = await client.post("/notify", json=item)
    body = await response.json()
    assert response.status == 400 and body["reason"] == "implausible_time", body
    assert rejected(app, "implausible_time") == 1
    assert value(app, "mtt_notification_delay_seconds_count") == 0
    assert value(app, "mtt_calls_tracked") == 0


async def test_a_duration_longer_than_the_ttl_is_refused(make_client):
    client, app = await make_client(call_ttl=7200)
    assert (await client.post("/notify", json=_o(date_time=NOW - 8000))).status == 200
    response = await client.post("/notify", json=_s(date_time=NOW - 8000 + 7201))
    assert (await response.json())["reason"] == "implausible_time"
    assert value(app, "mtt_ring_duration_seconds_count", outcome="answered") == 0
    assert (await client.post("/notify", json=_s(date_time=NOW - 8000 + 60))).status == 200
    assert value(app, "mtt_ring_duration_seconds_sum", outcome="answered") == 60


# --- while you are there: variants seen in the wild -------------------------------------------

VARIANTS = {
    "date_time in seconds": (_o(date_time=NOW - 10), NOW - 10),
    "date_time in milliseconds": (_o(date_time=(NOW - 10) * 1000), NOW - 10),
    "date_time as a numeric string": (_o(date_time=str(int(NOW - 10))), NOW - 10),
    "date_time in ms as a string": (_o(date_time=str(int(NOW - 10) * 1000)), NOW - 10),
    "date_time ISO 8601 UTC": (_o(date_time="2025-12-31T23:59:50Z"), NOW - 10),
    "date_time ISO 8601 with offset": (_o(date_time="2026-01-01T02:59:50+03:00"), NOW - 10),
    "date_time ISO 8601 naive is Moscow time": (_o(date_time="2026-01-01 02:59:50"), NOW - 10),
    "event as a bare type code": (_o(event="o"), NOW - 10),
    "conf id as a number": (_o(h323_conf_id=123456789), NOW - 10),
    "redirect number as a number": (_o(redirect_number=79000000001), NOW - 10),
}


@pytest.mark.parametrize(("item", "time"), [pytest.param(*v, id=k) for k, v in VARIANTS.items()])
async def test_payload_variants_are_accepted(make_client, item, time):
    client, app = await make_client()
    response = await client.post("/notify", json=item)
    assert response.status == 200, await response.text()
    assert value(app, "mtt_call_attempts_total") == 1
    assert parse(item, NOW).time == time


async def test_routing_request_is_named_counted_and_changes_nothing(make_client):
    client, app = await make_client()
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "getControlCallFollowMe",
           "params": {"sip_id": "79586488002", "numberA": "79154368886", "h323_conf_id": CONF}}
    response = await client.post("/notify", json=rpc)
    body = await response.json()
    assert response.status == 400 and body["reason"] == "routing_request"
    assert "getControlCallFollowMe" in body["error"]
    assert rejected(app, "routing_request") == 1
    assert value(app, "mtt_calls_tracked") == 0 and rejected(app, "invalid") == 0


# --- paths and methods -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        pytest.param("POST", "/notify/", 200, None, id="trailing slash"),
        pytest.param("POST", f"/notify/{TOKEN}/", 200, None, id="token and trailing slash"),
        pytest.param("POST", "/nowhere", 404, "not_found", id="other path"),
        pytest.param("POST", "/notify/a/b", 404, "not_found", id="deeper path"),
        pytest.param("GET", "/notify", 405, "method_not_allowed", id="GET on notify"),
        pytest.param("PUT", f"/notify/{TOKEN}", 405, "method_not_allowed", id="PUT with token"),
        pytest.param("POST", "/metrics", 405, "method_not_allowed", id="POST on metrics"),
    ],
)
async def test_paths_and_methods_answer_json_and_count(make_client, caplog, method, path, status, reason):
    caplog.set_level("DEBUG")
    client, app = await make_client(token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = await client.request(method, path, json=_o(), headers=headers)
    assert response.status == status
    body = await response.json()
    if reason is None:
        assert body["status"] == "ok"
    else:
        assert body["reason"] == reason and rejected(app, reason) == 1
    if status == 405:
        assert response.headers["Allow"]
    assert TOKEN not in logged(caplog)


# --- 11: the token in logs and echoed texts -------------------------------------------------------

@pytest.mark.parametrize(
    "target",
    [
        pytest.param(f"//notify/{TOKEN}", id="double slash"),
        pytest.param(f"/NOTIFY/{TOKEN}", id="upper case"),
        pytest.param(f"/notify/{TOKEN}/", id="trailing slash"),
        pytest.param(f"/notify/{TOKEN}/x", id="deeper"),
        pytest.param(f"/notify?token={TOKEN}&x=1", id="query"),
        pytest.param(f"/other?a=1&token={TOKEN}", id="query elsewhere"),
    ],
)
async def test_token_never_reaches_the_debug_log(make_client, caplog, target):
    caplog.set_level("DEBUG")
    client, _ = await make_client(token=TOKEN)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 4")
    await asyncio.sleep(0.05)  # the access log is written after the answer
    assert TOKEN not in logged(caplog) and TOKEN.encode() not in answer


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(f"POST /notify/{TOKEN} HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", id="broken header"),
        pytest.param(f"POST /notify/{TOKEN}\x01 HTTP/1.1\r\nHost: x\r\n\r\n", id="control in request line"),
        pytest.param(f"GARBAGE /notify/{TOKEN} HTTP/9.9\r\n\r\n", id="bad method and version"),
        pytest.param(f"POST /notify/{TOKEN} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad chunk"),
    ],
)
async def test_protocol_errors_answer_json_without_the_token(make_client, caplog, raw):
    caplog.set_level("DEBUG")
    client, app = await make_client(token=TOKEN)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(raw.encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", answer[:200]
    assert json.loads(body)["reason"] == "malformed"
    assert rejected(app, "malformed") == 1
    await asyncio.sleep(0.05)
    assert TOKEN.encode() not in answer and TOKEN not in logged(caplog)


def test_mask_secrets_everywhere():
    text = f"GET //Notify/{TOKEN}/x?token={TOKEN}&a=1 Authorization: Bearer {TOKEN} basic {TOKEN}"
    masked = mask_secrets(text)
    assert TOKEN not in masked and masked.count("<token>") == 4
    assert mask_secrets(f"junk {TOKEN} junk %s" % TOKEN.replace("s", "%73"), [TOKEN]).count(TOKEN) == 0


# --- 8 (#13): messages a person debugging a sender reads ------------------------------------------

@pytest.mark.parametrize(
    ("body", "content_type", "phrase"),
    [
        pytest.param("", "application/json", "empty body", id="empty"),
        pytest.param("   \n", "application/json", "empty body", id="blank"),
        pytest.param("42", "application/x-www-form-urlencoded", "body is JSON a number", id="JSON 42 as a form"),
        pytest.param("--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b--", "multipart/form-data; boundary=b",
                     "multipart/form-data", id="multipart"),
        pytest.param('{"h323_conf_id": [1], "event": {"type": "o"}}', "application/json",
                     "h323_conf_id: expected a string or a number, got an array", id="conf id array"),
        pytest.param('{"h323_conf_id": "X", "event": {"type": ["o"]}}', "application/json",
                     "event.type: expected a string, got an array", id="type array"),
        pytest.param('{"h323_conf_id": "X", "data": {"a": 1}}', "application/json", "data: expected a string", id="data object"),
        pytest.param('{"h323_conf_id": "X", "event": {"type": "o"}, "date_time": "soon"}', "application/json",
                     "no event time", id="bad date_time"),
    ],
)
async def test_each_refusal_says_what_was_expected(make_client, body, content_type, phrase):
    client, _ = await make_client()
    response = await _post_raw(client, body, content_type=content_type)
    answer = await response.json()
    assert response.status == 400
    assert phrase in answer["error"], answer
    for pydantic_wording in ("Input should be", "valid dictionary", "model_type", "string_type"):
        assert pydantic_wording not in answer["error"]


# --- 10: logs never amplify -------------------------------------------------------------------------

async def test_refusals_are_summarised_not_amplified(make_client, caplog):
    caplog.set_level("INFO", logger="mtt_exporter")
    client, app = await make_client()
    batch = json.dumps([{"x": i} for i in range(1000)])  # 1,000 invalid items, ~10 kB
    for _ in range(50):
        assert (await client.post("/notify", data=batch, headers={"Content-Type": "application/json"})).status == 400
    for _ in range(50):
        assert (await client.post("/nowhere", data=b"x")).status == 404
    app[REFUSALS_KEY].flush(float("inf"))
    lines = [logged_line for logged_line in logged(caplog).splitlines() if "rejected" in logged_line]
    assert rejected(app, "invalid") == 50_000 and rejected(app, "not_found") == 50
    log_bytes = sum(len(line) for line in lines)
    assert len(lines) <= 4, lines
    assert log_bytes < len(batch), f"{log_bytes} log bytes for {len(batch)} refused bytes"


def test_refusal_log_is_one_line_then_a_summary_per_interval(caplog):
    caplog.set_level("INFO")
    refusals = RefusalLog(logging.getLogger("t"), interval=10)
    for i in range(1000):
        refusals.add(float(i % 5), "invalid", "192.0.2.1", "x" * 500)
    refusals.flush(5)
    assert len(caplog.records) == 1  # the first, at once; the interval is not over
    refusals.flush(10)
    assert len(caplog.records) == 2 and caplog.records[1].counts == {"invalid": 999}
    assert len(caplog.records[1].samples) == 3 and all(len(s) <= 160 for s in caplog.records[1].samples)


# --- 6: connections and the fd limit ----------------------------------------------------------------

async def _open_busy(client, count: int) -> list:
    """Connections with a request whose body is still arriving (not idle)."""
    held = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        held.append((reader, writer))
    return held


async def test_max_connections_answers_429_beyond_the_limit(make_client):
    client, app = await make_client(max_connections=3)
    held = await _open_busy(client, 3)
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429") and json.loads(body)["reason"] == "too_many_connections"
    assert rejected(app, "too_many_connections") == 1
    for _, w in held:
        w.close()


async def test_an_idle_connection_makes_room_for_a_new_one(make_client):
    client, app = await make_client(max_connections=2)
    idle = [await asyncio.open_connection(client.host, client.port) for _ in range(2)]  # connected, silent
    await asyncio.sleep(0.05)
    response = await client.post("/notify", json=_o())
    assert response.status == 200
    assert await asyncio.wait_for(idle[0][0].read(), 5) == b""  # the oldest idle one was closed
    assert rejected(app, "too_many_connections") == 0
    for _, w in idle:
        w.close()


def test_accept_failures_at_the_fd_limit_are_one_line(caplog, monkeypatch):
    caplog.set_level("INFO")
    monkeypatch.setattr("mtt_exporter.server._ACCEPT_ERRORS", RateLimitedLog(logging.getLogger("mtt_exporter")))
    loop = asyncio.new_event_loop()
    try:
        for _ in range(10_000):
            _loop_errors(loop, {"message": "socket.accept() out of system resource",
                                "exception": OSError(24, "Too many open files")})
    finally:
        loop.close()
    assert len(caplog.records) == 1 and "cannot accept" in caplog.text


def test_rate_limited_log_counts_what_it_held_back(caplog):
    caplog.set_level("INFO")
    limited = RateLimitedLog(logging.getLogger("t"), interval=10)
    for i in range(100):
        limited.error(i * 0.5, "boom")
    assert len(caplog.records) == 5 and caplog.records[1].repeated == 19




# --- pipelining: a valid request ahead of garbage in the same segment -------------------------------

def _request(item: dict) -> bytes:
    body = json.dumps(item).encode()
    return b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


GARBAGE = b"GARBAGE\x01\x02 / HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    ("segments", "answered"),
    [
        pytest.param([_request(_o()) + GARBAGE], 1, id="one request then garbage"),
        pytest.param([_request(_o()) + _request(_s()) + GARBAGE], 2, id="two requests then garbage"),
        pytest.param([_request(_o()), _request(_s()) + GARBAGE], 2, id="second segment"),
        pytest.param([_request(_o())[:40], _request(_o())[40:] + GARBAGE], 1, id="request split over segments"),
    ],
)
async def test_requests_pipelined_ahead_of_garbage_are_served(make_client, segments, answered):
    client, app = await make_client()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    for segment in segments:
        writer.write(segment)
        await writer.drain()
        await asyncio.sleep(0.02)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.count(b" 200 OK\r\n") == answered, answer
    assert answer.count(b" 400 Bad Request\r\n") == 1 and b'"reason": "malformed"' in answer
    assert value(app, "mtt_call_attempts_total") == 1
    assert rejected(app, "malformed") == 1


# --- the class: whatever text a sender puts anywhere, what is kept is bounded and encodable ----------

from hypothesis import given, settings as hypothesis_settings, strategies as st  # noqa: E402

_TEXT = st.one_of(st.text(st.characters(exclude_categories=()), max_size=300), st.text(st.sampled_from("79\ud800\udfff\x00\x1b \t\u200b+-()"), max_size=80),
                  st.integers(), st.floats(), st.none())
_NUMBER_TEXT = st.text(st.sampled_from("79\ud800\udfff\x00\x1b \t\u200b+-()_&="), max_size=80)


@hypothesis_settings(max_examples=400, deadline=None)
@given(conf=_TEXT, redirect=_TEXT, number_a=_TEXT, sip=_TEXT, cause=_TEXT,
       date_time=st.one_of(st.just(NOW - 10), _TEXT), data_number=st.one_of(st.none(), _NUMBER_TEXT),
       kind=st.sampled_from(["o", "s", "h", "sp", "ep", "t"]),
       side=st.one_of(st.none(), st.sampled_from(["A", "B"]), _TEXT))
def test_whatever_the_fields_what_is_kept_is_bounded_and_encodable(conf, redirect, number_a, sip, cause, date_time,
                                                                     data_number, kind, side):
    item = {"h323_conf_id": conf, "redirect_number": redirect, "numberA": number_a, "sip_id": sip, "cause": cause,
            "date_time": date_time, "event": {"type": kind, "side": side}}
    if data_number is not None:
        item["data"] = f"event={kind}_{data_number}_2025-12-31-23-00-00"
    try:
        n = parse(item, NOW)
    except PayloadError:
        return
    for text in (n.conf_id, n.redirect_number, n.number_a, n.sip_id):
        assert len(text) <= MAX_ID_LENGTH and (text.isprintable() or not text)
        text.encode("utf-8")  # never a lone surrogate: exemplars, dedup keys and logs encode it
    assert 946_684_800 <= n.time <= NOW + 7 * 86400
    correlator_module.dedup_key(n)


# --- 6, with a real process at a low fd limit ----------------------------------------------------------

def test_at_the_fd_limit_connections_are_bounded_and_the_log_stays_quiet(tmp_path):
    import http.client
    import resource
    import socket
    import subprocess
    import sys
    import time

    from .process import ROOT, free_port

    port, log = free_port(), tmp_path / "log"

    def low_fd_limit() -> None:  # soft = hard: the exporter cannot raise it
        resource.setrlimit(resource.RLIMIT_NOFILE, (700, 700))

    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "mtt_exporter", "--listen", f"127.0.0.1:{port}"],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=low_fd_limit)
    held: list[socket.socket] = []
    try:
        for _ in range(300):  # bounded wait for the listener
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
                break
            except OSError:
                time.sleep(0.05)
        if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
            pytest.skip("this process cannot open 1,000 sockets")
        for _ in range(999):  # 1.4 times the fd limit, silent: before the fix, EMFILE and a traceback per retry
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(1.0)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/notify", json.dumps(_o(date_time=int(time.time()) - 5)),
                           {"Content-Type": "application/json"})
        assert connection.getresponse().status == 200  # an idle connection made room
        connection.close()
    finally:
        for sock in held:
            sock.close()
        process.terminate()
        process.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text, text[:2000]
    assert len(text) < 2000, text[:2000]


async def test_index_lists_the_endpoints_not_the_fallbacks(make_client):
    client, _ = await make_client()
    page = await (await client.get("/")).text()
    assert "<code>/notify</code>" in page and "<code>/metrics</code>" in page
    assert "{path}" not in page
