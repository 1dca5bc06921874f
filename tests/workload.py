"""Generated calls with known outcomes, a single exporter's exposition for them, and sending.

Each call is a list of waves; the notifications of one wave may be sent concurrently (to
different replicas), so a wave only holds notifications whose order does not change the
call's facts. Event times are in the past, receipt times now: only durations use them.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.correlator import Correlator
from exporter.metrics import Metrics
from exporter.model import parse

MOSCOW = ZoneInfo("Europe/Moscow")
CALLER = "79154368886"
#: Series that differ between replicas and one exporter by design.
NOT_SUMMED = ("mtt_calls_tracked", "mtt_exporter_build_info", "mtt_state_backend_", "mtt_notification_delay_seconds_")


@dataclass
class Workload:
    """Calls (lists of waves of payloads) and the outcomes they must produce."""

    calls: list[list[list[dict]]] = field(default_factory=list)
    calls_by_outcome: Counter = field(default_factory=Counter)
    legs_by_outcome: Counter = field(default_factory=Counter)

    def notifications(self) -> int:
        return sum(len(wave) for call in self.calls for wave in call)


def _payload(conf_id: str, code: str, t: int, number: str, side: str = "", cause: int | None = None) -> dict:
    stamp = datetime.fromtimestamp(t, timezone.utc).astimezone(MOSCOW).strftime("%Y-%m-%d-%H-%M-%S")
    event: dict = {"type": code}
    if side:
        event["side"] = side
    if cause is not None:
        event["cause"] = cause
    data = f"event={code}_{number}_{stamp}" + (f"&cause={cause}" if cause is not None else "")
    item = {"date_time": t, "data": data, "event": event, "h323_conf_id": conf_id, "numberA": CALLER}
    if not (side == "A" and code in ("sp", "ep")):
        item["redirect_number"] = number
    return item


def generate(count: int, seed: int, expired: bool = True, prefix: str = "W") -> Workload:
    """`count` calls of every kind; `expired`: include calls that never hang up."""
    rnd = random.Random(seed)
    work = Workload()
    kinds = ["answered", "busy", "no_answer", "abandoned", "parallel", "follow_me"] + (["expired"] if expired else [])
    for i in range(count):
        conf = f"{prefix}{seed:04d}{i:06d}"
        kind = kinds[i % len(kinds)]
        t = 1_700_000_000 + rnd.randrange(86_400)
        b1, b2 = f"7900{rnd.randrange(10**7):07d}", f"7901{rnd.randrange(10**7):07d}"
        ring, talk = rnd.randrange(1, 40), rnd.randrange(1, 600)

        def p(code, dt, number=b1, side="", cause=None):
            return _payload(conf, code, t + dt, number, side, cause)

        if kind == "answered":
            waves = [[p("sp", 0, CALLER, "A"), p("ep", 3, CALLER, "A")], [p("o", 4)], [p("s", 4 + ring), p("t", 5 + ring)],
                     [p("h", 4 + ring + talk, side=rnd.choice("AB"), cause=16)]]
            legs, outcome = ["answered"], "answered"
        elif kind == "busy":
            waves, legs, outcome = [[p("o", 0)], [p("h", ring, side="B", cause=17)]], ["busy"], "unanswered"
        elif kind == "no_answer":
            waves, legs, outcome = [[p("o", 0)], [p("h", ring, side="B", cause=19)]], ["no_answer"], "unanswered"
        elif kind == "abandoned":
            waves, legs, outcome = [[p("o", 0)], [p("h", ring, side="A", cause=16)]], ["abandoned"], "abandoned"
        elif kind == "parallel":
            waves = [[p("o", 0), p("o", 0, b2)], [p("s", ring, b2)],
                     [p("h", ring, b1, "B", 26), p("h", ring + talk, b2, "B", 16)]]
            legs, outcome = ["answered", "not_selected"], "answered"
        elif kind == "follow_me":
            waves = [[p("o", 0)], [p("h", ring, side="B", cause=17), p("o", ring + 1, b2)], [p("s", ring + 5, b2)],
                     [p("h", ring + 5 + talk, b2, "A", 16)]]
            legs, outcome = ["busy", "answered"], "answered"
        else:  # expired: answered, never hung up
            waves, legs, outcome = [[p("o", 0)], [p("s", ring)]], ["expired"], "expired"
        work.calls.append(waves)
        work.legs_by_outcome.update(legs)
        work.calls_by_outcome[outcome] += 1
    return work


def single_exporter(sent: list[dict], now: float, ttl: float, grace: float) -> str:
    """The exposition of one in-memory exporter fed `sent` in order, after every decision."""
    metrics = Metrics(CollectorRegistry(), exemplars=False)
    correlator = Correlator(ttl=ttl, grace=grace)
    for item in sent:
        n = parse(item)
        duplicate, facts = correlator.apply(n, now)
        metrics.record_notification(n, now, duplicate)
        metrics.record_facts(facts)
    metrics.record_facts(correlator.expire(now + grace + 1))
    metrics.record_facts(correlator.expire(now + ttl + grace + 1))
    return generate_latest(metrics.registry).decode()


def samples(*expositions: str) -> Counter:
    """mtt_* samples summed over expositions, keyed by (name, sorted labels)."""
    total: Counter = Counter()
    for text in expositions:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith("mtt_") and not s.name.startswith(NOT_SUMMED):
                    total[(s.name, tuple(sorted(s.labels.items())))] += s.value
    return total


async def send(
    work: Workload, replicas: list[str], seed: int, both: float = 0.0, concurrency: int = 16
) -> tuple[list[dict], Counter]:
    """Send every call, each notification to a random replica (to all of them with
    probability `both`, concurrently), waves one after the other; returns (what a single
    exporter would have received, in order; HTTP statuses)."""
    rnd = random.Random(seed)
    sent: list[dict] = []
    statuses: Counter = Counter()
    gate = asyncio.Semaphore(concurrency)

    async with aiohttp.ClientSession() as session:

        async def post(url: str, item: dict) -> None:
            async with session.post(url + "/notify", json=item) as response:
                statuses[response.status] += 1

        async def one_call(waves: list[list[dict]]) -> None:
            async with gate:
                for wave in waves:
                    posts = []
                    for item in wave:
                        targets = replicas if rnd.random() < both else [rnd.choice(replicas)]
                        sent.extend([item] * len(targets))
                        posts += [post(url, item) for url in targets]
                    await asyncio.gather(*posts)

        await asyncio.gather(*(one_call(call) for call in work.calls))
    return sent, statuses
