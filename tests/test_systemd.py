"""deploy/systemd: the unit passes `systemd-analyze verify`, is hardened (`systemd-analyze
security`), and runs the exporter with flags and variables the exporter accepts."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mtt_exporter.settings import Settings

from .conftest import need_binary
from .grafana import ROOT

SYSTEMD = ROOT / "deploy" / "systemd"
UNIT = SYSTEMD / "mtt-exporter.service"
INSTALLED = "/opt/mtt-exporter/bin/mtt-exporter"
#: `systemd-analyze security`: 0 is best, 10 worst; below 2 is rated "OK".
MAX_EXPOSURE = 2.0


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def installed_unit(tmp_path: Path) -> Path:
    """The unit as installed, ExecStart pointing at this checkout's console script (verify
    checks that the binary exists)."""
    console_script = Path(sys.executable).parent / "mtt-exporter"
    assert console_script.is_file()
    path = tmp_path / UNIT.name
    path.write_text(UNIT.read_text().replace(INSTALLED, str(console_script)))
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = need_binary("systemd-analyze")
    result = subprocess.run([analyze, "verify", str(installed_unit(tmp_path))], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and UNIT.name not in result.stderr, result.stderr


@pytest.mark.parametrize("line, message", [
    pytest.param("ProtectSystem=very", "Failed to parse protect system value", id="invalid value (a warning)"),
    pytest.param("ExecStart=relative/mtt-exporter", "Neither a valid executable name nor an absolute path",
                 id="relative command"),
])
def test_systemd_analyze_verify_can_fail(tmp_path, line, message):
    """Each is a warning or an error on the unit; the test above accepts neither."""
    analyze = need_binary("systemd-analyze")
    unit = installed_unit(tmp_path)
    unit.write_text(unit.read_text().replace("[Service]\n", f"[Service]\n{line}\n"))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert message in result.stderr, result.stderr


def test_unit_is_hardened(tmp_path):
    options = service()
    assert options["DynamicUser"] == "yes" and options["StateDirectory"] == "mtt-exporter"
    assert options["ProtectSystem"] == "strict" and options["NoNewPrivileges"] == "yes"
    assert options["CapabilityBoundingSet"] == "" and options["EnvironmentFile"].startswith("/etc/mtt-exporter/")
    analyze = need_binary("systemd-analyze")
    result = subprocess.run([analyze, "security", "--offline=yes", str(installed_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout + result.stderr)
    assert exposure, result.stdout + result.stderr
    assert float(exposure[1]) < MAX_EXPOSURE, result.stdout


def test_exec_start_and_environment_file_are_settings_the_exporter_accepts(tmp_path, monkeypatch):
    command = shlex.split(service()["ExecStart"])
    assert command[0] == INSTALLED
    state_dir = f"/var/lib/{service()['StateDirectory']}"
    (tmp_path / "state").mkdir()
    args = [a.replace(state_dir, str(tmp_path / "state")) for a in command[1:]]
    assert args != command[1:]  # the data dir is the StateDirectory, the only writable path
    for key in [k for k in os.environ if k.startswith("MTT_EXPORTER_")]:
        monkeypatch.delenv(key)
    variables = {}
    for line in (SYSTEMD / "mtt-exporter.env").read_text().splitlines():
        line = line.strip().removeprefix("#")
        if re.fullmatch(r"MTT_EXPORTER_[A-Z_]+=\S+", line):  # set and commented-out examples
            key, _, value = line.partition("=")
            variables[key] = value
    assert {"MTT_EXPORTER_TOKEN", "MTT_EXPORTER_STATE_BACKEND"} <= set(variables)
    for key, value in variables.items():
        # an unknown variable would be silently ignored: each must name a setting
        assert key.removeprefix("MTT_EXPORTER_").lower() in Settings.model_fields, key
        monkeypatch.setenv(key, value)
    settings = Settings(_cli_parse_args=args)  # type: ignore[call-arg]
    assert settings.state_path == tmp_path / "state" / "state.json"
    assert settings.token is not None and settings.metrics_listen == "127.0.0.1:9889"
