"""Shared call state on a real redis-server: the correlator's rules, applied by two replicas.

Every scenario of test_correlator again, each notification to the other replica: the call
goes through Redis (as JSON) between any two notifications and gives the same facts."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections import Counter

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from mtt_exporter.correlator import (
    Applied,
    CallStarted,
    Correlator,
    Duration,
    Evicted,
    EvictionReason,
    Phase,
    RingOutcome,
)
from mtt_exporter import state as state_module
from mtt_exporter.metrics import Metrics
from mtt_exporter.model import EventType, Side
from mtt_exporter.server import METRICS, SHARED
from mtt_exporter.settings import Settings
from mtt_exporter.state import _CLAIM, LEASE_SECONDS, SHARD_KEYS, SentinelURL, SharedState, masked_url

from .conftest import need_binary
from .delay_proxy import DelayProxy
from .process import free_port
from .redis_server import RedisClusterNodes, RedisSentinel
from .test_correlator import B1, NOW, SCENARIOS, SEED, SEED_DURATIONS, calls, check_scenario, durations, legs, note

GRACE, TTL = 15.0, 3600.0


@pytest.fixture
async def pair(redis_server):
    """Two replicas' shared states on one Redis, each with its own local fallback."""
    states = [SharedState(redis_server.url, Correlator(ttl=TTL, grace=GRACE, max_calls=1000)) for _ in range(2)]
    for state in states:
        await state.start()
        assert state.up
    yield states
    for state in states:
        await state.close()


async def replay(pair, steps, until=None):
    """Like test_correlator.run, each notification to the other replica, both ticking."""
    facts, duplicates = [], 0
    for i, (offset, n) in enumerate(steps):
        for state in pair:
            facts += await state.expire(NOW + offset)
        duplicate, more = await pair[i % 2].apply(n, NOW + offset)
        duplicates += duplicate
        facts += more
    if until is not None:
        for state in pair:
            facts += await state.expire(NOW + until)
    return facts, duplicates


@pytest.mark.parametrize("case", [pytest.param(v, id=k) for k, v in SCENARIOS.items()])
async def test_scenario_on_two_replicas(pair, case):
    facts, duplicates = await replay(pair, case["steps"], until=case.get("until", case["steps"][-1][0] + 60))
    check_scenario(case, facts, duplicates)
    assert sum(isinstance(f, CallStarted) for f in facts) == 1
    await pair[0]._count()  # as the tick does
    assert pair[0].stats.in_progress == case.get("in_progress", 0)
    assert all(state.stats.fallbacks == 0 for state in pair)


async def test_concurrent_updates_of_one_call_are_both_applied(pair):
    a, b = pair
    computed, go = asyncio.Event(), asyncio.Event()
    real_round_trip = a._pipe._direct_round_trip

    async def paused_round_trip(connection, commands):  # a computes its write, b writes, then a's goes out
        if not computed.is_set():
            computed.set()
            await go.wait()
        return await real_round_trip(connection, commands)

    a._pipe._direct_round_trip = paused_round_trip
    first = asyncio.create_task(a.apply(SEED[2][1], NOW))  # o
    await computed.wait()
    second = await b.apply(SEED[3][1], NOW)  # s, written while a's write of o is on its way
    go.set()
    facts = (await first)[1] + second[1]
    assert (a.stats.retries, b.stats.retries) == (1, 0)
    assert durations(facts) == [("ring", "answered", 11.0)]
    assert sum(isinstance(f, CallStarted) for f in facts) == 1


async def test_a_replica_writes_over_its_own_last_write_without_reading(pair):
    a, b = pair
    for step in SEED[:3]:  # sp, ep, o: the first guessed absent, the next as a wrote them
        await a.apply(step[1], NOW)
    assert a.stats.retries == 0
    await b.apply(SEED[3][1], NOW)  # s: b guesses absent, is told the call, writes
    assert b.stats.retries == 1
    facts = (await a.apply(SEED[7][1], NOW))[1]  # h: a's guess is stale now
    assert a.stats.retries == 1
    assert ("answered", "", 89.0) in durations(facts) and calls(facts) == {"answered": 1}


async def test_duplicate_seen_by_the_other_replica(pair):
    a, b = pair
    assert (await a.apply(SEED[7][1], NOW))[0] is False
    assert await b.apply(SEED[7][1], NOW + 1) == (True, [])


async def test_due_decisions_are_made_once_by_racing_replicas(pair):
    a, b = pair
    for i in range(150):  # unanswered after the grace, and never hung up (expired at the TTL)
        await pair[i % 2].apply(note("o", 0, B1, conf=f"U{i}"), NOW)
        await pair[i % 2].apply(note("h", 3, B1, side="B", cause=17, conf=f"U{i}"), NOW)
        await pair[i % 2].apply(note("o", 0, B1, conf=f"X{i}"), NOW)
    decided = sum(await asyncio.gather(a.expire(NOW + GRACE), b.expire(NOW + GRACE)), [])
    assert calls(decided) == {"unanswered": 150} and legs(decided) == {"busy": 150}
    expired = sum(await asyncio.gather(a.expire(NOW + TTL), b.expire(NOW + TTL)), [])
    assert calls(expired) == {"expired": 150} and legs(expired) == {"expired": 150}
    assert Counter(f.reason for f in expired if isinstance(f, Evicted)) == {EvictionReason.TTL: 150}
    assert await a.redis.keys("*") == []  # calls deleted at the TTL, indexes empty


async def test_lease_of_a_replica_that_died_is_taken_over(pair):
    a, b = pair
    await a.apply(note("o", 0, B1), NOW)
    await a.apply(note("h", 3, B1, side="B", cause=17), NOW)
    # a claims the call as its tick would, then dies before deciding it
    shard = a.shard("C1")
    claim = a.redis.register_script(_CLAIM)
    assert await claim([shard.due, shard.leased], [NOW + GRACE, NOW + GRACE + LEASE_SECONDS, 10]) == [b"C1"]
    assert await b.expire(NOW + GRACE + 1) == []
    assert calls(await b.expire(NOW + GRACE + LEASE_SECONDS)) == {"unanswered": 1}


async def test_capacity_evicts_the_call_seen_longest_ago(redis_server):
    state = SharedState(redis_server.url, Correlator(max_calls=2, grace=GRACE))
    await state.start()
    facts = []
    for i, conf in enumerate(["A", "B", "C"]):
        facts += (await state.apply(note("o", 0, B1, conf=conf), NOW + i))[1]
    assert [f for f in facts if isinstance(f, Evicted)] == [Evicted(EvictionReason.CAPACITY)]
    assert legs(facts) == {"expired": 1} and calls(facts) == {"expired": 1}
    assert {m for shard in SHARD_KEYS for m in await state.redis.zrange(shard.seen, 0, -1)} == {b"B", b"C"}
    assert await state.redis.exists(state.key("A")) == 0
    await state.close()


async def test_unreachable_redis_falls_back_and_recovers(pair, redis_server):
    a, _ = pair
    redis_server.stop()
    duplicate, facts = await a.apply(note("o", 0, B1, conf="L"), NOW)
    assert isinstance(facts[0], CallStarted)  # correlated in local memory
    assert (a.up, a.stats.errors["apply"], a.stats.fallbacks, len(a.local)) == (False, 1, 1, 1)
    assert (await a.apply(note("s", 5, B1, conf="L"), NOW + 1))[1] == [
        Applied(EventType.ANSWER, Side.UNKNOWN, None), Duration(Phase.RING, 5.0, RingOutcome.ANSWERED, "L")]
    assert a.stats.errors["apply"] == 1  # no new attempt while down
    await a.expire(NOW + 2)
    assert (a.up, a.stats.errors["ping"]) == (False, 1)

    redis_server.start()
    await a.expire(NOW + 3)
    assert a.up
    await a.apply(note("h", 50, B1, side="B", cause=16, conf="L"), NOW + 4)  # its call is local: stays there
    await a.apply(note("o", 0, B1, conf="R"), NOW + 4)  # a new call: in Redis
    assert (a.stats.fallbacks, len(a.local)) == (3, 1)
    assert await a.redis.exists(a.key("R"), a.key("L")) == 1


async def test_unreachable_at_start_is_degraded_not_fatal():
    state = SharedState(f"redis://127.0.0.1:{free_port()}/0", Correlator())
    await state.start()
    assert not state.up
    assert (await state.apply(note("o", 0, B1), NOW))[1] == [CallStarted(), Applied(EventType.ORIGINATE, Side.UNKNOWN, None)]
    await state.close()


async def test_ready_and_metrics_report_the_backend(make_client, redis_server, promtool):
    client, app = await make_client(state_backend=redis_server.url)
    assert await (await client.get("/-/ready")).json() == {"status": "ready"}
    redis_server.stop()
    response = await client.post("/notify", json={"h323_conf_id": "X", "event": {"type": "o"}, "date_time": 1_767_225_600})
    assert (response.status, await response.json()) == (200, {"status": "ok", "accepted": 1, "duplicates": 0, "queued": 1})
    await app[SHARED].flush()  # answered once queued: now it has been tried, and fell back
    response = await client.get("/-/ready")
    assert (response.status, await response.json()) == (200, {"status": "degraded", "state_backend": "unreachable"})
    registry = app[METRICS].registry
    assert registry.get_sample_value("mtt_state_backend_up") == 0
    assert registry.get_sample_value("mtt_state_backend_errors_total", {"operation": "apply"}) == 1
    assert registry.get_sample_value("mtt_state_backend_fallbacks_total") == 1
    assert registry.get_sample_value("mtt_call_attempts_total", {"line": "other"}) == 1
    result = subprocess.run([promtool, "check", "metrics"], input=generate_latest(registry), capture_output=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout.decode() + result.stderr.decode()


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        pytest.param("redis://h:6379/0", True, id="redis"),
        pytest.param("rediss://:pw@h:6380/1", True, id="TLS with password"),
        pytest.param("unix:///run/redis.sock", True, id="unix socket"),
        pytest.param("redis+cluster://h:7000", True, id="cluster"),
        pytest.param("redis+sentinel://:pw@h1:26379,[::1]:26380,h3/mymaster/2", True, id="sentinels"),
        pytest.param("http://h:6379", False, id="wrong scheme"),
        pytest.param("h:6379", False, id="no scheme"),
        pytest.param("redis://h:port/0", False, id="port not a number"),
        pytest.param("redis:///0", False, id="no host"),
        pytest.param("redis+sentinel://h:26379", False, id="sentinel without service"),
        pytest.param("redis+sentinel://h:x/mymaster", False, id="sentinel port not a number"),
    ],
)
def test_state_backend_setting(url, ok):
    if ok:
        assert Settings(_cli_parse_args=["--state-backend", url]).state_backend.get_secret_value() == url  # type: ignore[call-arg]
        assert "pw" not in repr(Settings(_cli_parse_args=["--state-backend", url]))  # type: ignore[call-arg]
    else:
        with pytest.raises(ValueError):
            Settings(_cli_parse_args=["--state-backend", url])  # type: ignore[call-arg]


def test_masked_url():
    assert masked_url("rediss://user:s3cret@host:6380/0") == "rediss://user:***@host:6380/0"
    assert masked_url("redis://:s3cret@host/0") == "redis://:***@host/0"
    assert masked_url("redis://host:6379/0") == "redis://host:6379/0"


async def test_damaged_call_in_redis_is_replaced(pair):
    a, _ = pair
    await a.redis.hset(a.key("C1"), mapping={"v": "x", "d": '{"legs": 1}'})
    duplicate, facts = await a.apply(note("o", 0, B1), NOW)
    assert facts == [CallStarted(), Applied(EventType.ORIGINATE, Side.UNKNOWN, None)] and not duplicate
    assert json.loads(await a.redis.hget(a.key("C1"), "d"))["legs"] == [[B1, 0.0, None, None, None, None, "unknown", False]]


@pytest.fixture
def redis_cluster(tmp_path):
    nodes = RedisClusterNodes(need_binary("redis-server"), tmp_path)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


async def test_two_replicas_on_a_redis_cluster(redis_cluster):
    states = [SharedState(redis_cluster.url, Correlator(ttl=TTL, grace=GRACE)) for _ in range(2)]
    for state in states:
        await state.start()
        assert state.up
    facts = (await replay(states, SEED))[0]
    for i in range(40):
        facts += (await states[i % 2].apply(note("o", 0, B1, conf=f"K{i}"), NOW))[1]
        facts += (await states[(i + 1) % 2].apply(note("h", 3, B1, side="B", cause=17, conf=f"K{i}"), NOW))[1]
    facts += sum(await asyncio.gather(*(state.expire(NOW + GRACE) for state in states)), [])
    assert durations(facts)[:1] == [("answered", "", 89.0)]
    assert calls(facts) == {"answered": 1, "unanswered": 40}
    holding = []
    for port in redis_cluster.ports:
        with redis.Redis(port=port) as node:
            holding.append(node.dbsize())
    assert sum(1 for keys in holding if keys) >= 2, holding  # the shards spread over the nodes
    for state in states:
        await state.close()


async def test_sentinel_failover_costs_only_the_notifications_in_between(tmp_path):
    sentinel = RedisSentinel(need_binary("redis-server"), tmp_path)
    try:
        sentinel.start()
        state = SharedState(sentinel.url, Correlator(ttl=TTL, grace=GRACE))
        await state.start()
        assert state.up
        facts = []
        for _, n in SEED[:4]:  # sp, ep, o, s of the seed call
            facts += (await state.apply(n, NOW))[1]
        with sentinel.primary.client() as primary:
            assert primary.wait(1, 5000) == 1  # the replica has it
        sentinel.primary.stop()
        lost = (await state.apply(note("o", 0, B1, conf="DURING"), NOW))[1]  # correlated locally
        assert not state.up and lost == [CallStarted(), Applied(EventType.ORIGINATE, Side.UNKNOWN, None)]
        # Sentinel elects after down-after-milliseconds; a loaded machine (CI beside other work)
        # has taken over 20 s: the bound only stops a failover that never comes
        deadline = asyncio.get_running_loop().time() + 60
        while not state.up:  # the ticker's probe asks the Sentinel for the new primary
            assert asyncio.get_running_loop().time() < deadline, "no failover"
            await asyncio.sleep(0.2)
            await state.expire(NOW)
        for _, n in SEED[4:]:  # the rest of the seed call, on the promoted replica
            facts += (await state.apply(n, NOW))[1]
        assert durations(facts) == SEED_DURATIONS and calls(facts) == {"answered": 1}
        with sentinel.replica.client() as promoted:
            assert promoted.exists(state.key(SEED[0][1].conf_id)) == 1
        assert state.stats.fallbacks == 1
        await state.close()
    finally:
        sentinel.stop()


async def test_call_id_that_is_not_valid_utf8_is_kept_byte_for_byte(pair):
    a, b = pair
    odd = "X\udcff"  # a lone surrogate, as JSON can carry it
    await a.apply(note("o", 0, B1, conf=odd), NOW)
    facts = (await b.apply(note("h", 3, B1, side="B", cause=17, conf=odd), NOW))[1]
    assert not any(isinstance(f, CallStarted) for f in facts)  # b found a's call
    assert calls(await a.expire(NOW + GRACE)) == {"unanswered": 1}


def test_sentinel_url():
    parsed = SentinelURL.parse("rediss+sentinel://u:p%40ss@h1:26379,[::1]:26380,h3/mymaster/2?sentinel_password=s")
    assert parsed == SentinelURL([("h1", 26379), ("::1", 26380), ("h3", 26379)], "mymaster", 2,
                                 {"username": "u", "password": "p@ss"}, "s", True)


# --- a slow, hung or blackholed backend (#9): requests never wait for it -----------------


class HeldRoundTrips:
    """Round trips of `state` held until `release()`: a backend that answers late."""

    def __init__(self, state: SharedState) -> None:
        self.released = asyncio.Event()
        self.sent: list[int] = []  # commands per round trip
        self.in_flight = self.most_in_flight = 0
        real = state._pipe._direct_round_trip

        async def held(connection, commands):
            self.sent.append(len(commands))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await self.released.wait()
                return await real(connection, commands)
            finally:
                self.in_flight -= 1

        state._pipe._direct_round_trip = held
        state._pipe.timeout = state._pipe.most = 3600.0  # late, not failed

    def release(self) -> None:
        self.released.set()


@pytest.fixture
async def slow(redis_server):
    """A replica whose Redis answers only when told to, recording what it delivers."""
    state = SharedState(redis_server.url, Correlator(ttl=TTL, grace=GRACE, max_calls=1000))
    await state.start()
    delivered: list = []
    state.deliver = lambda n, now, result: delivered.append((n.conf_id, result))
    held = HeldRoundTrips(state)
    yield state, held, delivered
    held.release()
    await state.flush()
    await state.close()


async def test_round_trips_carry_the_notifications_queued_meanwhile(slow):
    state, held, delivered = slow
    assert all(state.submit(note("o", 0, B1, conf=f"N{i}"), NOW) is None for i in range(200))  # answered at once
    await asyncio.sleep(0)
    assert held.most_in_flight == len(held.sent) <= state_module.PIPELINES  # not one round trip per request
    held.release()
    await asyncio.wait(set(state._drains))
    assert len(held.sent) <= 2 * state_module.PIPELINES and sum(held.sent) == 200
    assert sorted(conf for conf, _ in delivered) == sorted(f"N{i}" for i in range(200))
    assert all(result[1] == [CallStarted(), Applied(EventType.ORIGINATE, Side.UNKNOWN, None)] for _, result in delivered)
    assert (state.stats.queued, state.stats.fallbacks) == (0, 0)


async def test_notifications_of_one_call_are_applied_in_order_while_queued(slow):
    state, held, delivered = slow
    for offset, n in SEED:
        assert state.submit(n, NOW + offset) is None
    held.release()
    await asyncio.wait(set(state._drains))
    facts = [fact for _, (_, more) in delivered for fact in more]
    facts += await state.expire(NOW + SEED[-1][0] + GRACE + 1)
    assert durations(facts) == SEED_DURATIONS and calls(facts) == {"answered": 1}


async def test_a_backend_that_falls_behind_degrades_visibly_and_loses_nothing(slow, monkeypatch, caplog):
    state, held, delivered = slow
    monkeypatch.setattr(state_module, "MAX_QUEUED", 4)
    registry = CollectorRegistry()
    Metrics(registry).track_backend(state.stats)
    answers = [state.submit(note("o", 0, B1, conf=f"B{i}"), NOW) for i in range(10)]
    assert answers[:4] == [None] * 4  # queued
    assert answers[4:] == [(False, [CallStarted(), Applied(EventType.ORIGINATE, Side.UNKNOWN, None)])] * 6  # behind: new calls correlated locally, still answered
    assert registry.get_sample_value("mtt_state_backend_behind") == 1
    assert registry.get_sample_value("mtt_state_backend_overflows_total") == 6
    assert registry.get_sample_value("mtt_state_backend_queued") == 4
    assert [r.getMessage() for r in caplog.records].count("state backend behind: new calls correlated in local memory") == 1
    # calls already queued keep their order: queued behind, up to twice the bound, then the request waits
    assert [state.submit(note("h", 3, B1, side="B", cause=17, conf=f"B{i}"), NOW) for i in range(4)] == [None] * 4
    waiting = state.submit(note("h", 4, B1, side="A", cause=16, conf="B0"), NOW)
    assert isinstance(waiting, asyncio.Future) and not waiting.done()
    held.release()
    assert (await waiting)[0] is False
    await asyncio.wait(set(state._drains))
    assert (state.stats.queued, state.stats.behind) == (0, False)
    assert len(delivered) == 8 and len(state.local) == 6
    assert sum(isinstance(f, CallStarted) for _, (_, facts) in delivered for f in facts) == 4  # 4 in Redis + 6 local


@pytest.fixture
async def proxy(redis_server):
    async with DelayProxy(redis_server.port, rtt=0.0) as running:
        yield running


@pytest.mark.parametrize("fault", [pytest.param("hung", id="hung (SIGSTOP)"), pytest.param("blackhole", id="blackholed")])
async def test_a_hung_or_blackholed_backend_is_failed_over_at_the_bound(make_client, redis_server, proxy, fault):
    client, app = await make_client(state_backend=f"redis://127.0.0.1:{proxy.port}/0")
    shared = app[SHARED]
    registry = app[METRICS].registry
    first = {"h323_conf_id": "F", "event": {"type": "o"}, "date_time": 1_767_225_600}
    assert (await client.post("/notify", json=first)).status == 200
    await asyncio.wait(set(shared._drains))
    assert shared.up and registry.get_sample_value("mtt_calls_in_progress") == 1
    if fault == "hung":
        redis_server.process.send_signal(signal.SIGSTOP)
    else:
        proxy.blackhole = True
    try:
        response = await client.post("/notify", json={"h323_conf_id": "G", "event": {"type": "o"}, "date_time": 1_767_225_601})
        # answered before the backend was even tried: the request waits for nothing
        assert (response.status, (await response.json())["queued"]) == (200, 1)
        assert (shared.stats.queued, shared.stats.errors["apply"]) == (1, 0)
        started = asyncio.get_running_loop().time()
        await asyncio.wait(set(shared._drains))  # ends at the round trip's bound, not the socket's
        waited = asyncio.get_running_loop().time() - started
        assert (shared.up, shared.stats.errors["apply"], shared.stats.fallbacks) == (False, 1, 1)
        assert "G" in shared.local.calls and registry.get_sample_value("mtt_calls_in_progress") == 2
        assert (await (await client.get("/-/ready")).json())["status"] == "degraded"
        print(f"\n{fault}: correlated locally {waited:.2f} s after it was queued (bound {state_module.TIMEOUT_SECONDS} s beyond the usual)")
    finally:
        if fault == "hung":
            redis_server.process.send_signal(signal.SIGCONT)
