"""Ingest cost per notification of the correlator + metrics path, in CPU instructions (callgrind).

Instruction counts are exact and repeatable on a shared, noisy machine, where timings are
not. For each source tree (this one, and e.g. main's code unpacked with `git archive`) a
child interpreter parses the simulator's notifications, then either stops ("setup") or
also feeds them through `Correlator.apply`, `Metrics.record_notification` and
`Metrics.record_facts`, ticking `Correlator.expire` each receipt second as the server does
("full"). (full - setup) / notifications is the cost of one notification. The start-up
objects are frozen out of the garbage collector's scans first, as the server does. One core.

    git archive main | tar -x -C /tmp/main-tree
    python bench/ingest_cost.py --tree main=/tmp/main-tree --tree branch=. --calls 2000
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys
tree, mode, bodies_path, map_path = sys.argv[1:5]
sys.path.insert(0, tree)
from prometheus_client import CollectorRegistry
from mtt_exporter.correlator import Correlator
from mtt_exporter.metrics import Metrics
from mtt_exporter.model import parse
START = 1_767_225_600.0
items = [(START + at, parse(body)) for at, body in json.load(open(bodies_path))]
metrics = Metrics(CollectorRegistry())
if map_path != "-":
    from mtt_exporter.labelmap import load
    labels = load(map_path)
    metrics.set_labels(labels)
    correlator = Correlator(labels=labels)
else:
    correlator = Correlator()
# as the server does once started (__main__.serve): start-up objects leave the collector's scans
import gc
gc.collect()
gc.freeze()
if mode == "full":
    next_tick = START
    for now, n in items:
        while now >= next_tick:
            metrics.record_facts(correlator.expire(next_tick))
            next_tick += 1.0
        duplicate, facts = correlator.apply(n, now)
        metrics.record_notification(n, now, duplicate)
        metrics.record_facts(facts)
    metrics.record_facts(correlator.expire(next_tick + 3600))
print(len(items))
"""


def instructions(tree: Path, mode: str, bodies: Path, label_map: Path | None) -> tuple[int, int]:
    """(instructions, notifications) of one child run under callgrind."""
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", CHILD,
         str(tree), mode, str(bodies), str(label_map) if label_map else "-"],
        capture_output=True, text=True, check=True, env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin"},
    )
    collected = re.search(r"Collected : (\d+)", result.stderr)
    assert collected, result.stderr[-2000:]
    return int(collected.group(1)), int(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH", help="a source tree to measure")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--mapped", action="store_true", help="also measure trees that have a label map with one")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from mtt_exporter.simulate import SimConfig, generate, label_map_yaml

    config = SimConfig(calls=args.calls, seed=1, duplicate_pct=2, reorder_pct=5, lines=3, destinations=3)
    workload = generate(config)
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies.json"
        bodies.write_text(json.dumps([[d.at, d.body] for d in workload.deliveries if isinstance(d.body, dict)]))
        label_map = Path(tmp) / "map.yml"
        label_map.write_text(label_map_yaml(config))
        results = []
        for spec in args.tree:
            name, _, path = spec.partition("=")
            tree = Path(path).resolve()
            variants = [(name, None)]
            if args.mapped and (tree / "mtt_exporter" / "labelmap.py").exists():
                variants.append((f"{name} + label map", label_map))
            for label, map_path in variants:
                setup, count = instructions(tree, "setup", bodies, map_path)
                full, _ = instructions(tree, "full", bodies, map_path)
                per = (full - setup) / count
                results.append({"tree": label, "notifications": count, "instructions_per_notification": round(per)})
                print(f"{label:30} {count} notifications  {per:,.0f} instructions each", flush=True)
    base = results[0]["instructions_per_notification"]
    for r in results:
        r["vs_first"] = round(r["instructions_per_notification"] / base - 1, 4)
        print(f"{r['tree']:30} {r['vs_first']:+.1%} vs {results[0]['tree']}")
    if args.out:
        args.out.write_text(json.dumps({"calls": args.calls, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
