"""The demo stack (deploy/): Docker cannot run here, so check what it would mount and load."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from mtt_exporter import simulate

from .grafana import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def bind_mounts(service: str) -> list[tuple[Path, PurePosixPath]]:
    """(host path, container path) of a service's bind mounts (named volumes left out)."""
    mounts = []
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((DEPLOY / source).resolve(), PurePosixPath(target)))
    return mounts


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_mounted_path_and_build_context_exists(service):
    for host, _ in bind_mounts(service):
        assert host.exists(), f"{service} mounts {host}, which does not exist"
    build = SERVICES[service].get("build")
    if build:
        assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def container_tree(tmp_path: Path, service: str) -> Path:
    """The service's bind mounts as symlinks under tmp_path, at their container paths."""
    for host, target in bind_mounts(service):
        link = tmp_path / target.relative_to("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(host)
    return tmp_path


def test_prometheus_config_as_mounted_passes_promtool(promtool, tmp_path):
    command = SERVICES["prometheus"]["command"]
    config = next(arg.partition("=")[2] for arg in command if arg.startswith("--config.file="))
    assert "--enable-feature=exemplar-storage" in command
    root = container_tree(tmp_path, "prometheus")
    result = subprocess.run([promtool, "check", "config", str(root / config.lstrip("/"))],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # the rule files were found through the mount and checked too
    for rules in ("recording.yml", "alerts.yml"):
        count = sum(len(g["rules"]) for g in yaml.safe_load((ROOT / "rules" / rules).read_text())["groups"])
        assert f"SUCCESS: {count} rules found" in output, output


def test_grafana_provisions_the_datasource_and_the_dashboards(tmp_path):
    root = container_tree(tmp_path, "grafana")
    provisioning = root / "etc/grafana/provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] and datasource["jsonData"]["timeInterval"]
    (provider,) = yaml.safe_load((provisioning / "dashboards/mtt.yml").read_text())["providers"]
    folder = root / provider["options"]["path"].lstrip("/")
    assert {p.name for p in folder.glob("*.json")} == {"mtt-calls.json", "mtt-exporter.json"}
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (root / home.lstrip("/")).is_file()


def test_simulator_feeds_the_exporter_in_real_time():
    command = SERVICES["simulator"]["command"]
    assert command[0] == "simulate"
    args = simulate._parser().parse_args(command[1:])  # the flags exist and parse
    assert args.url == "http://exporter:9888/notify" and "exporter" in SERVICES
    assert args.speed == 1 and args.duration > 0
    assert SERVICES["simulator"]["depends_on"]["exporter"]["condition"] == "service_healthy"
