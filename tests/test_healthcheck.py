"""`mtt-exporter healthcheck` (the image's HEALTHCHECK) and `mtt-exporter --version`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import mtt_exporter
from mtt_exporter.healthcheck import exporter_args, health_url
from mtt_exporter.settings import Settings

from .process import ROOT, Exporter, free_port


@pytest.mark.parametrize("cmdline, args", [
    pytest.param(["/usr/local/bin/python3.11", "/opt/mtt-exporter/bin/mtt-exporter", "--listen", ":1"],
                 ["--listen", ":1"], id="console script (the image's ENTRYPOINT)"),
    pytest.param(["/sbin/docker-init", "--", "mtt-exporter", "--token", "x"], ["--token", "x"], id="behind docker --init"),
    pytest.param(["python3", "-m", "mtt_exporter"], [], id="python -m, no flags"),
    pytest.param(["python3", "-m", "mtt_exporter", "simulate", "--url", "u"], None, id="the simulator"),
    pytest.param(["/usr/bin/mtt-exporter", "healthcheck"], None, id="the health check itself"),
    pytest.param(["mtt-exporter", "--version"], None, id="--version"),
    pytest.param(["/usr/lib/systemd/systemd", "--system"], None, id="systemd as PID 1"),
    pytest.param(["python3", "-m", "pytest"], None, id="another Python program"),
])
def test_exporter_args_from_a_command_line(cmdline, args):
    assert exporter_args(cmdline) == args


@pytest.mark.parametrize("flags, url", [
    pytest.param([], "http://127.0.0.1:9888/-/healthy", id="defaults"),
    pytest.param(["--listen", "10.0.0.5:80"], "http://10.0.0.5:80/-/healthy", id="one address"),
    pytest.param(["--listen", "[::]:9888"], "http://[::1]:9888/-/healthy", id="IPv6 any"),
    pytest.param(["--listen", ":9000", "--metrics-listen", "127.0.0.1:9001"], "http://127.0.0.1:9001/-/healthy",
                 id="the metrics listener, open and plain"),
])
def test_health_url_follows_the_flags(flags, url):
    assert health_url(Settings(_cli_parse_args=flags)) == url  # type: ignore[call-arg]


def test_health_url_over_tls(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x"), key.write_text("x")
    settings = Settings(_cli_parse_args=["--tls-cert", str(cert), "--tls-key", str(key), "--listen", ":8443"])  # type: ignore[call-arg]
    assert health_url(settings) == "https://127.0.0.1:8443/-/healthy"


def healthcheck(pid: int) -> subprocess.CompletedProcess:
    """`mtt-exporter healthcheck --pid PID` with none of the exporter's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTT_EXPORTER_")}
    return subprocess.run([sys.executable, "-m", "mtt_exporter", "healthcheck", "--pid", str(pid)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def test_healthcheck_finds_the_listener_the_exporter_was_started_with(tmp_path):
    metrics_port = free_port()
    exporter = Exporter(tmp_path, "--metrics-listen", f"127.0.0.1:{metrics_port}", "--allow-cidr", "192.0.2.0/24").start()
    assert exporter.process is not None
    try:
        result = healthcheck(exporter.process.pid)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"healthy: http://127.0.0.1:{metrics_port}/-/healthy"
    finally:
        exporter.stop()
    result = healthcheck(exporter.process.pid)  # gone
    assert result.returncode == 1 and "cannot read process" in result.stderr


def test_healthcheck_fails_on_a_process_that_is_not_the_exporter():
    result = healthcheck(os.getpid())  # pytest
    assert result.returncode == 1 and "is not a running mtt-exporter" in result.stderr


def test_version_is_the_package_version():
    result = subprocess.run([sys.executable, "-m", "mtt_exporter", "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == f"mtt-exporter {mtt_exporter.__version__}\n"
