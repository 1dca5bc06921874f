"""deploy/kubernetes: rendered by kustomize, checked by real schema validators, promtool and the
exporter's own settings loader; the generated parts match rules/ and dashboards/."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from types import ModuleType

import kubernetes_validate
import pytest
import yaml

import mtt_exporter
from mtt_exporter.settings import Settings, split_host_port

from .conftest import need_binary
from .grafana import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
NODE_DIR = ROOT / "tests" / "kubernetes"
#: Oldest Kubernetes still in common support, and the newest schema kubernetes-validate has.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
#: `kubectl apply` (client side) keeps the whole object in an annotation of at most 256 KiB.
LAST_APPLIED_LIMIT = 262_144
CUSTOM_GROUP = "monitoring.coreos.com/"
#: What an SRE applies: the base, the HA overlay, and the base with the optional label map.
VARIANTS = ["base", "ha", "label-map"]


def generator() -> ModuleType:
    """deploy/kubernetes/generate.py as a module."""
    spec = importlib.util.spec_from_file_location("kube_generate", KUBE / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kustomize_dir(variant: str, tmp: Path) -> Path:
    """The folder `kubectl apply -k` is given for a variant."""
    if variant != "label-map":
        return KUBE / variant
    overlay = tmp / "with-label-map"  # what the component's comment tells an SRE to write
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(KUBE / "base", overlay)],
        "components": [os.path.relpath(KUBE / "components" / "label-map", overlay)],
    }))
    return overlay


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """variant -> its objects, as `kubectl kustomize` (the code of `kubectl apply -k`) renders them."""
    kubectl = need_binary("kubectl")
    tmp = tmp_path_factory.mktemp("kustomize")
    out = {}
    for variant in VARIANTS:
        result = subprocess.run([kubectl, "kustomize", str(kustomize_dir(variant, tmp))],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        out[variant] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def the(objects: list[dict], kind: str, name: str | None = None) -> dict:
    """The one object of a kind (and name)."""
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def secret_example() -> dict:
    return yaml.safe_load((KUBE / "secret.example.yaml").read_text())


# -- generated from the same source ------------------------------------------------------------

def test_regenerating_changes_nothing():
    for name, text in generator().render().items():
        assert (KUBE / "base" / name).read_text() == text, f"run `make dashboards`: base/{name} is stale"


def test_prometheus_rules_are_the_rule_files():
    rules = {o["metadata"]["name"]: o for o in yaml.safe_load_all((KUBE / "base/prometheusrule.yaml").read_text())}
    files = sorted((ROOT / "rules").glob("*.yml"))
    assert sorted(rules) == [f"mtt-exporter-{f.stem}" for f in files]
    for path in files:
        assert rules[f"mtt-exporter-{path.stem}"]["spec"] == yaml.safe_load(path.read_text())


def test_dashboard_config_maps_hold_the_dashboards_for_the_sidecar():
    maps = list(yaml.safe_load_all((KUBE / "base/dashboards.yaml").read_text()))
    files = sorted((ROOT / "dashboards").glob("*.json"))
    assert len(maps) == len(files)
    for config_map, path in zip(maps, files):
        assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
        assert config_map["data"] == {path.name: path.read_text()}  # byte for byte


def test_generator_follows_another_root(tmp_path):
    """`make dashboards CONFIG=... OUT=dir`: the objects embed that directory's rules."""
    for folder in ("rules", "dashboards"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    alerts = tmp_path / "rules" / "alerts.yml"
    alerts.write_text(alerts.read_text().replace('severity: "critical"', 'severity: "page"'))
    generator().main(["--root", str(tmp_path), "--out", str(tmp_path / "out")])
    rules = {o["metadata"]["name"]: o for o in yaml.safe_load_all((tmp_path / "out/prometheusrule.yaml").read_text())}
    assert rules["mtt-exporter-alerts"]["spec"] == yaml.safe_load(alerts.read_text())
    assert 'severity: "page"' in (tmp_path / "out/prometheusrule.yaml").read_text()
    assert (tmp_path / "out/dashboards.yaml").read_text() == (KUBE / "base/dashboards.yaml").read_text()


@pytest.mark.parametrize("broken, message", [
    pytest.param({"rules/alerts.yml": "- just a list\n"}, "rule file", id="not a rule file"),
    pytest.param({"dashboards/x.json": '{\n\t"tab": 1\n}\n'}, "tabs", id="tab in a dashboard"),
    pytest.param({"dashboards/x.json": "{}"}, "newline", id="no final newline"),
])
def test_generator_refuses_what_it_cannot_embed_verbatim(tmp_path, broken, message):
    for folder in ("rules", "dashboards"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    for name, text in broken.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(SystemExit, match=message):
        generator().render(tmp_path)


# -- real validators ----------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_core_objects_pass_the_kubernetes_schema(rendered, variant, version):
    objects = [o for o in rendered[variant] if not o["apiVersion"].startswith(CUSTOM_GROUP)]
    if variant == "base":
        objects.append(secret_example())
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "ConfigMap"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_kubernetes_schema_check_can_fail(rendered):
    deployment = copy.deepcopy(the(rendered["base"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFs"):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def kubernetes_models(objects: list[dict]) -> subprocess.CompletedProcess:
    """tests/kubernetes/validate.mjs (npm kubernetes-models) over the objects."""
    node = need_binary("node")
    if not (NODE_DIR / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        message = "npm packages of tests/kubernetes missing (`make test` runs npm ci)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run([node, str(NODE_DIR / "validate.mjs")], input=json.dumps(objects),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_passes_kubernetes_models(rendered, variant):
    result = kubernetes_models(rendered[variant])
    assert result.returncode == 0, result.stdout + result.stderr
    checked = {line.split()[1].split("/")[0] for line in result.stdout.splitlines()}
    assert {"ServiceMonitor", "PrometheusRule", "Deployment"} <= checked


@pytest.mark.parametrize("kind, path, value, message", [
    pytest.param("ServiceMonitor", ["spec", "endpoints", 0, "interval"], "15 seconds", "interval",
                 id="ServiceMonitor interval not a duration"),
    pytest.param("PrometheusRule", ["spec", "groups", 0, "rules", 0, "for"], "5 minutes", "for",
                 id="PrometheusRule for not a duration"),
    pytest.param("Service", ["spec", "ports", 0, "port"], "http", "port", id="Service port a name"),
])
def test_kubernetes_models_check_can_fail(rendered, kind, path, value, message):
    obj = copy.deepcopy(next(o for o in rendered["base"] if o["kind"] == kind))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    result = kubernetes_models([obj])
    assert result.returncode == 1 and message in result.stdout, result.stdout + result.stderr


def test_rules_in_the_prometheus_rules_pass_promtool(rendered, promtool, tmp_path):
    for rule in (o for o in rendered["ha"] if o["kind"] == "PrometheusRule"):
        path = tmp_path / f"{rule['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump(rule["spec"]))
        result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        count = sum(len(group["rules"]) for group in rule["spec"]["groups"])
        assert result.returncode == 0 and f"SUCCESS: {count} rules found" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_objects_fit_in_the_last_applied_annotation(rendered, variant):
    for obj in rendered[variant]:
        assert len(json.dumps(obj)) < LAST_APPLIED_LIMIT, obj["metadata"]["name"]


# -- the exporter accepts what the Deployment gives it -----------------------------------------

class PodWouldNotStart(Exception):
    """A required Secret key is missing: the kubelet does not start the container."""


def container_settings(objects: list[dict], tmp_path: Path, monkeypatch,
                       secret_keys: set[str] | None = None) -> tuple[Settings, dict]:
    """The exporter's settings from the Deployment's args and env, through the real loader;
    mounted paths point at tmp_path, the Secret holds the example's keys (or only secret_keys)."""
    pod = the(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount, name in mounts.items():  # each mount as a folder; a ConfigMap's files in it
        folder = tmp_path / mount.lstrip("/")
        folder.mkdir(parents=True)
        if "configMap" in volumes[name]:
            data = the(objects, "ConfigMap", volumes[name]["configMap"]["name"])["data"]
            for file, text in data.items():
                (folder / file).write_text(text)

    def mapped(arg: str) -> str:
        flag, _, value = arg.partition("=")
        for mount in mounts:
            if value.startswith(mount + "/") or value == mount:
                return f"{flag}={tmp_path}{value}"
        return arg

    for key in [k for k in os.environ if k.startswith("MTT_EXPORTER_")]:
        monkeypatch.delenv(key)
    secret = secret_example()
    data = {k: v for k, v in secret["stringData"].items() if secret_keys is None or k in secret_keys}
    for env in container.get("env", []):
        ref = env["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        if ref["key"] in data:
            monkeypatch.setenv(env["name"], data[ref["key"]])
        elif not ref.get("optional", False):
            raise PodWouldNotStart(ref["key"])
    return Settings(_cli_parse_args=[mapped(a) for a in container["args"]]), container  # type: ignore[call-arg]


@pytest.mark.parametrize("variant", VARIANTS)
def test_deployment_flags_are_ones_the_exporter_accepts(rendered, variant, tmp_path, monkeypatch):
    if variant == "label-map" and "label_map" not in Settings.model_fields:
        pytest.skip("--label-map has not landed in this branch yet")
    settings, container = container_settings(rendered[variant], tmp_path, monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert split_host_port(settings.listen)[1] == ports["http"]
    assert settings.metrics_listen and split_host_port(settings.metrics_listen)[1] == ports["metrics"]
    assert settings.token is not None and settings.log_format == "json"
    # the state is written to a volume, not the read-only root filesystem
    assert settings.state_path and settings.state_path.is_relative_to(tmp_path)
    assert settings.state_backend is not None  # the example Secret has one


@pytest.mark.parametrize("variant, starts", [
    pytest.param("base", True, id="base: calls in memory"),
    pytest.param("ha", False, id="ha: replicas need the shared state"),
])
def test_secret_with_only_a_token(rendered, variant, starts, tmp_path, monkeypatch):
    if not starts:
        with pytest.raises(PodWouldNotStart, match="state-backend"):
            container_settings(rendered[variant], tmp_path, monkeypatch, {"token"})
        return
    settings, _ = container_settings(rendered[variant], tmp_path, monkeypatch, {"token"})
    assert settings.token is not None and settings.state_backend is None


def test_deployment_flags_check_can_fail(rendered, tmp_path, monkeypatch):
    objects = copy.deepcopy(rendered["base"])
    the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"].append("--metric-listen=:1")
    with pytest.raises(Exception, match="metric-listen"):
        container_settings(objects, tmp_path, monkeypatch)


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_is_hardened_and_probed_on_the_metrics_port(rendered, variant):
    pod = the(rendered[variant], "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and security["runAsNonRoot"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    # the uid the image's files belong to
    assert f"USER {pod['securityContext']['runAsUser']}:" in (ROOT / "Dockerfile").read_text()
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"]
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/-/ready"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/-/healthy"
    assert {p["port"] for p in probes.values()} == {"metrics"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_services_select_the_pods_and_the_monitor_selects_the_metrics_service(rendered, variant):
    objects = rendered[variant]
    deployment = the(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    services = [o for o in objects if o["kind"] == "Service"]
    for service in services:
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    monitor = the(objects, "ServiceMonitor")
    (scraped,) = [s for s in services if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in scraped["spec"]["ports"]] == ["metrics"]
    # job="mtt-exporter", as in the rules, the dashboards and the demo stack
    assert scraped["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "mtt-exporter"


def test_ha_runs_two_replicas_on_a_shared_state_through_drains(rendered):
    objects = rendered["ha"]
    deployment = the(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = the(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert 0 < budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MTT_EXPORTER_STATE_BACKEND"]["valueFrom"]["secretKeyRef"]["optional"] is False
    base_env = {e["name"]: e for e in the(rendered["base"], "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert base_env["MTT_EXPORTER_STATE_BACKEND"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_label_map_is_optional_and_mounted_where_the_flag_points(rendered):
    assert not [o for o in rendered["base"] if o["metadata"]["name"].startswith("mtt-exporter-label-map")]
    objects = rendered["label-map"]
    pod = the(objects, "Deployment")["spec"]["template"]["spec"]
    (flag,) = [a for a in pod["containers"][0]["args"] if a.startswith("--label-map=")]
    path = PurePosixPath(flag.partition("=")[2])
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = the(objects, "ConfigMap", volume["configMap"]["name"])  # the generated, hashed name
    text = config_map["data"][path.name]
    labelmap = pytest.importorskip("mtt_exporter.labelmap", reason="--label-map has not landed in this branch yet")
    assert labelmap.parse(text, path.name)


def test_image_tag_is_the_package_version():
    kustomization = yaml.safe_load((KUBE / "base/kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert image["newTag"] == mtt_exporter.__version__
