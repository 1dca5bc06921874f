"""Cost of the state file: snapshot, write and load times and size for N calls held.

    .venv/bin/python bench/state.py [--calls 100000,500000]

Fills a correlator with the simulator's calls (parsed as the exporter parses them), every
call cut after a random number of its notifications so a realistic share is in progress,
then times what shutdown does (snapshot in the event loop + JSON and atomic write) and what
start-up does (read, JSON, load).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))

from mtt_exporter.correlator import Correlator  # noqa: E402
from mtt_exporter.model import PayloadError, parse  # noqa: E402
from mtt_exporter.simulate import SimConfig, Simulation  # noqa: E402
from mtt_exporter.statefile import StateFile  # noqa: E402


def filled(calls: int, seed: int = 1) -> Correlator:
    correlator = Correlator(max_calls=calls + 1)
    rng = random.Random(seed)
    cut: dict[int, int] = {}
    now = time.time()
    for delivery in Simulation(SimConfig(calls=calls, seed=seed, quirks=False)):
        keep = cut.setdefault(delivery.call, rng.randrange(1, 14))
        if keep <= 0 or isinstance(delivery.body, bytes):
            continue
        cut[delivery.call] = keep - 1
        try:
            correlator.apply(parse(delivery.body), now)
        except PayloadError:
            pass
    return correlator


def measure(calls: int) -> dict:
    correlator = filled(calls)
    path = Path(tempfile.mkdtemp(prefix="mtt-state-")) / "state.json"
    state = StateFile(path, correlator)
    t0 = time.perf_counter()
    snapshot = state.snapshot()
    t1 = time.perf_counter()
    state.write(snapshot)
    t2 = time.perf_counter()
    size = path.stat().st_size
    loaded = Correlator(max_calls=calls + 1)
    StateFile(path, loaded).load()
    t3 = time.perf_counter()
    assert len(loaded) == len(correlator)
    return {"calls": len(correlator), "in_progress": correlator.in_progress(), "bytes": size,
            "snapshot_s": round(t1 - t0, 2), "write_s": round(t2 - t1, 2), "load_s": round(t3 - t2, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="100000,500000", help="comma-separated numbers of calls")
    args = parser.parse_args(argv)
    print("| calls held | in progress | file | snapshot (loop) | JSON + write (thread) | load at start |")
    print("|---|---|---|---|---|---|")
    for n in (int(x) for x in args.calls.split(",")):
        r = measure(n)
        print(f"| {r['calls']:,} | {r['in_progress']:,} | {r['bytes'] / 1e6:.0f} MB | {r['snapshot_s']} s "
              f"| {r['write_s']} s | {r['load_s']} s |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
