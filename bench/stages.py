"""Instructions per notification of each in-process stage (parse, correlator, metrics), by callgrind.

    .venv/bin/python bench/stages.py [--items N]

Decodes N bodies of bench/run.py into `Wire`s, then runs one stage over all of them 1 and 3
times, each under `valgrind --tool=callgrind`; (count of 3 - count of 1) / 2N is what the stage
costs per notification, start-up and decoding excluded. "apply" is `Correlator.apply` on a
fresh correlator, "apply+metrics" adds `Metrics.record_notification` and `record_facts`.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.append(str(BENCH.parent))
sys.path.insert(0, str(BENCH))

STAGES = ("parse", "apply", "apply+metrics")


def run_stage(bodies: Path, stage: str, reps: int) -> None:
    """The measured program: decode, parse once, then `reps` times the stage."""
    from prometheus_client import CollectorRegistry

    from mtt_exporter.correlator import Correlator
    from mtt_exporter.metrics import Metrics
    from mtt_exporter.model import decode_wire, parse

    items = []
    for body in bodies.read_bytes().splitlines():
        typed = decode_wire(body)
        items.extend(typed if isinstance(typed, list) else [typed])
    received = 1767225600.0 + 86400  # the simulator's day, one day later
    notifications = [parse(item, received) for item in items]
    print(len(items))
    metrics = Metrics(CollectorRegistry())
    for _ in range(reps):
        if stage == "parse":
            for item in items:
                parse(item, received)
            continue
        correlator = Correlator()
        for i, n in enumerate(notifications):
            duplicate, facts = correlator.apply(n, 1000.0 + i * 0.01)
            if stage == "apply+metrics":
                metrics.record_notification(n, received, duplicate)
                metrics.record_facts(facts)


def count(bodies: Path, stage: str, reps: int, out: Path) -> tuple[int, int]:
    """(instructions, notifications) of one run of the measured program."""
    result = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                             __file__, "--run", stage, str(reps), str(bodies)], capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", result.stderr)[1]), int(result.stdout.split()[-1])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--run":
        run_stage(Path(sys.argv[4]), sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--stages", default=",".join(STAGES))
    a = parser.parse_args()
    from run import write_bodies

    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies.jsonl"
        write_bodies(bodies, a.items // 6 + 50)
        bodies.write_bytes(b"\n".join(bodies.read_bytes().splitlines()[: a.items]) + b"\n")
        for stage in a.stages.split(","):
            (once, items), (thrice, _) = (count(bodies, stage, reps, Path(tmp) / f"cg.{reps}") for reps in (1, 3))
            print(f"{stage}: {(thrice - once) / (2 * items):,.0f} instructions per notification", flush=True)


if __name__ == "__main__":
    main()
