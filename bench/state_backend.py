"""Benchmark: notifications per second and p99 latency per replica, in memory vs on Redis.

    python bench/state_backend.py [--duration 10] [--rounds 3] [--connections 16]
    python bench/state_backend.py --rtt 0.2 [--calls 2000] [--rounds 3] [--window 64]

Starts its own redis-server (loopback, no persistence) and exporter processes, drives each
with wrk (bench/state_backend.lua: o, s, h of many interleaved calls, one notification per
request) and prints a Markdown table of medians over the rounds, setups interleaved so
background load hits them alike. Setups: one in-memory exporter; one exporter on Redis;
two exporters on one Redis, each driven by its own wrk at the same time. Needs
redis-server and wrk (scripts/system-deps.sh). Results: BENCHMARKS.md.

With --rtt, a slow backend instead: Redis behind tests/delay_proxy.py, which adds RTT seconds
to every round trip, and the simulator's traffic (`mtt_exporter.simulate`: duplicates,
reordering, malformed and unknown events) posted as fast as `--window` requests in flight
allow, to one replica, then split at random over two replicas (some notifications to both
at once); the summed expositions are compared with the simulator's truth once settled.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.append(str(ROOT))
LUA = HERE / "state_backend.lua"
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True).stdout


def redis_cpu(port: int) -> float:
    """CPU seconds redis-server used so far (user + system)."""
    info = redis_cli(port, "INFO", "cpu")
    return sum(float(re.search(rf"{name}:([\d.]+)", info)[1]) for name in ("used_cpu_user", "used_cpu_sys"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_exporter(backend: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    flags = ["--listen", f"127.0.0.1:{port}", "--log-level", "error", "--call-end-grace", "1"]
    if backend:
        flags += ["--state-backend", backend]
    process = subprocess.Popen([sys.executable, "-m", "mtt_exporter", *flags], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/-/ready")
    return process, url


def parse_wrk(output: str) -> tuple[float, float, int]:
    """(requests/s, p99 seconds, non-2xx responses) from `wrk --latency` output."""
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return rate, float(value) * UNITS[unit], int(bad[1]) if bad else 0


def run(setup: str, replicas: int, backend: str | None, args: argparse.Namespace,
        tag: str) -> list[tuple[float, float, float]]:
    """Start `replicas` exporters, load them all at once; [(requests/s, p99, exporter CPU
    seconds per request)] per replica. The CPU time is what other load on the machine
    disturbs least: the ratio of two setups' CPU per request is their ratio of throughput
    on a core of their own."""
    exporters = [start_exporter(backend) for _ in range(replicas)]
    try:
        cpu = [cpu_seconds(process.pid) for process, _ in exporters]
        loads = [
            subprocess.Popen(
                ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "-s", str(LUA),
                 url, "--", f"{tag}-{i}"],
                stdout=subprocess.PIPE, text=True,
            )
            for i, (_, url) in enumerate(exporters)
        ]
        results = [parse_wrk(load.communicate()[0]) for load in loads]
        time.sleep(0.5)  # the last queued notifications are applied (and paid for)
        cpu = [cpu_seconds(process.pid) - before for (process, _), before in zip(exporters, cpu, strict=True)]
    finally:
        for process, _ in exporters:
            process.terminate()
            process.wait(timeout=30)
    for rate, p99, bad in results:
        if bad:
            raise SystemExit(f"{setup}: {bad} responses were not 2xx")
    return [(rate, p99, used / (rate * args.duration)) for (rate, p99, _), used in zip(results, cpu, strict=True)]


def slow_backend(args: argparse.Namespace, port: int) -> None:
    """--rtt: the simulator's traffic through replicas whose Redis is RTT seconds away."""
    import asyncio

    from tests.process import Exporter
    from tests.test_replicas import scrape, send, settled, traffic, value
    from mtt_exporter.simulate import diff, generate

    try:  # the load generator is Python too: on uvloop it sends more per core
        import uvloop
        run_loop = uvloop.run
    except ImportError:
        run_loop = asyncio.run
    proxy = subprocess.Popen([sys.executable, "-m", "tests.delay_proxy", "--target", str(port), "--rtt", str(args.rtt)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    workdir = Path(tempfile.mkdtemp(prefix="mtt-bench-rtt-"))
    setups = (("memory, 1 replica (the same load on no backend)", 1, False), ("Redis, 1 replica", 1, True),
              ("Redis, 2 replicas", 2, True))
    rows: dict[str, list[tuple[float, int, int, float, float]]] = {name: [] for name, _, _ in setups}
    try:
        backend = f"redis://127.0.0.1:{int(proxy.stdout.readline())}/0"
        ping = time.perf_counter()
        redis_cli(port, "PING")
        flags = ["--state-backend", backend, "--call-end-grace", "3", "--call-ttl", "8", "--log-level", "warning",
                 "--max-concurrent-requests", "1024"]
        for round_ in range(args.rounds):
            for name, replicas, shared in setups:
                redis_cli(port, "FLUSHALL")
                exporters = [Exporter(workdir, *(flags if shared else flags[2:])).start() for _ in range(replicas)]
                try:
                    workload = generate(traffic(args.calls, seed=round_ * 2 + replicas))

                    async def once() -> tuple[float, int, int, float, float]:
                        baseline = await scrape(exporters)
                        started = time.perf_counter()
                        wrong = await send(exporters, workload.deliveries, workload.truth, seed=round_,
                                           both=0.05 if replicas > 1 else 0.0, window=args.window)
                        rate = len(workload.deliveries) / (time.perf_counter() - started) / replicas
                        exposition = await settled(exporters)
                        problems = diff(workload.truth, exposition, baseline)
                        return (rate, sum(wrong.values()), len(problems),
                                value(exposition, "mtt_state_backend_fallbacks_total"),
                                value(exposition, "mtt_state_backend_retries_total"))

                    result = run_loop(once())
                finally:
                    for exporter in exporters:
                        exporter.stop()
                rows[name].append(result)
                print(f"round {round_ + 1}: {name}: {result[0]:,.0f} notifications/s per replica, {result[1]} unexpected "
                      f"statuses, {result[2]} differences, {result[3]:g} fallbacks", file=sys.stderr)
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        proxy.stdout.close()
        if args.verbose:
            print(f"exporter logs: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    del ping
    print(f"\n{os.cpu_count()} CPUs; Redis behind a {args.rtt * 1000:g} ms round trip; {args.rounds} rounds of "
          f"{args.calls} simulated calls, {args.window} requests in flight; medians (worst for the counts).\n")
    print("| setup | notifications/s per replica | unexpected statuses (429 ...) | differences from the truth "
          "| local fallbacks | compare-and-set retries |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, results in rows.items():
        print(f"| {name} | {statistics.median(r[0] for r in results):,.0f} | {max(r[1] for r in results)} | "
              f"{max(r[2] for r in results)} | {max(r[3] for r in results):g} | {statistics.median(r[4] for r in results):,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every setup (medians are shown)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections per replica")
    parser.add_argument("--rtt", type=float, help="seconds added to every round trip to Redis: the slow-backend run")
    parser.add_argument("--calls", type=int, default=2000, help="--rtt: simulated calls per run")
    parser.add_argument("--window", type=int, default=64, help="--rtt: requests in flight")
    parser.add_argument("--verbose", action="store_true", help="--rtt: keep the exporters' logs")
    args = parser.parse_args()
    if args.rtt is not None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server not found: sh scripts/system-deps.sh")
        workdir = tempfile.mkdtemp(prefix="mtt-bench-")
        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            slow_backend(args, port)
        finally:
            redis.terminate()
            redis.wait(timeout=10)
            shutil.rmtree(workdir, ignore_errors=True)
        return
    for binary in ("redis-server", "redis-cli", "wrk"):
        if shutil.which(binary) is None:
            raise SystemExit(f"{binary} not found: sh scripts/system-deps.sh")

    workdir = tempfile.mkdtemp(prefix="mtt-bench-")
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    backend = f"redis://127.0.0.1:{port}/0"
    setups = [("memory, 1 replica", 1, None), ("Redis, 1 replica", 1, backend), ("Redis, 2 replicas", 2, backend)]
    per: dict[str, list[list[tuple[float, float, float]]]] = {name: [] for name, _, _ in setups}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in setups}
    load = os.getloadavg()[0]
    try:
        time.sleep(0.3)
        for round_ in range(args.rounds):
            for name, replicas, url in setups:
                redis_cli(port, "FLUSHALL")
                before = redis_cpu(port)
                results = run(name, replicas, url, args, tag=f"r{round_}{time.time_ns()}")
                per[name].append(results)
                requests = sum(rate for rate, _, _ in results) * args.duration
                cpu[name].append((redis_cpu(port) - before) / requests * 1e6)
                print(f"round {round_ + 1}: {name}: " + ", ".join(f"{r:,.0f}/s p99 {p * 1000:.1f} ms, {c * 1e6:.0f} µs CPU"
                                                                   for r, p, c in results),
                      file=sys.stderr)
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{os.cpu_count()} CPUs, load average {load:.2f} at start; {args.rounds} rounds of {args.duration} s, "
          f"wrk -t1 -c{args.connections} per replica; medians.\n")
    print("| setup | notifications/s per replica | all replicas | p99 latency | exporter CPU per notification "
          "| vs memory (by CPU) | Redis CPU per notification |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    memory_cpu = statistics.median(statistics.mean(c for _, _, c in results) for results in per[setups[0][0]])
    for name, replicas, url in setups:
        rates = [statistics.mean(r for r, _, _ in results) for results in per[name]]
        totals = [sum(r for r, _, _ in results) for results in per[name]]
        p99s = [max(p for _, p, _ in results) for results in per[name]]
        used = statistics.median(statistics.mean(c for _, _, c in results) for results in per[name])
        redis_share = f"{statistics.median(cpu[name]):.0f} µs" if url else "-"
        print(f"| {name} | {statistics.median(rates):,.0f} | {statistics.median(totals):,.0f} | "
              f"{statistics.median(p99s) * 1000:.1f} ms | {used * 1e6:.0f} µs | {memory_cpu / used:.2f} | {redis_share} |")


if __name__ == "__main__":
    main()
