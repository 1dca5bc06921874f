"""Dashboards: generated files are up to date, a structural lint, and Grafana 11's own schema (tsc)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from . import grafana_schema
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
        assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "cluster", "job", "instance", "line", "destination"]
    exprs = [expr for board in boards.values() for _, expr in queries(board)]
    exprs += [v["query"]["query"] for board in boards.values() for v in board["templating"]["list"]
              if v["type"] == "query"]
    for selector in (s for e in exprs for s in re.findall(r"\{([^}]*)\}", e)):
        matchers = [m.strip() for m in selector.split(",")]
        assert len(matchers) == len(set(matchers)), selector
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


# --- Grafana's own schema (npm @grafana/schema, tsc) -------------------------------------


def tsc(source: Path) -> str:
    """Type-check `source` with tsc; its error lines ("" when clean). Skips locally, fails in CI, without npm."""
    if not grafana_schema.TSC.exists():
        message = "dashboards/schema-check/node_modules missing (make test runs npm ci there)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    config = source.with_name("tsconfig.json")
    config.write_text(json.dumps(grafana_schema.tsconfig(source)))
    node = shutil.which("node") or pytest.fail("node missing beside npm")
    result = subprocess.run([node, str(grafana_schema.TSC), "-p", str(config), "--pretty", "false"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 2), result.stdout + result.stderr  # 2: type errors, anything else broke
    return result.stdout


@pytest.mark.parametrize("config", ["default", "cluster"])
def test_dashboards_match_grafana_schema(tmp_path, config, cluster_boards):
    source = tmp_path / "dashboards.ts"
    source.write_text(grafana_schema.typescript(BOARDS if config == "default" else cluster_boards))
    errors = tsc(source)
    assert not errors, errors


def _broken(change) -> dict:
    board = copy.deepcopy(BOARDS["mtt-exporter.json"])
    change(board)
    return board


def _stat(board: dict) -> dict:
    return next(p for p in board["panels"] if p["type"] == "stat")


def _series(board: dict) -> dict:
    return next(p for p in board["panels"] if p["type"] == "timeseries")


#: What the schema check must catch, each in a copy of a dashboard (the defects it found at first among them).
BROKEN = [
    pytest.param(lambda b: _stat(b)["options"].pop("percentChangeColorMode"), id="stat-without-percentChangeColorMode"),
    pytest.param(lambda b: _stat(b)["options"].update(colorMode="rainbow"), id="value-outside-enum"),
    pytest.param(lambda b: _stat(b)["options"].update(colourMode="background"), id="unknown-option"),
    pytest.param(lambda b: _series(b)["options"].pop("legend"), id="missing-required-option"),
    pytest.param(lambda b: _series(b)["fieldConfig"]["defaults"]["custom"].update(drawStyle="dots"),
                 id="field-config-outside-enum"),
    pytest.param(lambda b: b["templating"]["list"][1].update(current={}), id="variable-with-empty-current"),
    pytest.param(lambda b: b["links"][0].pop("tooltip"), id="link-without-tooltip"),
    pytest.param(lambda b: b["annotations"]["list"][1].update(expr="up", step="1m"), id="legacy-annotation"),
    pytest.param(lambda b: b.update(refresh=30), id="refresh-not-a-string"),
]


def test_schema_check_catches_each_defect(tmp_path):
    cases = {f"case_{p.id.replace('-', '_')}.json": _broken(p.values[0]) for p in BROKEN}
    source = tmp_path / "dashboards.ts"
    source.write_text(grafana_schema.typescript(cases))
    lines = source.read_text().splitlines()
    const = re.compile(r"export const (case_\w+?)(?:_panel_\d+)? ")
    starts = [(i + 1, m[1]) for i, line in enumerate(lines) if (m := const.match(line))]
    failed = set()
    for number in (int(n) for n in re.findall(r"dashboards\.ts\((\d+),\d+\): error", tsc(source))):
        failed.add(max((start, name) for start, name in starts if start <= number)[1])
    assert failed == {Path(name).stem for name in cases}


def test_service_level_buckets_are_the_exporters():
    import importlib.util

    from mtt_exporter.metrics import WAIT_BUCKETS

    spec = importlib.util.spec_from_file_location("generate", ROOT / "dashboards" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert generate.WAIT_BUCKETS == WAIT_BUCKETS


@pytest.mark.parametrize("name", ["calls", "exporter"])
def test_line_and_destination_variables_filter_the_labelled_series(name):
    board = BOARDS[f"mtt-{name}.json"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for label in ("line", "destination"):
        assert variables[label]["multi"] and variables[label]["includeAll"] and variables[label]["allValue"] == ".+"
    for where, expr in queries(board):
        for selector in re.findall(r"\b(mtt_[a-z_]+)\{([^}]*)\}", expr):
            metric, matchers = selector
            if metric.startswith(("mtt_call_attempts", "mtt_call_answers", "mtt_call_hangups", "mtt_calls_total",
                                  "mtt_call_wait_seconds")):
                assert 'line=~"$line"' in matchers, where
            if metric.startswith(("mtt_call_legs", "mtt_ring_duration_seconds")):
                assert 'destination=~"$destination"' in matchers, where
