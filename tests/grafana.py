"""Reading the committed dashboards and rules: panels, their PromQL, the metric names it uses."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RULE_FILES = [ROOT / "rules" / "recording.yml", ROOT / "rules" / "alerts.yml"]
#: A non-default mixin config as a monitoring repository under kube-prometheus or Thanos would
#: set it: two aggregation labels, a selector, other uids, tags and runbook.
CLUSTER_CONFIG = {
    "selector": 'namespace="telecom"',
    "aggregation_labels": ["cluster", "job"],
    "runbook_url": "https://wiki.example.net/noc/mtt-runbook",
    "dashboards": {"uid_prefix": "noc-mtt-", "tags": ["noc", "mtt"], "timezone": "utc"},
}
#: The target labels the selector and the aggregation of CLUSTER_CONFIG need (job is the scrape job).
CLUSTER_LABELS = {"cluster": "eu-1", "namespace": "telecom"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Series Prometheus itself makes: scrape health and the ALERTS of the annotations.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "ALERTS"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "offset", "bool", "inf", "nan"}


def generator() -> ModuleType:
    """dashboards/generate.py as a module."""
    spec = importlib.util.spec_from_file_location("generate", ROOT / "dashboards" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def render_mixin(out: Path, config: dict | None = None) -> Path:
    """Run the generator with `config` (merged over dashboards/config.yml) into directory `out`."""
    path = out / "config.yml"
    path.write_text(yaml.safe_dump(config or {}))
    assert generator().main(["--config", str(path), "--out", str(out)]) == 0
    return out


def rule_files(root: Path = ROOT) -> list[Path]:
    return [root / "rules" / "recording.yml", root / "rules" / "alerts.yml"]


def dashboards(root: Path = ROOT) -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted((root / "dashboards").glob("*.json"))}


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel but rows, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and annotation."""
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield f"{panel['title']} / {target['refId']}", target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation.get("target", {}):
            yield f"annotation {annotation['name']}", annotation["target"]["expr"]


def variable_queries(dashboard: dict) -> Iterator[tuple[str, str, str]]:
    """(name, metric selector, label) of every `label_values(selector, label)` variable."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert match, variable["query"]
            yield variable["name"], match[1], match[2]


def rule_exprs(root: Path = ROOT) -> Iterator[tuple[str, str]]:
    """(rule name, PromQL) of every recording and alerting rule."""
    for path in rule_files(root):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield rule.get("record") or rule["alert"], rule["expr"]


def recorded_names(root: Path = ROOT) -> set[str]:
    return {name for name, _ in rule_exprs(root) if ":" in name}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables (`$name`, `${name}`) replaced, the longest names first."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (strings, matchers, ranges and grouping labels removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("(") or match[0].lower() in _KEYWORDS:
            continue  # a function or an aggregation, or an operator
        names.add(match[0])
    return names
