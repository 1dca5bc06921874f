"""Two exporter processes sharing one redis-server: their sum is one exporter's numbers.

Real processes, real Redis, a generated workload split at random between the replicas, some
notifications sent to both at once. Each test takes 10-20 s (grace 1 s, TTL 3 s).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from .process import Exporter
from prometheus_client.parser import text_string_to_metric_families

from .workload import Workload, generate, samples, send, single_exporter

TTL, GRACE = 3.0, 1.0
#: Notification-level series: exact even when correlation fell back to local memory.
PER_NOTIFICATION = ("mtt_notifications_total", "mtt_notifications_duplicate_total", "mtt_call_attempts_total",
                    "mtt_call_answers_total", "mtt_call_hangups_total")


def flags(redis_url: str) -> list[str]:
    return ["--state-backend", redis_url, "--call-end-grace", str(GRACE), "--call-ttl", str(TTL)]


async def scrape(replicas: list[Exporter]) -> list[str]:
    async with aiohttp.ClientSession() as session:
        texts = []
        for replica in replicas:
            async with session.get(replica.base + "/metrics") as response:
                texts.append(await response.text())
        return texts


async def ready(replicas: list[Exporter]) -> list[tuple[int, str]]:
    async with aiohttp.ClientSession() as session:
        answers = []
        for replica in replicas:
            async with session.get(replica.base + "/-/ready") as response:
                answers.append((response.status, (await response.json())["status"]))
        return answers


async def wait_for(condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


async def settled(replicas: list[Exporter]) -> Counter:
    """The summed samples once no call is in progress and two scrapes 1.5 s apart agree."""

    async def quiet():
        before = samples(*await scrape(replicas))
        if before[("mtt_calls_in_progress", ())] != 0:
            return None
        await asyncio.sleep(1.5)
        after = samples(*await scrape(replicas))
        return after if after == before else None

    return await wait_for(quiet, "every call to be decided", timeout=30)


def difference(after: Counter, before: Counter) -> Counter:
    return Counter({k: after[k] - before[k] for k in after | before})


def backend(texts: list[str], name: str) -> float:
    """A mtt_state_backend_* sample summed over replicas."""
    return sum(s.value for text in texts for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def by(total: Counter, name: str) -> Counter:
    return Counter({dict(labels).get("outcome", ""): v for (n, labels), v in total.items() if n == name and v})


def per_notification(total: Counter) -> Counter:
    return Counter({k: v for k, v in total.items() if k[0] in PER_NOTIFICATION})


@pytest.fixture
def replicas(redis_server, tmp_path):
    started = [Exporter(tmp_path, *flags(redis_server.url)).start() for _ in range(2)]
    yield started
    for replica in started:
        assert replica.stop() == 0
        assert "Traceback" not in replica.log(), replica.log()


async def test_random_split_sums_to_one_exporter(replicas):
    await wait_for(lambda: _all_ready(replicas), "replicas ready")
    work = generate(280, seed=6)
    sent, statuses = await send(work, [r.base for r in replicas], seed=6, both=0.1)
    assert statuses == {200: len(sent)}
    assert len(sent) > work.notifications()  # some went to both replicas

    got = await settled(replicas)
    assert got == samples(single_exporter(sent, time.time(), TTL, GRACE))
    assert by(got, "mtt_calls_total") == work.calls_by_outcome
    assert by(got, "mtt_call_legs_total") == work.legs_by_outcome
    assert got[("mtt_notifications_duplicate_total", (("event", "originate"),))] > 0


async def _all_ready(replicas, status="ready"):
    return all(answer == (200, status) for answer in await ready(replicas))


async def test_redis_restart_costs_only_the_calls_it_touched(replicas, redis_server):
    urls = [r.base for r in replicas]
    await wait_for(lambda: _all_ready(replicas), "replicas ready")

    # 1. before: exact
    before = generate(70, seed=1, prefix="P")
    sent1, statuses = await send(before, urls, seed=1)
    s1 = await settled(replicas)
    assert s1 == samples(single_exporter(sent1, time.time(), TTL, GRACE))

    # 2. calls begun in Redis, and finished (with new ones) while Redis is down
    spanning = generate(35, seed=2, expired=False, prefix="S")
    first = [call[:1] for call in spanning.calls]
    second = [call[1:] for call in spanning.calls]
    sent2, more = await send(_calls(first), urls, seed=2)
    statuses += more
    redis_server.stop(save=True)  # as a Redis with persistence restarts
    await wait_for(lambda: _all_ready(replicas, "degraded"), "replicas to report degraded")
    during = generate(70, seed=3, prefix="D")
    sent3, more = await send(_calls(second), urls, seed=3)
    statuses += more
    sent4, more = await send(during, urls, seed=4)
    statuses += more
    metrics = await scrape(replicas)
    assert samples(*metrics) and all("mtt_state_backend_up 0.0" in text for text in metrics)
    redis_server.start()
    await wait_for(lambda: _all_ready(replicas), "replicas to recover")
    s2 = await settled(replicas)
    exposed = samples(single_exporter(sent2 + sent3 + sent4, time.time(), TTL, GRACE))
    delta = difference(s2, s1)
    assert per_notification(delta) == per_notification(exposed)  # nothing is lost from the counters
    touched = len(spanning.calls) + len(during.calls)
    counted = sum(by(delta, "mtt_calls_total").values())
    # each touched call is counted at least once, at most once per place it had state
    assert touched <= counted <= 3 * len(spanning.calls) + 2 * len(during.calls)
    fallbacks = backend(await scrape(replicas), "mtt_state_backend_fallbacks_total")
    assert fallbacks >= len(sent3) + len(sent4)

    # 3. after recovery: exact again
    after = generate(70, seed=5, prefix="A")
    sent5, more = await send(after, urls, seed=5)
    statuses += more
    s3 = await settled(replicas)
    assert difference(s3, s2) == samples(single_exporter(sent5, time.time(), TTL, GRACE))
    assert set(statuses) == {200}
    print(f"\nrestart: {touched} calls touched by the outage counted {counted} times; "
          f"answered calls {by(delta, 'mtt_calls_total')['answered']} of {exposed[('mtt_calls_total', (('outcome', 'answered'),))]}; "
          f"fallbacks {fallbacks}")


def _calls(waves_per_call) -> Workload:
    return Workload(calls=[waves for waves in waves_per_call if waves])
