"""The demo stack (deploy/): Docker cannot run here, so check what it would mount and load, the
compose file against the compose-spec schema and the Alertmanager routing with amtool."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from mtt_exporter import simulate

from .conftest import need_binary
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


def check_compose(path: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with the compose-spec schema it ships (offline)."""
    return subprocess.run([need_binary("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_compose_file_passes_the_compose_spec_schema():
    result = check_compose(DEPLOY / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("change", [
    pytest.param({"depends_on": "exporter"}, id="depends_on a string"),
    pytest.param({"healthcheck": {"disabled": True}}, id="misspelt healthcheck key"),
])
def test_compose_schema_check_can_fail(tmp_path, change):
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    compose["services"]["simulator"].update(change)
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(compose))
    assert check_compose(path).returncode == 1


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_ports_are_published_on_loopback_only(service):
    for port in SERVICES[service].get("ports", []):
        assert port.startswith("127.0.0.1:"), f"{service} publishes {port} on every interface"


def test_simulator_does_not_inherit_the_exporter_healthcheck():
    # same image, but no exporter runs in it: the image's check would mark it unhealthy
    assert SERVICES["simulator"]["image"] == SERVICES["exporter"]["image"]
    assert SERVICES["simulator"]["healthcheck"] == {"disable": True}
    assert "healthcheck" not in SERVICES["exporter"]  # the image's own, which follows its flags


@pytest.fixture
def amtool() -> str:
    return need_binary("amtool")


def test_alertmanager_config_as_mounted_passes_amtool(amtool, tmp_path):
    command = SERVICES["alertmanager"]["command"]
    config = next(arg.partition("=")[2] for arg in command if arg.startswith("--config.file="))
    path = container_tree(tmp_path, "alertmanager") / config.lstrip("/")
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("labels, receiver", [
    pytest.param(["severity=critical", "alertname=MttExporterDown"], "pager", id="critical pages"),
    pytest.param(["severity=warning", "alertname=MttAsrLow"], "tickets", id="warning"),
    pytest.param(["alertname=Watchdog"], "tickets", id="no severity"),
])
def test_alertmanager_routes_critical_to_the_pager(amtool, labels, receiver):
    result = subprocess.run([amtool, "config", "routes", "test", f"--config.file={DEPLOY / 'alertmanager.yml'}", *labels],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == receiver, result.stdout + result.stderr


def test_every_alert_has_a_severity_the_routing_knows():
    severities = {rule["labels"]["severity"] for group in yaml.safe_load((ROOT / "rules/alerts.yml").read_text())["groups"]
                  for rule in group["rules"]}
    assert severities <= {"critical", "warning"} and "critical" in severities


def test_prometheus_sends_alerts_to_the_alertmanager_service():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (target,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, _, port = target.partition(":")
    assert host in SERVICES and "--config.file=/etc/alertmanager/alertmanager.yml" in SERVICES[host]["command"]
    assert port == "9093"
