"""scripts/system-deps.sh never stops `make test` outside CI: root without the network skips like non-root."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "system-deps.sh"


def run(tmp_path: Path, uid: int, apt_get: int | None, ci: bool) -> subprocess.CompletedProcess:
    """The script with a PATH holding only stubs: no promtool, redis-server or wrk; `id -u` and apt-get faked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {"id": f"echo {uid}"}
    if apt_get is not None:
        stubs["apt-get"] = f'echo "apt-get $*" >> {tmp_path / "apt.log"}; exit {apt_get}'
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": str(bin_dir), **({"CI": "true"} if ci else {})}  # `id` is a stub: no real binary
    return subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("uid", "apt_get", "ci", "code", "message"),
    [
        pytest.param(1000, 0, False, 0, "missing prometheus redis-server wrk", id="not root"),
        pytest.param(0, None, False, 0, "missing prometheus redis-server wrk", id="root without apt-get"),
        pytest.param(0, 0, False, 0, "installing prometheus redis-server wrk", id="root, installed"),
        pytest.param(0, 100, False, 0, "could not install prometheus redis-server wrk", id="root without the network"),
        pytest.param(0, 100, True, 1, "could not install", id="root without the network in CI"),
    ],
)
def test_system_deps(tmp_path, uid, apt_get, ci, code, message):
    result = run(tmp_path, uid, apt_get, ci)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    if uid != 0:
        assert not (tmp_path / "apt.log").exists()


def test_nothing_to_do_when_everything_is_there(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in re.findall(r"command -v ([\w-]+) >/dev/null 2>&1 \|\|", SCRIPT.read_text()):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    result = subprocess.run(["/bin/sh", str(SCRIPT)], env={"PATH": str(bin_dir)}, capture_output=True, text=True,
                            timeout=30, check=False)
    assert (result.returncode, result.stderr) == (0, "")
