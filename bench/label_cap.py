"""Series and /metrics render time at the label map's caps (50 lines, 50 destinations, the defaults).

    python bench/label_cap.py [--lines 50] [--destinations 50]

Counts the exposition's samples without a map and at the caps, and times `generate_latest`
(the text format, as Prometheus scrapes it) on the exporter's registry, median of 7.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time

from prometheus_client import generate_latest

from mtt_exporter.correlator import Correlator
from mtt_exporter.labelmap import parse
from mtt_exporter.metrics import Metrics
from mtt_exporter.server import default_registry


def label_map(lines: int, destinations: int) -> str:
    out = ["lines:"] + [f'  "7958{i:07d}": line-{i}' for i in range(lines)]
    out += ["destinations:"] + [f'  "7968{i:07d}": destination-{i}' for i in range(destinations)]
    return "\n".join(out) + "\n"


def measure(text: str | None) -> dict:
    registry = default_registry()
    metrics = Metrics(registry)
    metrics.track(Correlator().__len__)
    if text is not None:
        metrics.set_labels(parse(text))
    body = generate_latest(registry)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        generate_latest(registry)
        times.append(time.perf_counter() - start)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return {"series": series, "render_seconds_median": round(statistics.median(times), 4), "bytes": len(body),
            "gzip_bytes": len(gzip.compress(body, 6))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=50)
    parser.add_argument("--destinations", type=int, default=50)
    args = parser.parse_args()
    results = {"no label map": measure(None),
               f"{args.lines} lines, {args.destinations} destinations": measure(label_map(args.lines, args.destinations))}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
