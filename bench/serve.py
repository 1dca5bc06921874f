"""The exporter as `mtt-exporter` runs it, plus optional filler series to make /metrics large.

    python bench/serve.py --filler N [exporter flags...]

The exporter's own exposition is a few hundred series (closed label sets); the filler adds
N more, half counters, half histograms, to measure rendering and scrapes at 10k or 50k.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # the checkout, unless PYTHONPATH names another

from prometheus_client import CollectorRegistry  # noqa: E402

from mtt_exporter import log as logsetup, server  # noqa: E402
from mtt_exporter.__main__ import serve  # noqa: E402
# the exporter's metric classes (before #11, metrics.py imported prometheus_client's under these names)
from mtt_exporter.metrics import Counter, Histogram  # noqa: E402
from mtt_exporter.settings import load  # noqa: E402

#: Series per filler histogram child: 12 buckets, +Inf, _count, _sum.
HISTOGRAM_SERIES = 15


def add_filler(registry: CollectorRegistry, series: int) -> None:
    """About `series` extra series: half in a labelled counter, half in a labelled histogram."""
    counter = Counter("bench_filler_events", "Filler.", ["instance_id"], registry=registry)
    histogram = Histogram("bench_filler_seconds", "Filler.", ["instance_id"], registry=registry,
                          buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 900))
    for i in range(series // 2):
        counter.labels(str(i)).inc(i)
    for i in range((series - series // 2) // HISTOGRAM_SERIES):
        histogram.labels(str(i)).observe(i % 100)


def main() -> None:
    args = sys.argv[1:]
    filler = 0
    if args[:1] == ["--filler"]:
        filler, args = int(args[1]), args[2:]
    settings = load(args)
    logsetup.setup(settings.log_level, settings.log_format)
    default = server.default_registry

    def registry_with_filler() -> CollectorRegistry:
        registry = default()
        add_filler(registry, filler)
        return registry

    server.default_registry = registry_with_filler  # create_app calls it for a real process
    loop_factory = None
    if getattr(settings, "event_loop", "asyncio") != "asyncio":  # older checkouts have no --event-loop
        from mtt_exporter.__main__ import _loop_factory

        loop_factory = _loop_factory(settings.event_loop)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings))


if __name__ == "__main__":
    main()
