"""Render every dashboard's panels from their real PromQL into docs/pictures/<dashboard>.png (`make pictures`).

Grafana cannot run here, so this is what can be shown honestly: the exporter and Debian's
Prometheus are started as in tests/test_prometheus.py (its helpers are reused), fed for a few
minutes by the simulator at real speed plus the crafted calls and faults of the integration test
(refusals, duplicates, conflicts, evictions), with the call state on a local redis-server when
there is one (for the state backend panels); then each panel's targets of dashboards/*.json are
run through Prometheus' query API with the template variables substituted. Each PNG is laid out
on the dashboard's grid, with the panels' titles, units and legends. Panel types are read from
the JSON: stat, gauge and bar gauge as a value, heatmap as buckets over time, anything else as
lines, so panels added later render without a change here.

    python scripts/render_dashboards.py [--minutes 5] [--out docs/pictures]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.lines  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import yaml  # noqa: E402
from matplotlib.dates import DateFormatter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtt_exporter.replay import post_all  # noqa: E402
from mtt_exporter.simulate import SimConfig, Simulation, label_map_yaml  # noqa: E402
from tests import crafted_calls  # noqa: E402
from tests.grafana import RULE_FILES, dashboards, substitute  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.test_prometheus import (JOB, TOKEN, Stack, _start, _stop, free_port, grafana_variables,  # noqa: E402
                                   http, wait_for)

MAX_CALLS = 400
OPEN_CALLS = 30  # calls that never end: expired by the TTL
TTL = 90  # above the longest simulated conversation: only the open calls expire
#: Grafana's $__rate_interval at a 15 s scrape interval (here Prometheus scrapes every second).
RATE_INTERVAL = "1m"
#: Three named lines and destinations, and a share of unmapped numbers (`other`), as an operator's map gives.
LINES = dict(lines=3, destinations=3, mapped=True)
CAPTION = "Rendering of the panels' PromQL against a real Prometheus fed by the simulator (not a Grafana screenshot)"
#: Grafana's named colours, roughly.
COLOURS = {"green": "#56a64b", "red": "#e02f44", "orange": "#ff9830", "yellow": "#f2cc0c", "blue": "#3274d9",
           "purple": "#a352cc", "dark-orange": "#fa6400", "dark-red": "#c4162a", "dark-green": "#37872d",
           "super-light-green": "#c8f2c2", "text": "#333333", "transparent": "#ffffff"}


@contextlib.contextmanager
def stack(workdir: Path) -> Iterator[Stack]:
    """The exporter and Prometheus of the integration test, scraping every second with the project's rules."""
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        raise SystemExit("render_dashboards: prometheus is not installed (scripts/system-deps.sh installs it)")
    exporter_port, prometheus_port = free_port(), free_port()
    redis_bin = shutil.which("redis-server")
    backend = RedisServer(redis_bin, workdir) if redis_bin else None  # fills the dashboards' state backend row
    if backend is not None:
        backend.start()
    (workdir / "labels.yml").write_text(label_map_yaml(SimConfig(**LINES)))
    exporter = _start([sys.executable, "-m", "mtt_exporter", "--listen", f"127.0.0.1:{exporter_port}",
                       "--label-map", str(workdir / "labels.yml"),
                       "--token", TOKEN, "--call-end-grace", "1", "--call-ttl", str(TTL),
                       "--max-calls", str(MAX_CALLS), *(["--state-backend", backend.url] if backend else [])],
                      workdir / "mtt_exporter.log")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(f) for f in RULE_FILES],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = _start([prometheus_bin, f"--config.file={workdir / 'prometheus.yml'}",
                         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{prometheus_port}",
                         "--enable-feature=exemplar-storage", "--log.level=warn"], workdir / "prometheus.log")
    s = Stack(f"http://127.0.0.1:{exporter_port}", f"http://127.0.0.1:{prometheus_port}", root=ROOT, level="job")
    try:
        wait_for("the exporter", lambda: http(f"{s.exporter}/-/ready")[0] == 200)
        wait_for("prometheus", lambda: http(f"{s.prometheus}/-/ready")[0] == 200)
        wait_for("a first scrape", lambda: s.value(f'up{{job="{JOB}"}}') != {})
        yield s
    finally:
        _stop(prometheus)
        _stop(exporter)
        if backend is not None:
            backend.stop()


def feed(s: Stack, seconds: float) -> tuple[float, float]:
    """Simulated calls at real speed for `seconds` (event times are now), with the crafted calls and faults of
    the integration test spread over the second quarter; returns the time range to show."""
    rate = 1.5
    config = SimConfig(calls=max(1, round(seconds * rate)), rate=rate, speed=1, start=int(time.time()), seed=7,
                       run_id="pictures", ring_mean=6, talk_mean=25, talk_max=80, duplicate_pct=2, reorder_pct=5,
                       malformed_pct=1, unknown_event_pct=1, **LINES)
    start = time.time()

    def crafted() -> None:
        time.sleep(seconds / 4)
        workload = crafted_calls.calls(time.time())
        faults = crafted_calls.faults(time.time(), OPEN_CALLS)
        bodies = [(b, True) for b in workload.deliveries] + [(workload.deliveries[0], True),  # a retry: duplicates
                                                             (faults.conflicting, True), (faults.open_calls, True)]
        bodies += faults.refused
        for body, with_token in bodies:
            s.post(body, with_token)
            time.sleep(seconds / 4 / len(bodies))

    side = threading.Thread(target=crafted, daemon=True)
    side.start()
    deliveries = itertools.takewhile(lambda d: d.at <= seconds, Simulation(config))  # calls open at the end stay open
    asyncio.run(post_all(deliveries, f"{s.exporter}/notify/{TOKEN}", speed=1.0, concurrency=8))
    side.join()
    time.sleep(3)  # the last scrapes and rule evaluations
    return start, time.time()


# --- values and units ---------------------------------------------------------------------------

def fmt(value: float, unit: str | None) -> str:
    """A value as Grafana would print it in this unit (roughly)."""
    if value is None or not math.isfinite(value):
        return "NaN" if value is not None and math.isnan(value) else "-"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "percent":
        return f"{value:.1f}%"
    if unit == "s":
        a = abs(value)
        if a and a < 1:
            return f"{value * 1000:.0f} ms"
        if a < 60:
            return f"{value:.1f} s"
        if a < 3600:
            return f"{value / 60:.1f} min"
        return f"{value / 3600:.1f} h"
    if unit == "bytes":
        for step, name in ((2 ** 30, "GiB"), (2 ** 20, "MiB"), (2 ** 10, "KiB")):
            if abs(value) >= step:
                return f"{value / step:.1f} {name}"
        return f"{value:.0f} B"
    suffix = {"cpm": " cpm", "cps": " c/s", "ops": " ops/s", "reqps": " req/s"}.get(unit or "", "")
    for step, name in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= step:
            return f"{value / step:.3g}{name}{suffix}"
    return f"{value:.3g}{suffix}"


def legend(template: str | None, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced; none or __auto: the labels."""
    if template and template != "__auto":
        text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template).strip()
        if text and not text.startswith("_"):  # matplotlib hides labels starting with _
            return text
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or labels.get("__name__", "value")


def colour(name: str | None, default: str = "#3274d9") -> str:
    if not name:
        return default
    return name if name.startswith(("#", "rgb")) and not name.startswith("rgba") else COLOURS.get(name, default)


def threshold_colour(panel: dict, value: float) -> str:
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
    chosen = None
    for step in steps:
        if step.get("value") is None or (math.isfinite(value) and value >= step["value"]):
            chosen = step.get("color")
    return colour(chosen, "#56a64b")


def mapped(panel: dict, value: float) -> str | None:
    """The text of a value mapping that matches, if any."""
    for mapping in panel.get("fieldConfig", {}).get("defaults", {}).get("mappings", []):
        options = mapping.get("options", {})
        if mapping.get("type") == "value":
            key = f"{value:g}" if math.isfinite(value) else None
            if key in options:
                return options[key].get("text")
        elif mapping.get("type") == "special" and options.get("match") == "nan" and math.isnan(value):
            return options.get("result", {}).get("text")
    return None


# --- panels -------------------------------------------------------------------------------------

Series = tuple[str, list[float], list[float]]  # legend, times, values


def run_queries(s: Stack, panel: dict, variables: dict[str, str], start: float, end: float, step: float) -> list[Series]:
    found: list[Series] = []
    for target in panel.get("targets", []):
        if "expr" not in target or target.get("hide"):
            continue
        expr = substitute(target["expr"], {**variables, "__interval": f"{step:g}s"})
        result = s.api("query_range", query=expr, start=start, end=end, step=step)["result"]
        for series in result:
            times = [float(t) for t, _ in series["values"]]
            values = [float(v) for _, v in series["values"]]
            found.append((legend(target.get("legendFormat"), series["metric"]), times, values))
    return found


def draw_value(ax: Any, panel: dict, series: list[Series]) -> None:
    """stat, gauge, bargauge: the last value of each series, coloured by the thresholds."""
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    ax.set_axis_off()
    if not series:
        ax.text(0.5, 0.4, "No data", ha="center", va="center", fontsize=12, color="#888888", transform=ax.transAxes)
        return
    text_mode = panel.get("options", {}).get("textMode", "auto")
    shown = series[:4]
    width = 1 / len(shown)
    for i, (name, _, values) in enumerate(shown):
        finite = [v for v in values if math.isfinite(v)]
        last = finite[-1] if finite else math.nan
        text = mapped(panel, last) or fmt(last, unit)
        box = plt.Rectangle((i * width + 0.01, 0.02), width - 0.02, 0.8, transform=ax.transAxes,
                            color=threshold_colour(panel, last), alpha=0.85)
        ax.add_patch(box)
        ax.text(i * width + width / 2, 0.38, text, ha="center", va="center", fontsize=15 if len(shown) == 1 else 11,
                color="white", weight="bold", transform=ax.transAxes)
        if text_mode in ("value_and_name", "name") or (len(shown) > 1 and text_mode == "auto"):
            ax.text(i * width + width / 2, 0.7, name[:40], ha="center", va="center", fontsize=7, color="white",
                    transform=ax.transAxes)


def draw_heatmap(ax: Any, panel: dict, series: list[Series]) -> None:
    """Buckets (cumulative `le` series, de-accumulated as Grafana's heatmap format does) over time."""
    buckets = []
    for name, times, values in series:
        try:
            le = float(name.replace("+Inf", "inf"))
        except ValueError:
            continue
        buckets.append((le, times, values))
    if not buckets:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color="#888888", transform=ax.transAxes)
        return
    buckets.sort(key=lambda b: b[0])
    times = sorted({t for _, ts, _ in buckets for t in ts})
    index = {t: i for i, t in enumerate(times)}
    grid = [[0.0] * len(times) for _ in buckets]
    for row, (_, ts, values) in enumerate(buckets):
        for t, v in zip(ts, values):
            grid[row][index[t]] = v if math.isfinite(v) else 0.0
    for row in range(len(grid) - 1, 0, -1):
        grid[row] = [max(a - b, 0.0) for a, b in zip(grid[row], grid[row - 1])]
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="Oranges", interpolation="nearest",
                      norm=matplotlib.colors.PowerNorm(0.5))
    y_unit = panel.get("options", {}).get("yAxis", {}).get("unit", "s")
    ax.set_yticks(range(len(buckets)))
    ax.set_yticklabels([("+Inf" if math.isinf(le) else fmt(le, y_unit)) for le, _, _ in buckets], fontsize=6)
    ticks = list(range(0, len(times), max(1, len(times) // 5)))
    ax.set_xticks(ticks)
    ax.set_xticklabels([datetime.fromtimestamp(times[i]).strftime("%H:%M:%S") for i in ticks], fontsize=7)
    bar = plt.colorbar(image, ax=ax, pad=0.01)
    bar.ax.tick_params(labelsize=6)
    bar.set_label(panel.get("options", {}).get("cellValues", {}).get("unit", ""), fontsize=6)


def draw_lines(ax: Any, panel: dict, series: list[Series]) -> None:
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    if not series:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color="#888888", transform=ax.transAxes)
    for name, times, values in series[:12]:
        ax.plot([datetime.fromtimestamp(t) for t in times], values, label=name[:45], linewidth=1.2)
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt(v, unit)))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=6, loc="upper left", ncol=2 if len(series) > 4 else 1, framealpha=0.7)
        if len(series) > 12:
            ax.text(1, -0.12, f"first 12 of {len(series)} series", ha="right", fontsize=6, transform=ax.transAxes)


def render(s: Any, board: dict, start: float, end: float, out: Path) -> None:
    """One PNG of `board` (a dashboard's JSON) from the queries `s.api` answers over [start, end]."""
    variables = {**grafana_variables(s), "__rate_interval": RATE_INTERVAL, "__range": f"{round(end - start)}s"}
    step = max(1.0, round((end - start) / 240))
    items = board["panels"]  # a collapsed row's panels are inside it: only its title shows, as in Grafana
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in items)
    unit_h = 0.42  # inches per grid row
    fig = plt.figure(figsize=(20, bottom * unit_h + 1.0))
    height = bottom * unit_h + 1.0
    fig.suptitle(f"{board['title']}", fontsize=16, x=0.01, ha="left", y=1 - 0.25 / height)
    fig.text(0.99, 1 - 0.3 / height, CAPTION, ha="right", fontsize=8, color="#666666")
    top = 1 - 0.7 / height

    def box(pos: dict, pad_left: float = 0.04, pad_right: float = 0.006, pad_top: float = 0.45,
            pad_bottom: float = 0.3) -> list[float]:
        x0 = pos["x"] / 24 + pad_left
        w = pos["w"] / 24 - pad_left - pad_right
        y_top = top - pos["y"] * unit_h / height
        h = pos["h"] * unit_h / height
        return [x0, y_top - h + pad_bottom / height, w, h - (pad_top + pad_bottom) / height]

    for panel in items:
        pos = panel["gridPos"]
        if panel["type"] == "row":
            y = top - (pos["y"] + 0.6) * unit_h / height
            fig.text(0.006, y, panel.get("title", "") + ("  (collapsed)" if panel.get("collapsed") else ""),
                     fontsize=11, weight="bold")
            fig.add_artist(matplotlib.lines.Line2D([0.006, 0.994], [y - 0.1 / height] * 2, color="#cccccc",
                                                   linewidth=0.8))
            continue
        value = panel["type"] in ("stat", "gauge", "bargauge")
        rect = box(pos, pad_left=0.006 if value else 0.04, pad_bottom=0.1 if value else 0.55)
        ax = fig.add_axes(rect)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        title = panel.get("title", "")
        ax.set_title(title + (f"  [{unit}]" if unit and unit != "short" else ""), fontsize=9, loc="left")
        try:
            series = run_queries(s, panel, variables, start, end, step)
        except AssertionError as error:  # a query Prometheus refused: shown, not hidden
            ax.text(0.5, 0.5, f"query error: {str(error)[:80]}", ha="center", wrap=True, fontsize=7,
                    transform=ax.transAxes)
            continue
        if panel["type"] in ("stat", "gauge", "bargauge"):
            draw_value(ax, panel, series)
        elif panel["type"] == "heatmap":
            draw_heatmap(ax, panel, series)
        else:
            draw_lines(ax, panel, series)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of simulated traffic (default 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "pictures", help="directory of the PNGs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the processes (finally) on a kill too

    with tempfile.TemporaryDirectory(prefix="mtt-pictures-") as tmp, stack(Path(tmp)) as s:
        print(f"feeding {args.minutes:g} min of traffic (exporter {s.exporter}, prometheus {s.prometheus})")
        start, end = feed(s, args.minutes * 60)
        for name, board in dashboards().items():
            render(s, board, start, end, args.out / (Path(name).stem + ".png"))


if __name__ == "__main__":
    main()
