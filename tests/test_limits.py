"""Bounded resources: concurrency, slow clients, calls that never end, calls that never stop."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc

import aiohttp

from exporter.correlator import MAX_NOTIFICATIONS_PER_CALL
from exporter.server import GATE

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


async def test_concurrency_limit_answers_429_and_counts_overloaded(make_client, seed_call):
    client, app = await make_client(max_concurrent_requests=2)
    body = json.dumps(seed_call[2]).encode()
    slow = [await _slow_request(client, body, 10) for _ in range(2)]
    await _until(lambda: app[GATE].busy == 2)
    refused = await client.post("/notify", json=seed_call[3])
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    assert (await refused.json())["reason"] == "overloaded"
    assert rejected(app, "overloaded") == 1
    for reader, writer in slow:  # the held requests still complete
        writer.write(body[10:])
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
    await _until(lambda: app[GATE].busy == 0)
    assert (await client.post("/notify", json=seed_call[3])).status == 200
    assert value(app, "mtt_call_attempts_total") == 1 and value(app, "mtt_call_answers_total") == 1


async def test_slow_body_times_out_with_408(make_client, seed_call):
    client, app = await make_client(read_timeout=0.2)
    reader, writer = await _slow_request(client, json.dumps(seed_call[2]).encode(), 10)
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408")
    assert rejected(app, "timeout") == 1
    assert app[GATE].busy == 0
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
