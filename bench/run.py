"""Benchmarks of BENCHMARKS.md: ingest vs a bare aiohttp handler, latency, /metrics, memory, start-up.

    .venv/bin/python bench/run.py [--only NAME,...] [--rounds N] [--seconds S] [--out FILE]
    .venv/bin/python bench/run.py --smoke      # seconds-long run of everything (the test suite does this)

Servers run pinned to CPU 0 and wrk to CPU 1 (taskset), on 127.0.0.1. wrk posts a
realistic mix of notifications written by the simulator (bench/notify.lua). Results are
printed as Markdown and written as JSON to --out.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if "--exporter-path" in sys.argv[:-1] and "PYTHONPATH" not in os.environ:
    # the other checkout in this process too (render, memory), not only in the servers
    _other = str(Path(sys.argv[sys.argv.index("--exporter-path") + 1]).resolve())
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONPATH": _other})
sys.path.append(str(ROOT))  # after PYTHONPATH: --exporter-path can take precedence

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from mtt_exporter.correlator import Correlator  # noqa: E402
from mtt_exporter.metrics import Metrics  # noqa: E402
from mtt_exporter.model import EVENT_BY_CODE, Notification, Side  # noqa: E402
from mtt_exporter.simulate import SimConfig, generate  # noqa: E402

sys.path.insert(0, str(BENCH))
from serve import add_filler  # noqa: E402

PY = sys.executable
SERVER_CPU, LOAD_CPU = "0", "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exporter_env(a: argparse.Namespace) -> dict[str, str]:
    """Environment of exporter processes: --exporter-path (e.g. an older checkout) first on the path."""
    env = dict(os.environ)
    if a.exporter_path:
        env["PYTHONPATH"] = os.pathsep.join([str(a.exporter_path), env.get("PYTHONPATH", "")])
    return env


def pinned(cpu: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else cmd


#: What Prometheus 3 asks for when it scrapes (its default scrape protocols), and gzip.
SCRAPE_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
              "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
              "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "Accept-Encoding": "gzip",
}


def get(url: str, timeout: float = 30, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


@contextmanager
def server(kind: str, port: int, filler: int = 0, env: dict[str, str] | None = None,
           loop: str = "asyncio", extra: tuple[str, ...] = ()) -> Iterator[subprocess.Popen]:
    """`exporter` (bench/serve.py) or `bare` (bench/bare.py) on 127.0.0.1:port, pinned, until ready."""
    listen = f"127.0.0.1:{port}"
    if kind == "bare":
        cmd = [PY, str(BENCH / "bare.py"), listen, loop]
    else:
        cmd = [PY, str(BENCH / "serve.py"), "--filler", str(filler), "--listen", listen]
        cmd += (["--event-loop", loop] if loop != "asyncio" else []) + list(extra)
    process = subprocess.Popen(pinned(SERVER_CPU, cmd), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while get(f"http://{listen}/-/ready", timeout=1)[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(process: subprocess.Popen, port: int, seconds: float, bodies: Path, **options: Any) -> dict[str, Any]:
    """wrk's result plus the server's CPU time per request: what the server costs, whatever else the machine runs."""
    before = cpu_seconds(process.pid)
    r = wrk(port, seconds, bodies, **options)
    r["cpu_us_per_request"] = (cpu_seconds(process.pid) - before) / r["requests"] * 1e6
    return r


def wrk(port: int, seconds: float, bodies: Path, connections: int = 64, delay_ms: float = 0) -> dict[str, float]:
    """Run wrk on the load CPU; returns its RESULT line plus requests/s."""
    env = dict(os.environ, BODIES=str(bodies), DELAY_MS=str(delay_ms))
    cmd = pinned(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                            "-s", str(BENCH / "notify.lua"), f"http://127.0.0.1:{port}/notify"])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^RESULT (.*)$", out, re.M)
    if match is None:
        raise RuntimeError(f"no RESULT from wrk:\n{out}")
    result = json.loads(match[1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def write_bodies(path: Path, calls: int) -> int:
    """A realistic mix from the simulator (extended events, quirks, 1 % duplicates), one body a line."""
    workload = generate(SimConfig(calls=calls, seed=42, run_id="bench", duplicate_pct=1))
    with path.open("w") as out:
        for d in workload.deliveries:
            out.write(d.payload().decode() + "\n")
    return len(workload.deliveries)


# --- 1. throughput ------------------------------------------------------------------------------


def loops(a: argparse.Namespace) -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio"] if a.exporter_path else ["asyncio", "uvloop"]  # older checkouts lack --event-loop


def baseline_env(a: argparse.Namespace) -> dict[str, str]:
    """Environment of the --baseline-path exporter (an older checkout, e.g. `git archive b0344c1`)."""
    return {**os.environ, "PYTHONPATH": str(a.baseline_path.resolve())}


def bench_throughput(a: argparse.Namespace, bodies: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kinds = ["bare", "exporter"] + (["baseline"] if a.baseline_path else [])
    for loop in loops(a):
        rps: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(a.rounds):
            for kind in kinds:  # alternate, so drift of the machine hits all alike
                port = free_port()
                env = exporter_env(a) if kind == "exporter" else baseline_env(a) if kind == "baseline" else None
                with server("exporter" if kind == "baseline" else kind, port, env=env, loop=loop) as process:
                    wrk(port, min(2, a.seconds), bodies)  # warm-up
                    r = measured(process, port, a.seconds, bodies)
                    if r["errors"] or r["non2xx"]:
                        raise RuntimeError(f"{kind}: {r}")
                    rps[kind].append(r["rps"])
                    cpu[kind].append(r["cpu_us_per_request"])
        out[loop] = {
            "bare_rps": rps["bare"], "exporter_rps": rps["exporter"],
            "bare_cpu_us_per_request": cpu["bare"], "exporter_cpu_us_per_request": cpu["exporter"],
            "ratio_rps_best": max(rps["exporter"]) / max(rps["bare"]),
            # a single-threaded server's ceiling is 1 / CPU time per request
            "ratio_cpu_median": statistics.median(cpu["bare"]) / statistics.median(cpu["exporter"]),
            "ratio_cpu_best": min(cpu["bare"]) / min(cpu["exporter"]),
        }
        if a.baseline_path:
            out[loop].update({
                "baseline_rps": rps["baseline"], "baseline_cpu_us_per_request": cpu["baseline"],
                "baseline_ratio_rps_best": max(rps["baseline"]) / max(rps["bare"]),
                "baseline_ratio_cpu_median": statistics.median(cpu["bare"]) / statistics.median(cpu["baseline"]),
            })
    return out


# --- --record overhead ----------------------------------------------------------------------------


def bench_record(a: argparse.Namespace, bodies: Path) -> dict[str, Any]:
    """Recorder cost in-process (per body, longest flush), and ingest throughput with and without --record."""
    from mtt_exporter.record import Recorder

    lines = bodies.read_bytes().splitlines()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        recorder = Recorder(Path(tmp) / "rec.jsonl", max_bytes=64 * 1024 * 1024, keep=2)
        flushes: list[float] = []
        flush = recorder.flush

        def timed_flush() -> None:
            start = time.perf_counter()
            flush()
            flushes.append(time.perf_counter() - start)

        recorder.flush = timed_flush  # type: ignore[method-assign]
        start = time.perf_counter()
        for i, body in enumerate(lines):
            recorder.write(1_767_225_600.0 + i / 1000, body, "application/json")
        recorder.close()
        out["write_us_per_body"] = (time.perf_counter() - start) / len(lines) * 1e6
        out["flush_max_ms"] = max(flushes) * 1000 if flushes else 0.0
        out["flushes"] = len(flushes)
        rps: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(a.rounds):
            for mode in rps:
                port = free_port()
                extra = ("--record", str(Path(tmp) / f"http-{port}.jsonl")) if mode == "on" else ()
                with server("exporter", port, env=exporter_env(a), extra=extra) as process:
                    wrk(port, min(2, a.seconds), bodies)
                    r = measured(process, port, a.seconds, bodies)
                    rps[mode].append(r["rps"])
                    cpu[mode].append(r["cpu_us_per_request"])
        out["rps_off"], out["rps_on"] = rps["off"], rps["on"]
        out["cpu_us_per_request_off"], out["cpu_us_per_request_on"] = cpu["off"], cpu["on"]
        out["cpu_overhead_median"] = statistics.median(cpu["on"]) / statistics.median(cpu["off"]) - 1
    return out


# --- 2. latency -----------------------------------------------------------------------------------


class Scraper(threading.Thread):
    """GET /metrics every second as Prometheus does (OpenMetrics, gzip); keeps the durations."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.stop = threading.Event()
        self.seconds: list[float] = []
        self.size = 0

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            status, body = get(self.url, headers=SCRAPE_HEADERS)
            if status == 200:
                self.seconds.append(time.perf_counter() - start)
                self.size = len(body)
            self.stop.wait(max(0.0, 1 - (time.perf_counter() - start)))


def bench_latency(a: argparse.Namespace, bodies: Path, max_rps: float) -> dict[str, Any]:
    rate = max_rps / 2
    connections = 32
    delay_ms = connections * 1000 / rate
    out: dict[str, Any] = {"target_rps": rate}
    cases = (("no_scrapes", 0, False), ("scrapes_own", 0, True), ("scrapes_50k", 50_000 - 700, True))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in cases}
    for _ in range(a.latency_rounds):
        for name, filler, scrapes in cases:
            runs[name].append(_latency_run(a, bodies, filler, scrapes, connections, delay_ms))
    for name, results in runs.items():
        # other load on the machine only adds latency: the least disturbed run is the estimate
        out[name] = {**min(results, key=lambda r: r["p99_ms"]), "p99_ms_runs": [r["p99_ms"] for r in results]}
    return out


def _latency_run(a: argparse.Namespace, bodies: Path, filler: int, scrapes: bool, connections: int,
                 delay_ms: float) -> dict[str, Any]:
    port = free_port()
    with server("exporter", port, filler=filler, env=exporter_env(a)) as process:
        series = count_series(get(f"http://127.0.0.1:{port}/metrics")[1])
        wrk(port, 1, bodies, connections, delay_ms)  # warm-up
        scraper = Scraper(port) if scrapes else None
        if scraper:
            scraper.start()
        r = measured(process, port, a.seconds, bodies, connections=connections, delay_ms=delay_ms)
        if scraper:
            scraper.stop.set()
            scraper.join()
            r["scrapes"] = len(scraper.seconds)
            r["scrape_p50_s"] = statistics.median(scraper.seconds) if scraper.seconds else None
            r["scrape_bytes"] = scraper.size
        r["series"] = series
        return r


# --- 3. /metrics rendering ------------------------------------------------------------------------


def exporter_registry(series: int) -> tuple[CollectorRegistry, Metrics]:
    """The exporter's registry, filled to about `series` samples."""
    from mtt_exporter.server import default_registry

    registry = default_registry()
    metrics = Metrics(registry)
    correlator = Correlator()
    metrics.track(correlator.__len__)
    own = count_series(generate_latest(registry))
    add_filler(registry, max(0, series - own))
    return registry, metrics


def renderer() -> Any:
    """The exporter's renderer (#11), or prometheus_client's for checkouts before it."""
    from mtt_exporter import metrics

    return getattr(metrics, "render", generate_latest)


def ingest(metrics: Metrics, notifications: list[Notification], now: float) -> None:
    """What a second of ingestion records: the notifications and the correlator's facts."""
    correlator = Correlator()
    for n in notifications:
        duplicate, facts = correlator.apply(n, now)
        metrics.record_notification(n, now, duplicate)
        metrics.record_facts(facts)


def count_series(exposition: bytes) -> int:
    return sum(1 for line in exposition.splitlines() if line and not line.startswith(b"#"))


def bench_render(a: argparse.Namespace, bodies: Path | None) -> dict[str, Any]:
    """Median of five renders: "cold" formats every series (the first scrape), "warm" a scrape
    after a second of ingestion (5,000 notifications), when only what changed is formatted again."""
    from mtt_exporter.model import parse

    render = renderer()
    lines = bodies.read_bytes().splitlines()[:5000] if bodies else []
    second = [parse(json.loads(line)) for line in lines]
    out = {}
    for target in a.render_series:
        cold, warm, warm_gzip = [], [], []
        for _ in range(5):
            registry, metrics = exporter_registry(target)
            start = time.perf_counter()
            text = render(registry)
            cold.append(time.perf_counter() - start)
            ingest(metrics, second, 1_767_225_600.0)
            start = time.perf_counter()
            text = render(registry)
            warm.append(time.perf_counter() - start)
            if render is not generate_latest:  # the same as prometheus_client's (but process_*: it changes)
                own = [line for line in text.splitlines() if not line.startswith((b"process_", b"# HELP process_"))]
                library = [line for line in generate_latest(registry).splitlines()
                           if not line.startswith((b"process_", b"# HELP process_"))]
                assert own == library, "the renderer differs from prometheus_client"
            if render is not generate_latest:  # what a Prometheus scrape costs: OpenMetrics, gzip
                render(registry, True, gzip=True)  # the scrape before
                ingest(metrics, second, 1_767_225_600.0)
                start = time.perf_counter()
                render(registry, True, gzip=True)
                warm_gzip.append(time.perf_counter() - start)
        out[str(target)] = {"series": count_series(text), "seconds_median": statistics.median(cold),
                            "warm_seconds_median": statistics.median(warm), "renderer": render.__module__,
                            "warm_openmetrics_gzip_seconds_median": statistics.median(warm_gzip) if warm_gzip else None,
                            "bytes": len(text), "gzip_bytes": len(gzip.compress(text, 6))}
    return out


# --- 4. memory per in-flight call -------------------------------------------------------------------

def in_flight(i: int, base: float, kind: str) -> list[Notification]:
    """Call i in conversation (extended events: caller prompt, o, s, B prompt, t; no h yet) or ringing (o)."""
    e = EVENT_BY_CODE
    conf, a, b = f"{i:032X}", f"79{i:09d}", f"78{i:09d}"  # ids as long as MTT's, numbers of their own
    if kind == "ringing":
        return [Notification(conf, e["o"], base, redirect_number=b, number_a=a)]
    return [
        Notification(conf, e["sp"], base, Side.A, number_a=a),
        Notification(conf, e["ep"], base + 7, Side.A, number_a=a),
        Notification(conf, e["o"], base + 8, redirect_number=b, number_a=a),
        Notification(conf, e["s"], base + 19, redirect_number=b, number_a=a),
        Notification(conf, e["sp"], base + 19, Side.B, redirect_number=b, number_a=a),
        Notification(conf, e["ep"], base + 28, Side.B, redirect_number=b, number_a=a),
        Notification(conf, e["t"], base + 29, redirect_number=b, number_a=a),
    ]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def memory_child(calls: int, kind: str) -> None:
    """Runs in a fresh interpreter: RSS growth per call held by the correlator."""
    correlator = Correlator(max_calls=calls + 1)
    gc.collect()
    before = rss_bytes()
    now = 1_767_225_600.0
    for i in range(calls):
        for n in in_flight(i, now, kind):
            correlator.apply(n, now)
    gc.collect()
    rss = rss_bytes()
    start = time.perf_counter()
    gc.collect()  # the pause of a full collection with this many calls held
    print(json.dumps({"calls": len(correlator), "bytes_per_call": (rss - before) / calls,
                      "full_gc_seconds": time.perf_counter() - start}))


def bench_memory(a: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for kind in ("talking", "ringing"):
        for calls in a.memory_calls:
            result = subprocess.run([PY, __file__, "--memory-child", str(calls), kind], capture_output=True, text=True,
                                    check=True, env=exporter_env(a))
            out[f"{kind}_{calls}"] = json.loads(result.stdout)
    return out


# --- 5. start-up ----------------------------------------------------------------------------------


def bench_startup(a: argparse.Namespace) -> dict[str, Any]:
    times = []
    for _ in range(a.startup_runs):
        port = free_port()
        start = time.perf_counter()
        process = subprocess.Popen([PY, "-m", "mtt_exporter", "--listen", f"127.0.0.1:{port}"], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=exporter_env(a))
        try:
            while get(f"http://127.0.0.1:{port}/-/ready", timeout=1)[0] != 200:
                if process.poll() is not None:
                    raise RuntimeError("exporter exited")
                time.sleep(0.005)
            times.append(time.perf_counter() - start)
        finally:
            process.terminate()
            process.wait(10)
    return {"seconds": times, "median": statistics.median(times)}


# --- main -------------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import importlib.metadata

    import aiohttp
    import msgspec
    import pydantic

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "prometheus_client": importlib.metadata.version("prometheus-client"),
            "pydantic": pydantic.__version__, "msgspec": msgspec.__version__, "wrk": wrk_version, "loadavg_at_start": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="throughput,latency,record,render,memory,startup")
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds; the best is reported")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run of every benchmark, no targets")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    parser.add_argument("--exporter-path", type=Path, help="run this checkout's exporter package instead (before/after)")
    parser.add_argument("--baseline-path", type=Path,
                        help="also measure this checkout's exporter, in the same rounds (throughput) and render")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.memory_child:
        memory_child(int(a.memory_child[0]), a.memory_child[1])
        return
    a.render_series = [1_000, 10_000, 50_000]
    a.memory_calls = [100_000, 500_000]
    a.startup_runs = 5
    a.latency_rounds = 3
    body_calls = 20_000
    if a.smoke:
        a.rounds, a.seconds, a.render_series, a.memory_calls, a.startup_runs, body_calls = 1, 1, [1_000], [1_000], 1, 50
        a.latency_rounds = 1
    only = set(a.only.split(","))
    results: dict[str, Any] = {"environment": environment(), "smoke": a.smoke}
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies.jsonl"
        if only & {"throughput", "latency", "record", "render"}:
            results["bodies"] = write_bodies(bodies, body_calls)
        if "throughput" in only:
            results["throughput"] = bench_throughput(a, bodies)
            print(json.dumps(results["throughput"]), flush=True)
        if "latency" in only:
            # half of the maximum: from CPU time per request, robust to other load on the machine
            max_rps = (1e6 / min(results["throughput"]["asyncio"]["exporter_cpu_us_per_request"])
                       if "throughput" in results else 4000)
            results["latency"] = bench_latency(a, bodies, max_rps)
            print(json.dumps(results["latency"]), flush=True)
        if "record" in only:
            results["record"] = bench_record(a, bodies)
            print(json.dumps(results["record"]), flush=True)
        if "render" in only:
            results["render"] = bench_render(a, bodies)
            print(json.dumps(results["render"]), flush=True)
            if a.baseline_path:  # the same measurement in a process of the other checkout
                other = Path(tmp) / "baseline-render.json"
                subprocess.run([PY, __file__, "--only", "render", "--out", str(other)] + (["--smoke"] if a.smoke else []),
                               env=baseline_env(a), check=True, capture_output=True)
                results["render_baseline"] = json.loads(other.read_text())["render"]
                print(json.dumps(results["render_baseline"]), flush=True)

    if "memory" in only:
        results["memory"] = bench_memory(a)
        print(json.dumps(results["memory"]), flush=True)
    if "startup" in only:
        results["startup"] = bench_startup(a)
        print(json.dumps(results["startup"]), flush=True)
    a.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
