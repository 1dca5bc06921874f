"""Two exporter processes sharing one redis-server: together they give one exporter's numbers.

Real processes and a real Redis; traffic from `mtt_exporter.simulate`, whose truth is computed
from the README's rules, not from the exporter. Each delivery goes to a random replica,
several are in flight at once (so notifications of one call race on the two replicas), and
some are posted to both replicas at the same moment. The replicas' expositions are summed
(as dashboards do) and compared with the truth. About 10 and 25 s (grace 1 s, TTL 3 s).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections import Counter

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtt_exporter.model import EVENT_BY_CODE
from mtt_exporter.simulate import EXPECTED_STATUS, Delivery, SimConfig, Truth, diff, generate

from .process import ROOT, Exporter

TTL, GRACE = 3.0, 1.0
#: Counted per notification at receipt: exact even while correlation falls back to memory.
PER_NOTIFICATION = ("mtt_notifications_total", "mtt_notifications_duplicate_total", "mtt_notifications_rejected_total",
                    "mtt_call_attempts_total", "mtt_call_answers_total", "mtt_call_hangups_total",
                    "mtt_notification_delay_seconds_count")


@pytest.fixture
def replicas(redis_server, tmp_path):
    flags = ["--state-backend", redis_server.url, "--call-end-grace", str(GRACE), "--call-ttl", str(TTL)]
    started = [Exporter(tmp_path, *flags).start() for _ in range(2)]
    yield started
    for replica in started:
        assert replica.stop() == 0
        assert "Traceback" not in replica.log(), replica.log()


async def send(replicas: list[Exporter], deliveries: list[Delivery], truth: Truth, seed: int,
               both: float = 0.0, window: int = 8) -> Counter:
    """Post in order, `window` requests in flight, each to a random replica or (share
    `both`) to every replica at once, adding those extra copies to `truth` as duplicates;
    returns the count of unexpected statuses by (kind, status)."""
    rnd = random.Random(seed)
    wrong: Counter = Counter()
    gate = asyncio.Semaphore(window)
    tasks = []
    async with aiohttp.ClientSession() as session:

        async def post(d: Delivery, targets: list[Exporter]) -> None:
            async def one(replica: Exporter) -> None:
                async with session.post(replica.base + "/notify", data=d.payload(),
                                        headers={"Content-Type": d.content_type}) as response:
                    if response.status != EXPECTED_STATUS[d.kind]:
                        wrong[(d.kind, response.status)] += 1
            try:
                await asyncio.gather(*(one(r) for r in targets))
            finally:
                gate.release()

        for d in deliveries:
            targets = [rnd.choice(replicas)]
            if d.kind == "event" and rnd.random() < both:
                targets = replicas
                event = EVENT_BY_CODE[d.body["event"]["type"]].value
                truth.add("mtt_notifications_total", len(replicas) - 1, event=event)
                truth.add("mtt_notifications_duplicate_total", len(replicas) - 1, event=event)
            await gate.acquire()
            tasks.append(asyncio.create_task(post(d, targets)))
        await asyncio.gather(*tasks)
    return wrong


async def scrape(replicas: list[Exporter]) -> str:
    """The replicas' expositions one after the other: `diff` then sums every series."""
    async with aiohttp.ClientSession() as session:
        texts = []
        for replica in replicas:
            async with session.get(replica.base + "/metrics") as response:
                texts.append(await response.text())
    return "\n".join(texts)


def value(exposition: str, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(exposition) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def wait_for(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (result := await condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)
    return result


async def settled(replicas: list[Exporter]) -> str:
    """The summed exposition once no call is in progress and nothing changes for 1.5 s."""

    async def quiet() -> str | None:
        before = await scrape(replicas)
        if value(before, "mtt_calls_in_progress") != 0:
            return None
        await asyncio.sleep(1.5)
        after = await scrape(replicas)
        same = all(value(after, name) == value(before, name) for name in ("mtt_calls_total", "mtt_call_legs_total"))
        return after if same else None

    return await wait_for(quiet, "every call to be decided")


async def statuses(replicas: list[Exporter]) -> list[str]:
    async with aiohttp.ClientSession() as session:
        answers = []
        for replica in replicas:
            async with session.get(replica.base + "/-/ready") as response:
                assert response.status == 200  # never 503: the balancer must keep every replica
                answers.append((await response.json())["status"])
        return answers


def all_are(replicas: list[Exporter], status: str):
    async def check() -> bool:
        return set(await statuses(replicas)) == {status}
    return check


def merged(*truths: Truth) -> Truth:
    total = Truth()
    for truth in truths:
        total.values.update(truth.values)
        total.calls += truth.calls
    return total


def traffic(calls: int, seed: int, duplicate_pct: float = 5) -> SimConfig:
    return SimConfig(calls=calls, seed=seed, duplicate_pct=duplicate_pct, reorder_pct=5, malformed_pct=1, unknown_event_pct=1)


async def test_random_split_sums_to_the_truth(replicas):
    workload = generate(traffic(400, seed=6))
    baseline = await scrape(replicas)
    assert await send(replicas, workload.deliveries, workload.truth, seed=6, both=0.1) == {}
    exposition = await settled(replicas)
    assert diff(workload.truth, exposition, baseline) == []
    assert value(exposition, "mtt_state_backend_retries_total") > 0  # the replicas wrote the same calls
    assert value(exposition, "mtt_state_backend_fallbacks_total") == 0
    assert value(exposition, "mtt_state_backend_calls_in_progress") == 0


async def test_redis_restart_costs_only_the_calls_it_touched(replicas, redis_server):
    # 1. before the outage: exact
    before = generate(traffic(100, seed=1))
    s0 = await scrape(replicas)
    wrong = await send(replicas, before.deliveries, before.truth, seed=1)
    s1 = await settled(replicas)
    assert diff(before.truth, s1, s0) == []

    # 2. calls begun before Redis stops and finished while it is down, and calls wholly inside;
    # no duplicates: while Redis is down, a duplicate sent to the other replica is counted twice
    spanning, during = generate(traffic(50, seed=2, duplicate_pct=0)), generate(traffic(100, seed=3, duplicate_pct=0))
    first = {d.call: d for d in reversed(spanning.deliveries) if d.kind == "event"}  # each call's first event
    wrong += await send(replicas, list(first.values()), spanning.truth, seed=2)
    redis_server.stop(save=True)  # as a Redis with persistence restarts
    await wait_for(all_are(replicas, "degraded"), "both replicas to report degraded")
    rest = [d for d in spanning.deliveries if first.get(d.call) is not d]
    wrong += await send(replicas, rest, spanning.truth, seed=3)
    wrong += await send(replicas, during.deliveries, during.truth, seed=4)
    outage = await scrape(replicas)
    assert value(outage, "mtt_state_backend_up") == 0
    assert value(outage, "mtt_state_backend_fallbacks_total") >= len(rest)
    redis_server.start()
    await wait_for(all_are(replicas, "ready"), "both replicas to recover")
    s2 = await settled(replicas)
    assert value(s2, "mtt_state_backend_up") == 2
    truth = merged(spanning.truth, during.truth)
    problems = diff(truth, s2, s1)
    assert [p for p in problems if p.startswith(PER_NOTIFICATION)] == []  # every notification counted
    touched = truth.calls
    counted = value(s2, "mtt_calls_total") - value(s1, "mtt_calls_total")
    # a touched call is counted once per place that held part of it: Redis and each replica
    assert touched <= counted <= 3 * touched

    # 3. after recovery: exact again
    after = generate(traffic(100, seed=5))
    wrong += await send(replicas, after.deliveries, after.truth, seed=5)
    assert diff(after.truth, await settled(replicas), s2) == []
    assert wrong == {}  # no 5xx, no status other than the expected one
    answered = value(s2, "mtt_calls_total", outcome="answered") - value(s1, "mtt_calls_total", outcome="answered")
    print(f"\nRedis restart: {touched} calls touched, counted {counted:g} times; "
          f"{answered:g} answered of {truth.get('mtt_calls_total', outcome='answered'):g}; "
          f"{len(problems)} call-level series off")


async def test_random_split_through_a_200ms_backend_sums_to_the_truth(redis_server, tmp_path):
    """Redis 200 ms away (#9): every notification answered at once (no 429), none lost, the
    same numbers; a grace period longer than a few round trips, as the default 15 s is."""
    proxy = subprocess.Popen([sys.executable, "-m", "tests.delay_proxy", "--target", str(redis_server.port), "--rtt", "0.2"],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)  # a process of its own: not slowed by the load
    try:
        flags = ["--state-backend", f"redis://127.0.0.1:{int(proxy.stdout.readline())}/0",
                 "--call-end-grace", "3", "--call-ttl", "8"]
        slow = [Exporter(tmp_path, *flags).start() for _ in range(2)]
        try:
            workload = generate(traffic(300, seed=7))
            baseline = await scrape(slow)
            assert await send(slow, workload.deliveries, workload.truth, seed=7, both=0.05, window=64) == {}
            exposition = await settled(slow)
            assert value(exposition, "mtt_state_backend_fallbacks_total") == 0, [r.log()[-1500:] for r in slow]
            assert value(exposition, "mtt_state_backend_queued") == 0
            assert diff(workload.truth, exposition, baseline) == []
        finally:
            for replica in slow:
                assert replica.stop() == 0
                assert "Traceback" not in replica.log(), replica.log()
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        proxy.stdout.close()
