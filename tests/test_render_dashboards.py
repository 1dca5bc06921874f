"""scripts/render_dashboards.py (`make pictures`) on canned query results: every panel of every
dashboard is queried and drawn, whatever its type, so panels added later render too. The real run
against Prometheus is `make pictures` (minutes)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from .grafana import ROOT, dashboards, panels

pytest.importorskip("matplotlib")


def renderer():
    spec = importlib.util.spec_from_file_location("render_dashboards", ROOT / "scripts" / "render_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_dashboards"] = module
    spec.loader.exec_module(module)
    return module


class FakePrometheus:
    """Answers the label and range queries the renderer asks, and remembers them."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.root = ROOT  # the dashboards under test (tests/test_prometheus.Stack)

    def api(self, path: str, **params):
        if path.startswith("label/"):
            return ["mtt"]
        assert path == "query_range"
        self.queries.append(params["query"])
        times = [params["start"] + i * params["step"] for i in range(10)]
        if "_bucket" in params["query"]:
            return {"result": [{"metric": {"le": le}, "values": [[t, str(i * n)] for i, t in enumerate(times)]}
                               for n, le in enumerate(["0.5", "1", "+Inf"], 1)]}
        return {"result": [{"metric": {"job": "mtt", "outcome": o}, "values": [[t, str(i / 10)] for i, t in enumerate(times)]}
                           for o in ("answered", "busy")]}


def test_every_panel_of_every_dashboard_is_rendered(tmp_path):
    module = renderer()
    for name, board in dashboards().items():
        fake = FakePrometheus()
        out = tmp_path / (Path(name).stem + ".png")
        module.render(fake, board, 1_000_000.0, 1_000_300.0, out)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        expected = [t["expr"] for p in panels(board) for t in p.get("targets", []) if "expr" in t and not t.get("hide")]
        assert len(fake.queries) == len(expected), name
        assert not [q for q in fake.queries if "$" in q], "a variable was left in a query"


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        pytest.param(0.4567, "percentunit", "45.7%", id="percentunit"),
        pytest.param(0.25, "s", "250 ms", id="milliseconds"),
        pytest.param(95, "s", "1.6 min", id="minutes"),
        pytest.param(3 * 2 ** 20, "bytes", "3.0 MiB", id="bytes"),
        pytest.param(1500, "cpm", "1.5K cpm", id="cpm"),
        pytest.param(math.nan, "s", "NaN", id="nan"),
    ],
)
def test_units(value, unit, text):
    assert renderer().fmt(value, unit) == text


@pytest.mark.parametrize(
    ("template", "labels", "text"),
    [
        pytest.param("{{job}} ASR", {"job": "mtt"}, "mtt ASR", id="template"),
        pytest.param("__auto", {"outcome": "busy"}, "outcome=busy", id="auto"),
        pytest.param(None, {}, "value", id="no labels"),
        pytest.param("{{cause}}", {"job": "mtt"}, "job=mtt", id="template of missing labels"),
    ],
)
def test_legends(template, labels, text):
    assert renderer().legend(template, labels) == text
