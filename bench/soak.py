"""Soak against ground truth: the simulator's traffic with faults, posted one body a request
to a real exporter (optionally restarted with SIGTERM along the way); /metrics must equal
the truth exactly.

    .venv/bin/python bench/soak.py [--notifications 1000000] [--restarts 0] [--out FILE]

Faults: 10 % malformed bodies, 5 % duplicated and 5 % reordered notifications. With
`--restarts N` the stream is cut into N+1 parts; after each part the exporter is scraped,
stopped with SIGTERM (it saves its calls to --state-file) and started again, and the
scrapes are added up as Prometheus would (counters restart at 0). The grace period is
longer than a part takes to post, so no decision falls between a scrape and its stop.
Prints Markdown, writes JSON; exit 1 on any difference.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))

from mtt_exporter.replay import post_all  # noqa: E402
from mtt_exporter.simulate import EXPECTED_STATUS, SimConfig, Simulation, diff  # noqa: E402
from tests.process import Exporter, combined  # noqa: E402

#: Deliveries per simulated call with the faults below (measured: 7.25), a little low so at least --notifications are sent.
DELIVERIES_PER_CALL = 7.2


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def value(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=1_000_000, help="about this many bodies are posted")
    parser.add_argument("--restarts", type=int, default=0)
    parser.add_argument("--seed", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--grace", type=float, default=None, help="--call-end-grace (default: 2 s, or 90 s with restarts)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    grace = args.grace if args.grace is not None else (90.0 if args.restarts else 2.0)
    config = SimConfig(calls=round(args.notifications / DELIVERIES_PER_CALL), seed=args.seed,
                       malformed_pct=10, duplicate_pct=5, reorder_pct=5)
    simulation = Simulation(config)  # lazy: the truth is complete once it is exhausted
    stream = iter(simulation)
    part = args.notifications // (args.restarts + 1)
    workdir = Path(tempfile.mkdtemp(prefix="mtt-soak-"))
    exporter_args = ("--state-file", str(workdir / "state.json"), "--call-end-grace", str(grace))

    scrapes: list[str] = []
    results: Counter[tuple[str, str]] = Counter()
    parts: list[dict[str, Any]] = []
    started = time.monotonic()
    exporter = Exporter(workdir, *exporter_args).start()
    try:
        for index in range(args.restarts + 1):
            chunk = list(itertools.islice(stream, part)) if index < args.restarts else list(stream)
            t0 = time.monotonic()
            stats = asyncio.run(post_all(chunk, exporter.base + "/notify", speed=None, concurrency=args.concurrency))
            seconds = time.monotonic() - t0
            results += stats.results
            info = {"posted": len(chunk), "seconds": round(seconds, 1), "rate_per_s": round(len(chunk) / seconds),
                    "rss_mb": round(rss_mb(exporter.process.pid), 1)}
            if index < args.restarts:
                if seconds >= grace:
                    print(f"part {index} took {seconds:.0f} s >= grace {grace} s: the sum may be off", file=sys.stderr)
                scrapes.append(exporter.metrics())
                t1 = time.monotonic()
                assert exporter.stop() == 0, exporter.log()
                info["state_file_bytes"] = (workdir / "state.json").stat().st_size  # removed once loaded
                exporter = Exporter(workdir, *exporter_args).start()
                info["restart_seconds"] = round(time.monotonic() - t1, 2)
                info["restored_in_progress"] = value(exporter.metrics(), "mtt_calls_in_progress")
            parts.append(info)
            print(f"part {index}: {info}", file=sys.stderr)
        time.sleep(grace + 1.5)  # the last unanswered calls are decided after the grace period
        final = exporter.metrics()
        scrapes.append(final)
        rss_end = rss_mb(exporter.process.pid)
    finally:
        code = exporter.stop()
    problems = diff(simulation.truth, combined(*scrapes))
    unexpected = {f"{k} {s}": n for (k, s), n in results.items() if s != str(EXPECTED_STATUS[k])}
    summary = {
        "notifications_posted": sum(results.values()), "calls": simulation.truth.calls, "sent": dict(simulation.truth.sent),
        "restarts": args.restarts, "grace_s": grace, "seconds": round(time.monotonic() - started, 1),
        "parts": parts, "statuses": {f"{k} {s}": n for (k, s), n in sorted(results.items())},
        "unexpected_statuses": unexpected, "differences": problems[:50], "difference_count": len(problems),
        "tracked_calls_end": value(final, "mtt_calls_tracked"), "rss_mb_end": round(rss_end, 1),
        "clean_exit": code == 0, "passed": not problems and not unexpected and code == 0,
    }
    print(markdown(summary))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["passed"] else 1


def _n(number: float | None) -> str:
    return "" if number is None else f"{number:,.0f}"


def markdown(s: dict[str, Any]) -> str:
    lines = [
        f"Soak: {s['notifications_posted']:,} bodies ({s['calls']:,} calls; {s['sent']}), {s['restarts']} restart(s), "
        f"grace {s['grace_s']:g} s, {s['seconds']} s in all",
        "",
        "| part | posted | seconds | bodies/s | RSS MB | restart s | state file | restored in progress |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {i} | {p['posted']:,} | {p['seconds']} | {p['rate_per_s']:,} | {p['rss_mb']} | {p.get('restart_seconds', '')} "
          f"| {_n(p.get('state_file_bytes'))} | {_n(p.get('restored_in_progress'))} |" for i, p in enumerate(s["parts"])],
        "",
        "Answers: " + ", ".join(f"{k}: {n:,}" for k, n in s["statuses"].items()),
        f"Differences from the truth: {s['difference_count']}; unexpected answers: {sum(s['unexpected_statuses'].values())}; "
        f"calls tracked at the end: {s['tracked_calls_end']:,.0f}; RSS at the end {s['rss_mb_end']} MB",
        f"Result: {'PASS' if s['passed'] else 'FAIL'}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
