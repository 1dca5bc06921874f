"""A real `python -m mtt_exporter` process on loopback, for restart, signal and TLS tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Exporter:
    """Start with `start()`, stop with `stop()`; stderr (the log) goes to a file in `workdir`."""

    def __init__(self, workdir: Path, *args: str, scheme: str = "http", tls: ssl.SSLContext | None = None,
                 prefix: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.args = args
        self.prefix = prefix  # a command that execs the rest, e.g. in a mount namespace
        self.port = free_port()
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        self.tls = tls
        self.log_path = workdir / f"exporter-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> Exporter:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MTT_EXPORTER_")}
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "mtt_exporter", "--listen", f"127.0.0.1:{self.port}", *self.args],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"exporter exited {self.process.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "/-/ready")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise AssertionError(f"exporter not ready in {timeout} s:\n{self.log()}")

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                timeout: float = 30) -> tuple[int, bytes]:
        data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.tls) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def post(self, body: Any, path: str = "/notify") -> tuple[int, bytes]:
        return self.request("POST", path, body, {"Content-Type": "application/json"})

    def metrics(self) -> str:
        status, text = self.request("GET", "/metrics")
        assert status == 200
        return text.decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


#: Gauges: a later process's value replaces the earlier one (counters and histograms add up).
GAUGES = ("mtt_calls_in_progress", "mtt_calls_tracked")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def combined(*expositions: str) -> str:
    """What Prometheus sums over restarts: counters and histograms added, gauges from the last.

    Prometheus text, one line per mtt_ sample, for `simulate.diff`.
    """
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if not s.name.startswith("mtt_"):
                    continue
                key = (s.name, tuple(sorted(s.labels.items())))
                totals[key] = s.value if s.name in GAUGES else totals.get(key, 0.0) + s.value
    lines = []
    for (name, labels), value in sorted(totals.items()):
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
        lines.append(f"{name}{{{inner}}} {value!r}")
    return "\n".join(lines) + "\n"
