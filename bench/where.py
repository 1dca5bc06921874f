"""Where an ingest request's time goes: cProfile of the exporter under wrk, by module.

    .venv/bin/python bench/where.py [--seconds S] [--top N]

Runs the exporter in this process (as `mtt-exporter` builds it, asyncio loop) pinned to CPU 0,
wrk pinned to CPU 1 posting the bodies of bench/run.py, and profiles the measured interval.
Prints the share of profiled time per module (own time of its functions; C functions counted
where they are called from: `{built-in}` rows are C code such as socket calls or msgspec),
then the top functions. Time in epoll (waiting for requests) is left out. cProfile adds a fixed cost per Python call, so call-heavy Python code
looks somewhat larger than it is; the shares are for ranking, the instruction counts of
bench/callgrind.py are the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.append(str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from run import free_port, wrk, write_bodies  # noqa: E402


def module_of(filename: str) -> str:
    if filename.startswith("~") or filename.startswith("<"):
        return "{built-in} (C)"
    path = Path(filename)
    parts = path.parts
    for anchor in ("mtt_exporter", "aiohttp", "asyncio", "multidict", "yarl", "prometheus_client", "json", "logging"):
        if anchor in parts:
            return f"{anchor}/{path.name}" if anchor in ("mtt_exporter", "aiohttp") else anchor
    return path.name


async def profiled(seconds: float, bodies: Path) -> pstats.Stats:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from mtt_exporter.server import Runner, create_app, runner_options
    from mtt_exporter.settings import load

    port = free_port()
    settings = load(["--listen", f"127.0.0.1:{port}"])
    app = create_app(settings, registry=CollectorRegistry())
    runner = Runner(app, **runner_options(settings))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, lambda: wrk(port, 2, bodies))  # warm-up
        profile = cProfile.Profile()
        profile.enable()
        await loop.run_in_executor(None, lambda: wrk(port, seconds, bodies))
        profile.disable()
    finally:
        await runner.cleanup()
    return pstats.Stats(profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--top", type=int, default=15)
    a = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})  # wrk runs on CPU 1 (see run.wrk)
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies.jsonl"
        write_bodies(bodies, 20_000)
        stats = asyncio.run(profiled(a.seconds, bodies))
    by_module: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "epoll" in function:  # waiting for the next request, not work
            continue
        by_module[module_of(filename)] += tottime
        total += tottime
    print("| module | share of profiled time |\n|---|---:|")
    for module, seconds in sorted(by_module.items(), key=lambda item: -item[1])[: a.top]:
        print(f"| {module} | {seconds / total:.1%} |")
    print()
    stats.sort_stats("tottime").print_stats(a.top)


if __name__ == "__main__":
    main()
