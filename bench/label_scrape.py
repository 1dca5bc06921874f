"""Ingest latency while /metrics is scraped every second, without a label map and at its caps.

    .venv/bin/python bench/label_scrape.py [--seconds 8] [--rounds 2] [--rps 4000]

The exporter (bench/serve.py, pinned to CPU 0) takes the simulator's traffic on the simulated
lines and destinations from wrk (CPU 1) at a fixed rate, while a thread scrapes /metrics every
second: once without --label-map (622 series), once with a map of 50 lines and 50 destinations
(24,643 series). The least disturbed round (lowest p99) of each is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_cap import label_map  # noqa: E402
from run import Scraper, count_series, free_port, get, measured, server  # noqa: E402

from mtt_exporter.simulate import SimConfig, generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rps", type=float, default=4000)
    args = parser.parse_args()
    connections = 32
    delay_ms = connections * 1000 / args.rps
    with tempfile.TemporaryDirectory() as tmp:
        bodies, cap = Path(tmp) / "bodies.jsonl", Path(tmp) / "cap.yml"
        workload = generate(SimConfig(calls=5000, seed=42, run_id="bench", duplicate_pct=1))
        bodies.write_text("".join(d.payload().decode() + "\n" for d in workload.deliveries))
        cap.write_text(label_map(50, 50))
        out = {}
        for name, extra in (("no label map", ()), ("50 lines, 50 destinations", ("--label-map", str(cap)))):
            runs = []
            for _ in range(args.rounds):
                port = free_port()
                with server("exporter", port, extra=extra) as process:
                    series = count_series(get(f"http://127.0.0.1:{port}/metrics")[1])
                    scraper = Scraper(port)
                    scraper.start()
                    r = measured(process, port, args.seconds, bodies, connections=connections, delay_ms=delay_ms)
                    scraper.stop.set()
                    scraper.join()
                    runs.append({"series": series, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "rps": round(r["rps"]),
                                 "cpu_us_per_request": round(r["cpu_us_per_request"], 1), "scrapes": len(scraper.seconds),
                                 "scrape_p50_s": round(sorted(scraper.seconds)[len(scraper.seconds) // 2], 3)})
            out[name] = {**min(runs, key=lambda r: r["p99_ms"]), "p99_ms_runs": [r["p99_ms"] for r in runs]}
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
