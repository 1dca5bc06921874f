"""Attacks on the shared call state (`--state-backend redis://...`, #9 items 2 and 7), by an
outsider: real redis-server and real exporter processes on loopback.

A test marked xfail(strict=True) reproduces a failure found (it passes once fixed, and the
strict mark then asks for the mark to go); the others are what held. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
import time

import pytest

from mtt_exporter.model import normalise_conf_id
from mtt_exporter.simulate import diff, generate
from mtt_exporter.state import masked_url

from .conftest import need_binary
from .delay_proxy import DelayProxy
from .process import ROOT, Exporter, free_port
from .redis_server import RedisServer
from .test_replicas import scrape, send, traffic, value

TTL, GRACE = 3.0, 1.0


def _flags(url: str) -> list[str]:
    return ["--state-backend", url, "--call-end-grace", str(GRACE), "--call-ttl", str(TTL)]


async def _quiet(replicas: list[Exporter], timeout: float) -> str:
    """The summed exposition once no call is in progress and the counts stand still for
    1.5 s; AssertionError if that takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = await scrape(replicas)
        if value(before, "mtt_calls_in_progress") == 0:
            await asyncio.sleep(1.5)
            after = await scrape(replicas)
            if all(value(after, n) == value(before, n) for n in ("mtt_calls_total", "mtt_call_legs_total")):
                return after
        await asyncio.sleep(0.25)
    raise AssertionError(f"calls still undecided after {timeout} s: "
                         f"{value(await scrape(replicas), 'mtt_calls_in_progress'):g} in progress")


def _conf_id(delivery) -> str:
    return normalise_conf_id(delivery.body["h323_conf_id"])


def _stop(replicas: list[Exporter]) -> None:
    for replica in replicas:
        if replica.process is not None and replica.process.poll() is None:
            replica.stop()


# --- secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    pytest.param("redis://127.0.0.1:6379/0?password=Hunter2Secret", id="redis-query-password"),
    pytest.param("redis+sentinel://127.0.0.1:26379/mymaster/0?sentinel_password=Hunter2Secret", id="sentinel-password"),
    pytest.param("rediss://127.0.0.1:6379/0?ssl_keyfile_password=Hunter2Secret", id="tls-key-password"),
    pytest.param("redis://127.0.0.1:6379/0?db=1&some_future_token=Hunter2Secret", id="unknown-parameter"),
    pytest.param("unix:///run/redis.sock?db=0&password=Hunter2Secret", id="unix-socket"),
    pytest.param("redis://Hunter2Secret@127.0.0.1:6379/0", id="userinfo-without-colon"),
])
def test_masked_url_hides_every_password(url):
    assert "Hunter2Secret" not in masked_url(url)


@pytest.mark.parametrize("url, shown", [
    pytest.param("redis://127.0.0.1:6379/0?db=2&password=x", "redis://127.0.0.1:6379/0?db=2&password=***", id="safe-kept"),
    pytest.param("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1", id="unix-kept"),
    pytest.param("redis://127.0.0.1:6379", "redis://127.0.0.1:6379", id="plain"),
])
def test_masked_url_keeps_what_is_safe(url, shown):
    assert masked_url(url) == shown


@pytest.mark.parametrize("url", [
    pytest.param("redis://:Hunter2Secret@127.0.0.1:6379/0", id="password-only"),
    pytest.param("redis://user:Hunter2Secret@127.0.0.1:6379/0", id="user-password"),
    pytest.param("redis+sentinel://:Hunter2Secret@127.0.0.1:26379/mymaster/0", id="sentinel-netloc"),
])
def test_masked_url_hides_the_netloc_password(url):
    assert "Hunter2Secret" not in masked_url(url)


def test_a_query_string_password_never_reaches_the_log(tmp_path):
    secret = "Hunter2Secret"
    server = RedisServer(need_binary("redis-server"), tmp_path, "--requirepass", secret)
    server.process = None
    import subprocess
    server.process = subprocess.Popen(
        [server.binary, "--port", str(server.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--requirepass", secret], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=server.port, password=secret, socket_timeout=2) as c:
                    c.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        exporter = Exporter(tmp_path, *_flags(f"redis://127.0.0.1:{server.port}/0?password={secret}")).start()
        try:
            status, body = exporter.request("GET", "/-/ready")
            assert status == 200 and b'"ready"' in body  # the password was used
        finally:
            assert exporter.stop() == 0
        assert secret not in exporter.log()
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)


def test_an_unreachable_backend_with_a_netloc_password_is_logged_masked(tmp_path):
    secret = "Hunter2Secret"
    exporter = Exporter(tmp_path, *_flags(f"redis://:{secret}@127.0.0.1:{free_port()}/0")).start()
    try:
        assert exporter.request("GET", "/-/ready")[1].count(b"degraded") == 1
    finally:
        assert exporter.stop() == 0
    assert "unreachable" in exporter.log() and secret not in exporter.log()


# --- hostile data planted in Redis by another client ---------------------------------------


async def test_a_planted_non_utf8_due_member_stops_no_decision(redis_server, tmp_path):
    with redis_server.client() as client:
        client.zadd("{mtt-3}:due", {b"\xff\xfe-planted": 0})
    replicas = [Exporter(tmp_path, *_flags(redis_server.url)).start() for _ in range(2)]
    try:
        workload = generate(traffic(40, seed=21))
        baseline = await scrape(replicas)
        assert await send(replicas, workload.deliveries, workload.truth, seed=21) == {}
        exposition = await _quiet(replicas, timeout=20)
        assert diff(workload.truth, exposition, baseline) == []
    finally:
        _stop(replicas)
    for replica in replicas:
        assert "Traceback" not in replica.log()


async def test_a_planted_non_integer_open_counter_is_survived(redis_server, tmp_path):
    exporter = Exporter(tmp_path, *_flags(redis_server.url)).start()
    try:
        with redis_server.client() as client:
            for shard in range(16):
                client.set(f"{{mtt-{shard}}}:open", "not-a-number")
        workload = generate(traffic(20, seed=22))
        assert await send([exporter], workload.deliveries, workload.truth, seed=22) == {}
        await asyncio.sleep(3)  # three ticks
        with redis_server.client() as client:
            client.delete(*(f"{{mtt-{shard}}}:open" for shard in range(16)))  # the damage repaired
        await asyncio.sleep(3)  # three probes: Redis answers again
        status, body = exporter.request("GET", "/-/ready")
        assert status == 200 and b'"ready"' in body, body
    finally:
        _stop([exporter])
    assert exporter.log().count("Traceback") == 0


async def test_a_wrong_type_at_one_call_key_degrades_only_that_call(redis_server, tmp_path):
    exporter = Exporter(tmp_path, *_flags(redis_server.url)).start()
    try:
        from mtt_exporter.state import SHARD_KEYS, SharedState
        workload = generate(traffic(30, seed=23, duplicate_pct=0))
        victim = _conf_id(next(d for d in workload.deliveries if d.kind == "event"))
        assert len(SHARD_KEYS) == 16  # the layout this test knows
        key = SharedState.shard(victim).tag + ":call:" + victim
        with redis_server.client() as client:
            client.lpush(key, "planted")
        assert await send([exporter], workload.deliveries, workload.truth, seed=23) == {}
        exposition = exporter.metrics()
        assert value(exposition, "mtt_state_backend_up") == 1
        assert value(exposition, "mtt_state_backend_fallbacks_total") <= sum(
            1 for d in workload.deliveries if d.kind == "event" and _conf_id(d) == victim)
    finally:
        _stop([exporter])


async def test_a_planted_damaged_call_record_is_replaced(redis_server, tmp_path):
    """Invalid JSON, a version the exporter would not write, an enormous record: replaced
    by the next write, never a 5xx."""
    exporter = Exporter(tmp_path, *_flags(redis_server.url)).start()
    try:
        workload = generate(traffic(30, seed=24, duplicate_pct=0))
        from mtt_exporter.state import SharedState
        ids = sorted({_conf_id(d) for d in workload.deliveries if d.kind == "event"})
        garbage = [b"{not json", b'{"legs": [], "seen": [], "version": 999}', b'{"legs": [' + b"[]," * 200_000 + b"[]]}",
                   b'"\xff\xfe"', b"[" * 100_000]
        with redis_server.client() as client:
            for i, conf_id in enumerate(ids[:len(garbage)]):
                client.hset(SharedState.shard(conf_id).tag + ":call:" + conf_id, mapping={"v": b"planted", "d": garbage[i]})
        baseline = await scrape([exporter])
        assert await send([exporter], workload.deliveries, workload.truth, seed=24) == {}
        exposition = await _quiet([exporter], timeout=20)
        assert value(exposition, "mtt_state_backend_fallbacks_total") == 0
        assert [p for p in diff(workload.truth, exposition, baseline) if "notifications" in p] == []
    finally:
        _stop([exporter])
    assert "Traceback" not in exporter.log()


# --- Redis misbehaving mid-traffic ------------------------------------------------------------


async def test_script_flush_mid_traffic_costs_nothing(redis_server, tmp_path):
    replicas = [Exporter(tmp_path, *_flags(redis_server.url)).start() for _ in range(2)]
    try:
        workload = generate(traffic(200, seed=25))
        half = len(workload.deliveries) // 2
        baseline = await scrape(replicas)
        wrong = await send(replicas, workload.deliveries[:half], workload.truth, seed=25, both=0.05)
        with redis_server.client() as client:
            client.script_flush()
        wrong += await send(replicas, workload.deliveries[half:], workload.truth, seed=26, both=0.05)
        assert wrong == {}
        exposition = await _quiet(replicas, timeout=25)
        assert value(exposition, "mtt_state_backend_fallbacks_total") == 0
        assert diff(workload.truth, exposition, baseline) == []
    finally:
        _stop(replicas)
    for replica in replicas:
        assert "Traceback" not in replica.log()


async def test_client_kill_mid_traffic_no_5xx_and_recovers(redis_server, tmp_path):
    replicas = [Exporter(tmp_path, *_flags(redis_server.url)).start() for _ in range(2)]
    try:
        workload = generate(traffic(200, seed=27))
        half = len(workload.deliveries) // 2
        wrong = await send(replicas, workload.deliveries[:half], workload.truth, seed=27)
        with redis_server.client() as client:
            for entry in client.client_list():
                if entry.get("name") == "mtt-exporter":
                    client.client_kill_filter(_id=entry["id"])
        wrong += await send(replicas, workload.deliveries[half:], workload.truth, seed=28)
        assert wrong == {}  # no 5xx, no 429
        deadline = time.monotonic() + 10
        while any(b'"ready"' not in r.request("GET", "/-/ready")[1] for r in replicas):
            assert time.monotonic() < deadline, "not ready again 10 s after CLIENT KILL"
            await asyncio.sleep(0.25)
        await _quiet(replicas, timeout=25)
    finally:
        _stop(replicas)
    for replica in replicas:
        assert "Traceback" not in replica.log()


# --- a Redis whose latency varies wildly ---------------------------------------------------


class _JitterProxy(DelayProxy):
    """Each chunk passed on after a random 0..`most` s (in order), in a thread of its own."""

    def __init__(self, target: int, most: float, seed: int) -> None:
        super().__init__(target, 0.0)
        self.most, self.rnd = most, random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> _JitterProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.__aenter__(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.__aexit__(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _pump(self, source, sink) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        while data := await source.read(65536):
            last = max(last, loop.time() + self.rnd.uniform(0, self.most))
            await asyncio.sleep(last - loop.time())
            sink.write(data)
            await sink.drain()
        sink.close()


async def test_jitter_0_to_2_s_never_refuses_and_loses_no_notification(redis_server, tmp_path):
    """Round trips of 0-2 s: some past the 0.9 s bound (fallback), none refused or lost."""
    from .test_replicas import PER_NOTIFICATION
    with _JitterProxy(redis_server.port, 2.0, seed=29) as proxy:
        replicas = [Exporter(tmp_path, *_flags(f"redis://127.0.0.1:{proxy.port}/0"), "--call-end-grace", "3",
                             "--call-ttl", "8").start(timeout=60) for _ in range(2)]
        try:
            workload = generate(traffic(150, seed=29, duplicate_pct=0))
            baseline = await scrape(replicas)
            started = time.monotonic()
            assert await send(replicas, workload.deliveries, workload.truth, seed=29, window=32) == {}
            elapsed = time.monotonic() - started
            exposition = await _quiet(replicas, timeout=60)
            problems = diff(workload.truth, exposition, baseline)
            assert [p for p in problems if p.startswith(PER_NOTIFICATION)] == []
            assert value(exposition, "mtt_state_backend_queued") == 0
            print(f"\njitter 0-2 s: {len(workload.deliveries)} posted in {elapsed:.1f} s, fallbacks "
                  f"{value(exposition, 'mtt_state_backend_fallbacks_total'):g}, {len(problems)} call-level series off")
        finally:
            _stop(replicas)
    for replica in replicas:
        assert "Traceback" not in replica.log()
        assert replica.log().count("\n") < 200  # no log flood


async def test_the_queue_stays_bounded_under_sustained_overload(redis_server, tmp_path):
    """Redis 0.45 s away, batches of new calls posted 32 at once for up to 8 s: the queue
    stops near 2 x MAX_QUEUED (requests then wait), nothing refused with 429 or 5xx."""
    import aiohttp
    import json as _json
    from mtt_exporter.state import MAX_QUEUED
    proxy = subprocess.Popen([sys.executable, "-m", "tests.delay_proxy", "--target", str(redis_server.port), "--rtt", "0.45"],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        exporter = Exporter(tmp_path, *_flags(f"redis://127.0.0.1:{int(proxy.stdout.readline())}/0"),
                            "--call-end-grace", "3", "--call-ttl", "30").start(timeout=60)
        try:
            events = [d.body for d in generate(traffic(6000, seed=30, duplicate_pct=0)).deliveries if d.kind == "event"]
            batches = [events[i:i + 100] for i in range(0, len(events), 100)]
            statuses: Counter = Counter()
            most = 0.0
            deadline = time.monotonic() + 8
            async with aiohttp.ClientSession() as session:
                gate = asyncio.Semaphore(32)

                async def post(batch) -> None:
                    async with gate:
                        if time.monotonic() > deadline:
                            return
                        async with session.post(exporter.base + "/notify", data=_json.dumps(batch),
                                                headers={"Content-Type": "application/json"}) as response:
                            statuses[response.status // 100 * 100 if response.status != 429 else 429] += 1

                async def watch() -> None:
                    nonlocal most
                    while time.monotonic() < deadline + 2:
                        async with session.get(exporter.base + "/metrics") as response:
                            most = max(most, value(await response.text(), "mtt_state_backend_queued"))
                        await asyncio.sleep(0.2)

                watcher = asyncio.create_task(watch())
                await asyncio.gather(*(post(b) for b in batches))
                await watcher
            print(f"\noverload at 0.45 s: statuses {dict(statuses)}, queued at most {most:g}")
            assert 429 not in statuses and 500 not in statuses
            assert most <= 2 * MAX_QUEUED + 32 * 100
        finally:
            assert exporter.stop() == 0
        assert "Traceback" not in exporter.log()
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        proxy.stdout.close()


async def test_a_failed_cas_script_leaves_no_half_written_call(redis_server, tmp_path):
    from mtt_exporter.simulate import SimConfig
    exporter = Exporter(tmp_path, *_flags(redis_server.url)).start()
    try:
        workload = generate(SimConfig(calls=1, seed=31, duplicate_pct=0, reorder_pct=0, malformed_pct=0,
                                      unknown_event_pct=0))
        with redis_server.client() as client:
            for shard in range(16):
                client.set(f"{{mtt-{shard}}}:open", "damaged")
        baseline = await scrape([exporter])
        assert await send([exporter], workload.deliveries, workload.truth, seed=31, window=1) == {}
        await asyncio.sleep(1.5)
        with redis_server.client() as client:
            client.delete(*(f"{{mtt-{shard}}}:open" for shard in range(16)))  # repaired
        await _quiet([exporter], timeout=25)
        await asyncio.sleep(TTL + 2)  # the copy in Redis is due at its TTL
        exposition = await scrape([exporter])
        with redis_server.client() as client:
            opened = sum(int(client.get(f"{{mtt-{shard}}}:open") or 0) for shard in range(16))
        assert value(exposition, "mtt_calls_total") - value(baseline, "mtt_calls_total") == workload.truth.calls == 1
        assert opened == 0
    finally:
        _stop([exporter])


# --- hostile notifications -------------------------------------------------------------------


def _hostile_batch(conf_id: str, items: int = 1000) -> bytes:
    """`items` originate events of one call, each to a number of its own: a leg each, so the
    call record grows with every one, and each is a compare-and-set of its own."""
    import copy
    import json as _json
    base = next(d.body for d in generate(traffic(3, seed=1)).deliveries
                if d.kind == "event" and d.body["event"]["type"] == "o")
    batch = []
    for i in range(items):
        body, number = copy.deepcopy(base), f"7{i:014d}"
        body["h323_conf_id"], body["redirect_number"] = conf_id, number
        body["data"] = body["data"].replace(body["data"].split("_")[1], number)
        batch.append(body)
    return _json.dumps(batch).encode()


async def test_one_hostile_call_does_not_hold_back_every_decision(redis_server, tmp_path):
    from mtt_exporter.simulate import SimConfig
    proxy = subprocess.Popen([sys.executable, "-m", "tests.delay_proxy", "--target", str(redis_server.port), "--rtt", "0.05"],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        exporter = Exporter(tmp_path, *_flags(f"redis://127.0.0.1:{int(proxy.stdout.readline())}/0")).start()
        try:
            status, _ = exporter.request("POST", "/notify", _hostile_batch("0" * 31 + "1"),
                                         {"Content-Type": "application/json"})
            assert status == 200
            honest = generate(SimConfig(calls=1, seed=32, duplicate_pct=0, reorder_pct=0, malformed_pct=0,
                                        unknown_event_pct=0))
            before = await scrape([exporter])
            first = next(d for d in honest.deliveries if d.kind == "event")  # left to its TTL
            assert await send([exporter], [first], honest.truth, seed=32, window=1) == {}
            deadline = time.monotonic() + GRACE + TTL + 4
            while value(await scrape([exporter]), "mtt_calls_total") == value(before, "mtt_calls_total"):
                assert time.monotonic() < deadline, (
                    f"an honest call not expired {GRACE + TTL + 4:g} s after its one notification; queued: "
                    f"{value(await scrape([exporter]), 'mtt_state_backend_queued'):g}")
                await asyncio.sleep(0.25)
        finally:
            exporter.stop(signal.SIGKILL)  # the hostile queue would take its 5 s at shutdown
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        proxy.stdout.close()


async def test_a_hostile_call_record_stays_bounded(redis_server, tmp_path):
    """1,000 legs in one call (the most notifications a call may have): the record in Redis
    stays under 200 kB and the 1,001st notification is refused with a 4xx, not a 5xx."""
    exporter = Exporter(tmp_path, *_flags(redis_server.url), "--call-ttl", "60").start()
    try:
        conf_id = "0" * 31 + "2"
        assert exporter.request("POST", "/notify", _hostile_batch(conf_id), {"Content-Type": "application/json"})[0] == 200
        deadline = time.monotonic() + 30
        while value(exporter.metrics(), "mtt_state_backend_queued") > 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.25)
        status, _ = exporter.request("POST", "/notify", _hostile_batch(conf_id, 1001)[:-1] + b"]",
                                     {"Content-Type": "application/json"})
        assert 400 <= status < 500
        from mtt_exporter.state import SharedState
        with redis_server.client() as client:
            size = client.memory_usage(SharedState.shard(conf_id).tag + ":call:" + conf_id)
        print(f"\nhostile call record: {size} bytes in Redis")
        assert size < 200_000
    finally:
        _stop([exporter])
    assert "Traceback" not in exporter.log()


@pytest.mark.xfail(strict=False, reason="open finding: under load, one call of the 200 sometimes stays in progress "
                   "(the summed gauge at 1 after 30 s with a 3 s TTL) while Redis refuses writes with OOM; "
                   "seen 2 runs in 4 on a loaded machine, not yet explained (docs/reliability.md)")
async def test_redis_out_of_memory_no_5xx_no_loss_no_log_flood(tmp_path):
    """maxmemory reached (noeviction): every write refused with OOM. Answered 200, every
    notification counted, at most a few log lines a second."""
    from .test_replicas import PER_NOTIFICATION
    server = RedisServer(need_binary("redis-server"), tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    server.start()
    try:
        replicas = [Exporter(tmp_path, *_flags(server.url)).start() for _ in range(2)]
        try:
            with server.client() as client:
                for i in range(200):  # filled until writes are refused
                    try:
                        client.set(f"junk:{i}", b"x" * 100_000)
                    except Exception:  # noqa: BLE001 - OOM: full
                        break
            workload = generate(traffic(200, seed=33, duplicate_pct=0))
            baseline = await scrape(replicas)
            started = time.monotonic()
            assert await send(replicas, workload.deliveries, workload.truth, seed=33) == {}
            exposition = await _quiet(replicas, timeout=30)
            elapsed = time.monotonic() - started
            problems = diff(workload.truth, exposition, baseline)
            assert [p for p in problems if p.startswith(PER_NOTIFICATION)] == []
            assert value(exposition, "mtt_state_backend_errors_total") > 0
            print(f"\nOOM: fallbacks {value(exposition, 'mtt_state_backend_fallbacks_total'):g}, "
                  f"{len(problems)} call-level series off, log lines {[r.log().count(chr(10)) for r in replicas]} "
                  f"in {elapsed:.0f} s")
        finally:
            _stop(replicas)
        for replica in replicas:
            assert "Traceback" not in replica.log()
            assert replica.log().count("\n") < 10 + 4 * elapsed
    finally:
        server.stop()


async def test_sigterm_during_a_backlog_exits_in_time(redis_server, tmp_path):
    """1,000 notifications of one call queued behind a 50 ms Redis at SIGTERM: the 5 s flush,
    then local memory; exit 0 well within the 60 s a supervisor grants."""
    proxy = subprocess.Popen([sys.executable, "-m", "tests.delay_proxy", "--target", str(redis_server.port), "--rtt", "0.05"],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        exporter = Exporter(tmp_path, *_flags(f"redis://127.0.0.1:{int(proxy.stdout.readline())}/0")).start()
        assert exporter.request("POST", "/notify", _hostile_batch("0" * 31 + "3"),
                                {"Content-Type": "application/json"})[0] == 200
        started = time.monotonic()
        assert exporter.stop(timeout=30) == 0
        took = time.monotonic() - started
        print(f"\nSIGTERM with ~1,000 queued: exit in {took:.1f} s")
        assert took < 15
        assert "correlated locally" in exporter.log() and "Traceback" not in exporter.log()
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        proxy.stdout.close()


@pytest.mark.xfail(strict=False, reason="(not strict: timing) the writes are now resolved by their tokens, but a "
                   "claim round trip that times out still takes the replica to local memory and splits calls; "
                   "retrying reads and claims once broke the OOM test and was left out for lack of time")
async def test_a_replica_frozen_with_queued_work_costs_nothing(redis_server, tmp_path):
    """Replica A (Redis 50 ms away) frozen by SIGSTOP for 2 s right after being sent the
    first half of the traffic, the second half sent to B meanwhile, then A resumed: Redis
    never failed, so the sum is the truth."""
    proxy = subprocess.Popen([sys.executable, "-m", "tests.delay_proxy", "--target", str(redis_server.port), "--rtt", "0.05"],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        a = Exporter(tmp_path, "--state-backend", f"redis://127.0.0.1:{int(proxy.stdout.readline())}/0",
                     "--call-end-grace", "3", "--call-ttl", "8").start()
        b = Exporter(tmp_path, "--state-backend", redis_server.url, "--call-end-grace", "3", "--call-ttl", "8").start()
        try:
            workload = generate(traffic(150, seed=34, duplicate_pct=0))
            half = len(workload.deliveries) // 2
            baseline = await scrape([a, b])
            wrong = await send([a], workload.deliveries[:half], workload.truth, seed=34, window=64)
            a.process.send_signal(signal.SIGSTOP)
            try:
                wrong += await send([b], workload.deliveries[half:], workload.truth, seed=35)
                await asyncio.sleep(2)
            finally:
                a.process.send_signal(signal.SIGCONT)
            assert wrong == {}
            exposition = await _quiet([a, b], timeout=40)
            problems = diff(workload.truth, exposition, baseline)
            print(f"\nSIGSTOP 2 s: fallbacks {value(exposition, 'mtt_state_backend_fallbacks_total'):g}, "
                  f"{len(problems)} series off: {problems[:3]}")
            assert problems == []
        finally:
            _stop([a, b])
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        proxy.stdout.close()
