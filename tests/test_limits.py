"""Bounded resources: concurrency, slow clients, calls that never end, calls that never stop."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import logging
import socket
import tracemalloc

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from mtt_exporter.correlator import MAX_NOTIFICATIONS_PER_CALL
from mtt_exporter.server import CORRELATOR, GATE, SHARED, create_app, runner_options
from mtt_exporter.settings import Settings

from .conftest import ExporterTestServer
from .test_server import rejected, value


async def _slow_request(client, body: bytes, sent: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST whose headers and first `sent` body bytes are on the wire, the rest held back."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:sent])
    await writer.drain()
    return reader, writer


async def _until(predicate) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


class _SlowBackend:
    """A state backend whose every apply waits for `release`: requests stay in processing."""

    up = True

    def __init__(self, correlator) -> None:
        self.correlator = correlator
        self.release = asyncio.Event()

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def expire(self, now: float) -> list:
        return []

    async def apply(self, n, now: float):
        await self.release.wait()
        return self.correlator.apply(n, now)

    def submit(self, n, now: float, received: float | None = None):
        return asyncio.ensure_future(self.apply(n, now))  # the request waits for it, as past the queue bound

    async def flush(self) -> None: ...


async def test_concurrency_limit_answers_429_and_counts_overloaded(aiohttp_client, clock, seed_call):
    settings = Settings(_cli_parse_args=[], max_concurrent_requests=2)  # type: ignore[call-arg]
    app = create_app(settings, registry=CollectorRegistry(), clock=clock)
    backend = app[SHARED] = _SlowBackend(app[CORRELATOR])
    client = await aiohttp_client(ExporterTestServer(app))
    held = [asyncio.create_task(client.post("/notify", json=seed_call[i])) for i in (2, 3)]
    await _until(lambda: app[GATE].busy == 2)
    refused = await client.post("/notify", json=seed_call[4])
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    assert (await refused.json())["reason"] == "overloaded"
    assert rejected(app, "overloaded") == 1
    backend.release.set()  # the held requests still complete
    assert [r.status for r in await asyncio.gather(*held)] == [200, 200]
    assert app[GATE].busy == 0
    assert value(app, "mtt_call_attempts_total") == 1 and value(app, "mtt_call_answers_total") == 1


async def test_slow_bodies_take_no_slot_from_fast_senders(make_client, seed_call):
    # slowloris: bodies trickling in on many connections (more than the slots) do not count
    # against --max-concurrent-requests; a sender with its body in is served at once
    client, app = await make_client(max_concurrent_requests=2)
    body = json.dumps(seed_call[2]).encode()
    slow = [await _slow_request(client, body, 10) for _ in range(20)]
    await _until(lambda: app[GATE].open == 20)
    assert app[GATE].busy == 0
    fast = await asyncio.wait_for(client.post("/notify", json=seed_call[3]), 5)
    assert fast.status == 200
    assert rejected(app, "overloaded") == 0
    for reader, writer in slow:  # the slow ones are served as well once their body is in
        writer.write(body[10:])
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
    await _until(lambda: app[GATE].open == 0)
    assert value(app, "mtt_call_attempts_total") == 1 and value(app, "mtt_call_answers_total") == 1


async def test_slow_body_times_out_with_408(make_client, seed_call):
    client, app = await make_client(read_timeout=0.2)
    reader, writer = await _slow_request(client, json.dumps(seed_call[2]).encode(), 10)
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408")
    assert rejected(app, "timeout") == 1
    assert app[GATE].open == 0
    assert value(app, "mtt_call_attempts_total") == 0


async def test_slow_headers_are_cut_off(make_client):
    client, app = await make_client(read_timeout=0.2)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST /notify HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    writer.close()


async def test_a_call_that_never_stops_is_bounded(make_client):
    client, app = await make_client()
    batch = [{"h323_conf_id": "ENDLESS", "redirect_number": "79000000001", "date_time": 1_700_000_000 + i,
              "event": {"type": "o"}} for i in range(MAX_NOTIFICATIONS_PER_CALL + 5)]
    response = await client.post("/notify", json=batch[:1000])
    assert response.status == 200
    response = await client.post("/notify", json=batch[1000:])
    body = await response.json()
    assert response.status == 400 and body["accepted"] == 0
    assert {e["reason"] for e in body["errors"]} == {"too_many_items"}
    assert rejected(app, "too_many_items") == 5
    assert value(app, "mtt_call_attempts_total") == MAX_NOTIFICATIONS_PER_CALL


def _never_ending(first: int, count: int) -> list[dict]:
    return [{"h323_conf_id": f"FLOOD{i:08d}", "redirect_number": "79000000001", "date_time": 1_700_000_000,
             "event": {"type": "o"}} for i in range(first, first + count)]


async def test_flood_of_calls_that_never_end_stays_at_the_cap(make_client):
    cap, batch = 200, 1000
    client, app = await make_client(max_calls=cap)
    url = str(client.make_url("/notify"))
    sent = 0

    async def flood(session: aiohttp.ClientSession, batches: int) -> int:
        nonlocal sent
        for _ in range(batches):
            async with session.post(url, json=_never_ending(sent, batch)) as response:
                assert response.status == 200
            sent += batch
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    # a plain session: the test client would keep every response (and grow) itself
    async with aiohttp.ClientSession() as session:
        await flood(session, 2)
        tracemalloc.start()
        try:
            settled = await flood(session, 8)  # the table has turned over: its size is in
            after = await flood(session, 20)
        finally:
            tracemalloc.stop()
    assert value(app, "mtt_calls_tracked") == cap
    assert value(app, "mtt_calls_in_progress") == cap
    assert value(app, "mtt_calls_evicted_total", reason="capacity") == sent - cap
    assert value(app, "mtt_calls_total", outcome="expired") == sent - cap
    assert value(app, "mtt_call_legs_total", outcome="expired") == sent - cap
    # 20,000 more calls through a table of 200: memory does not follow the number of calls
    # (100 kB would be 5 bytes a call)
    assert after - settled < 100_000, f"{after - settled} bytes more after 20,000 calls at a cap of {cap}"


BROKEN = {
    "gzip that is not gzip": (b"Content-Encoding: gzip\r\nContent-Length: 7\r\n\r\ngarbage", 400, "malformed"),
    "deflate that is not deflate": (b"Content-Encoding: deflate\r\nContent-Length: 7\r\n\r\ngarbage", 400, "malformed"),
    "gzip bomb": (b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(BOMB := gzip.compress(b" " * 5_000_000)) + BOMB, 413, "too_large"),
    "bad chunk size": (b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, None),
    "not HTTP at all": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, None),
}


@pytest.mark.parametrize(("raw", "status", "reason"), [pytest.param(*v, id=k) for k, v in BROKEN.items()])
async def test_broken_bodies_get_4xx_and_no_error_log(make_client, caplog, raw, status, reason):
    caplog.set_level("INFO")
    client, app = await make_client()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = b"" if raw.startswith(b"\x16") else b"POST /notify HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    writer.write(head + raw)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.split(b" ", 2)[1] == str(status).encode(), answer[:200]
    if reason is not None:
        assert rejected(app, reason) == 1
    await asyncio.sleep(0.05)  # aiohttp logs after answering
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_client_leaving_mid_body_is_counted_not_logged_as_error(caplog):
    # the runner as __main__ builds it: the test server would cancel the handler instead
    caplog.set_level("INFO")
    settings = Settings(_cli_parse_args=[])  # type: ignore[call-arg]
    app = create_app(settings, registry=CollectorRegistry())
    runner = web.AppRunner(app, **runner_options(settings))
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        await _until(lambda: app[GATE].open == 1)
        writer.close()
        await _until(lambda: app[GATE].open == 0)
        assert rejected(app, "malformed") == 1
    finally:
        await runner.cleanup()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.parametrize("path", ["/nowhere", "/notify/"])
async def test_unread_broken_gzip_closes_the_connection_openly(make_client, path):
    # else aiohttp reads the body away after the answer, fails on it and drops the
    # connection silently: the client's next request on it would fail
    client, _ = await make_client(token="t")
    response = await client.post(path, data=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert response.status in (401, 404)
    assert response.headers.get("Connection") == "close"
    plain = await client.post(path, data=b"{}")
    assert "close" not in plain.headers.get("Connection", "")
