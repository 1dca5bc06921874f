"""Dashboards: generated files are up to date, and a structural lint of the Grafana JSON."""

from __future__ import annotations

import re

import pytest

from .grafana import DASHBOARDS, DATASOURCE, ROOT, dashboards, generator, metric_names, panels, queries

#: Histograms whose buckets carry the call id as exemplar (mtt_exporter/metrics.py).
EXEMPLAR_HISTOGRAMS = ("mtt_premedia_duration_seconds", "mtt_ring_duration_seconds",
                       "mtt_answered_duration_seconds", "mtt_talk_duration_seconds")
BOARDS = dashboards()


def test_regenerating_changes_nothing():
    generated = generator().render()
    assert {p for p in generated if p.startswith("dashboards/")} == {f"dashboards/{p.name}" for p in DASHBOARDS}
    for path, content in generated.items():
        assert (ROOT / path).read_text() == content, f"{path} is out of date: run `make dashboards`"


def test_generator_check_mode_flags_a_stale_file(tmp_path, monkeypatch):
    gen = generator()
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    for path, content in gen.render().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(content)
    assert gen.main(["--check"]) == 0
    (tmp_path / "dashboards" / "mtt-calls.json").write_text("{}")
    assert gen.main(["--check"]) == 1


def test_metric_names():
    expr = ('histogram_quantile(0.95, sum by (side, le) (rate(mtt_premedia_duration_seconds_bucket'
            '{job=~"$job"}[$__rate_interval]))) / on (job) group_left job:x:rate5m offset 1d and up == 1e-9')
    assert metric_names(expr) == {"mtt_premedia_duration_seconds_bucket", "job:x:rate5m", "up"}


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_lint(name):
    board = BOARDS[name]
    assert board["schemaVersion"] >= 39 and board["uid"] and board["title"] and board["id"] is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for scoped in ("job", "instance"):
        assert variables[scoped]["multi"] and variables[scoped]["includeAll"], scoped
        assert variables[scoped]["datasource"] == DATASOURCE

    ids = [p["id"] for p in board["panels"]] + [p["id"] for r in board["panels"] for p in r.get("panels", [])]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    boxes = [p["gridPos"] for p in board["panels"]]
    for i, a in enumerate(boxes):
        assert 0 <= a["x"] and a["x"] + a["w"] <= 24 and a["h"] > 0, a
        for b in boxes[i + 1:]:
            overlap = a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and \
                a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
            assert not overlap, f"panels overlap: {a} {b}"

    for panel in panels(board):
        where = panel["title"]
        assert panel["title"] and panel["description"].endswith("."), where
        assert panel["datasource"] == DATASOURCE, where
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"], where
        assert defaults["thresholds"]["steps"][0]["value"] is None, where
        assert panel["targets"], where
        for target in panel["targets"]:
            expr = target["expr"]
            assert target["datasource"] == DATASOURCE, where
            assert not re.search(r"\[\d+[smhd]\]", expr), f"{where}: fixed rate window instead of $__rate_interval"
            for selector in re.findall(r"\b[a-z_]+\{[^}]*\}", expr):
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, f"{where}: {selector}"
            buckets = any(f"{h}_bucket" in expr for h in EXEMPLAR_HISTOGRAMS)
            assert target["exemplar"] == buckets, f"{where}: exemplars on the duration histograms' buckets only"
        if panel["type"] == "heatmap":
            assert panel["options"]["yAxis"]["unit"] == "s" and panel["options"]["calculate"] is False, where


def test_every_query_is_scoped_and_exporter_metrics_are_all_shown():
    from mtt_exporter.metrics import Metrics
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    Metrics(registry).track(lambda: 0)
    families = {m.name for m in registry.collect()}
    shown = {name for board in BOARDS.values() for _, expr in queries(board) for name in metric_names(expr)}
    for family in families:
        assert any(name == family or name.startswith(family + "_") for name in shown), f"{family} on no panel"
