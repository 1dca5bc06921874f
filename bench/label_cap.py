"""Series and /metrics render time at the label map's caps (50 lines, 50 destinations, the defaults).

    python bench/label_cap.py [--lines 50] [--destinations 50]

Counts the exposition's samples without a map and at the caps, and times, median of 7: the
exporter's own renderer (`Metrics.exposition`, what /metrics serves) on its first scrape and on a
scrape after one notification's worth of changes, in text and in OpenMetrics with gzip (as
Prometheus 3 asks), beside prometheus_client's `generate_latest` of the same registry.
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
from mtt_exporter.model import Reason
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
    start = time.perf_counter()
    body, _ = metrics.exposition()
    first = time.perf_counter() - start

    def median(render) -> float:
        times = []
        for _ in range(7):
            metrics.reject(Reason.INVALID)  # a change since the last scrape, as under traffic
            start = time.perf_counter()
            render()
            times.append(time.perf_counter() - start)
        return round(statistics.median(times), 4)

    om = "application/openmetrics-text; version=1.0.0"
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return {"series": series, "bytes": len(body), "gzip_bytes": len(gzip.compress(body, 6)),
            "render_first_seconds": round(first, 4),
            "render_text_seconds_median": median(metrics.exposition),
            "render_openmetrics_gzip_seconds_median": median(lambda: metrics.exposition(om, "gzip")),
            "prometheus_client_generate_latest_seconds_median": median(lambda: generate_latest(registry))}


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
