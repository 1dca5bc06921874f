"""Dashboards: generated files are up to date, and a structural lint of the Grafana JSON."""

from __future__ import annotations

import re

import pytest

from .grafana import (CLUSTER_CONFIG, DASHBOARDS, DATASOURCE, ROOT, dashboards, generator, metric_names, render_mixin,
                      panels, queries)

#: Histograms whose buckets carry the call id as exemplar (mtt_exporter/metrics.py).
EXEMPLAR_HISTOGRAMS = ("mtt_premedia_duration_seconds", "mtt_ring_duration_seconds",
                       "mtt_answered_duration_seconds", "mtt_talk_duration_seconds")
BOARDS = dashboards()


@pytest.fixture(scope="module")
def cluster_boards(tmp_path_factory) -> dict[str, dict]:
    return dashboards(render_mixin(tmp_path_factory.mktemp("mixin"), CLUSTER_CONFIG))


def test_regenerating_changes_nothing():
    generated = generator().render()
    assert {p for p in generated if p.startswith("dashboards/")} == {f"dashboards/{p.name}" for p in DASHBOARDS}
    for path, content in generated.items():
        assert (ROOT / path).read_text() == content, f"{path} is out of date: run `make dashboards`"


def test_generator_check_mode_flags_a_stale_file(tmp_path):
    gen = generator()
    render_mixin(tmp_path)
    assert gen.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "dashboards" / "mtt-calls.json").write_text("{}")
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1


def test_a_config_of_only_the_defaults_gives_the_committed_files(tmp_path):
    render_mixin(tmp_path, {"aggregation_labels": ["job"], "thresholds": {"asr_min": 0.30}})
    for path in generator().render():
        assert (tmp_path / path).read_text() == (ROOT / path).read_text(), path


def test_config_reaches_every_artefact(tmp_path):
    config = {**CLUSTER_CONFIG, "thresholds": {"asr_min": 0.25, "delay_p95_max": 45},
              "severities": {"MttAsrDrop": "critical"}}
    out = render_mixin(tmp_path, config)
    boards = dashboards(out)
    alerts = (out / "rules" / "alerts.yml").read_text()
    assert "< 0.25\n" in alerts and "below 25% for 15 minutes" in alerts and "> 45\n" in alerts
    assert "runbook_url: \"https://wiki.example.net/noc/mtt-runbook#mttasrlow\"" in alerts
    assert "sum by (job)" not in alerts + (out / "rules" / "recording.yml").read_text()
    assert "cluster_job:mtt_call_asr:ratio_rate5m" in alerts
    assert "| [MttAsrLow](#mttasrlow) | critical | 15m |" in (out / "docs" / "runbook.md").read_text()
    assert "| [MttAsrDrop](#mttasrdrop) | critical | 15m |" in (out / "docs" / "runbook.md").read_text()
    assert {b["uid"] for b in boards.values()} == {"noc-mtt-calls", "noc-mtt-exporter"}
    for board in boards.values():
        assert board["tags"] == ["noc", "mtt"] and board["timezone"] == "utc"
        assert board["links"][0]["tags"] == ["noc"]
        assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "cluster", "job", "instance"]
    exprs = [expr for board in boards.values() for _, expr in queries(board)]
    assert not any(re.search(r"by \(job\b", e) for e in exprs)
    assert any("by (cluster, job)" in e for e in exprs)


@pytest.mark.parametrize("config, problem", [
    pytest.param({"thresholds": {"asr_mni": 0.3}}, "unknown key thresholds.asr_mni", id="typo"),
    pytest.param({"thresholds": {"asr_min": "30%"}}, "must be a number", id="not-a-number"),
    pytest.param({"aggregation_labels": []}, "aggregation_labels", id="no-label"),
    pytest.param({"aggregation_labels": ["job", "instance"]}, "aggregation_labels", id="instance"),
    pytest.param({"aggregation_labels": ["clus-ter"]}, "aggregation_labels", id="bad-name"),
    pytest.param({"selector": "job=mtt"}, "selector", id="unquoted-selector"),
    pytest.param({"severities": {"MttAsrLow": "page"}}, "severities", id="severity"),
])
def test_bad_config_is_refused_with_its_key(tmp_path, config, problem):
    with pytest.raises(SystemExit, match=re.escape(problem)):
        render_mixin(tmp_path, config)


def test_metric_names():
    expr = ('histogram_quantile(0.95, sum by (side, le) (rate(mtt_premedia_duration_seconds_bucket'
            '{job=~"$job"}[$__rate_interval]))) / on (job) group_left job:x:rate5m offset 1d and up == 1e-9')
    assert metric_names(expr) == {"mtt_premedia_duration_seconds_bucket", "job:x:rate5m", "up"}


@pytest.mark.parametrize("config", ["default", "cluster"])
@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_lint(name, config, cluster_boards):
    board, scope = (BOARDS[name], ("job", "instance")) if config == "default" else \
        (cluster_boards[name], ("cluster", "job", "instance"))
    assert board["schemaVersion"] >= 39 and board["uid"] and board["title"] and board["id"] is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for scoped in scope:
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
                assert all(f'{a}=~"${a}"' in selector for a in scope), f"{where}: {selector}"
                assert config == "default" or 'namespace="telecom"' in selector, f"{where}: {selector}"
            if config != "default":
                assert not re.search(r"by \((\w+, )*job\b", expr) or "by (cluster, job" in expr, where
            buckets = any(f"{h}_bucket" in expr for h in EXEMPLAR_HISTOGRAMS)
            assert target["exemplar"] == buckets, f"{where}: exemplars on the duration histograms' buckets only"
        if panel["type"] == "heatmap":
            assert panel["options"]["yAxis"]["unit"] == "s" and panel["options"]["calculate"] is False, where


def test_every_query_is_scoped_and_exporter_metrics_are_all_shown():
    from mtt_exporter.metrics import Metrics
    from mtt_exporter.state import BackendStats
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.track(lambda: 0)
    metrics.track_backend(BackendStats())
    families = {m.name for m in registry.collect()}
    shown = {name for board in BOARDS.values() for _, expr in queries(board) for name in metric_names(expr)}
    for family in families:
        assert any(name == family or name.startswith(family + "_") for name in shown), f"{family} on no panel"
