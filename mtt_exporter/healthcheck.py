"""`mtt-exporter healthcheck`: ask a running exporter's /-/healthy, wherever its flags put it.

A container's HEALTHCHECK runs beside the exporter without the exporter's flags. So this reads
the command line and `MTT_EXPORTER_*` environment of the exporter process itself (PID 1 in a
container, `--pid` elsewhere) from /proc, loads them with the exporter's own settings loader,
and asks the listener that serves health: --metrics-listen when set (plain HTTP), else --listen
(over TLS when --tls-cert is set). Exit 0 when it answers 200, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import urllib.request
from pathlib import Path, PurePath

from .settings import Settings, load, split_host_port

#: First arguments that make `mtt-exporter` a tool rather than the exporter.
SUBCOMMANDS = frozenset({"simulate", "replay", "healthcheck"})
#: Addresses that mean "every interface": ask loopback instead.
ANY_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def exporter_args(cmdline: list[str]) -> list[str] | None:
    """The exporter's flags in a process's argv, or None when the process is not the exporter
    serving (another program, a traffic tool, `--version`). Knows the console script (also
    behind an init such as `docker-init --`) and `python -m mtt_exporter`."""
    for i, arg in enumerate(cmdline):
        if PurePath(arg).name == "mtt-exporter":
            rest = cmdline[i + 1:]
        elif arg == "-m" and cmdline[i + 1:i + 2] == ["mtt_exporter"]:
            rest = cmdline[i + 2:]
        else:
            continue
        if rest[:1] and rest[0] in SUBCOMMANDS or "--version" in rest:
            return None
        return rest
    return None


def health_url(settings: Settings) -> str:
    """The /-/healthy URL of the listener that serves it, seen from the same host."""
    address, scheme = settings.listen, "https" if settings.tls_cert else "http"
    if settings.metrics_listen is not None:  # no TLS, no allow-list there
        address, scheme = settings.metrics_listen, "http"
    host, port = split_host_port(address)
    host = ANY_HOST.get(host, host)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/-/healthy"


def _proc(pid: int, name: str) -> list[str]:
    return [part.decode(errors="replace") for part in Path(f"/proc/{pid}/{name}").read_bytes().split(b"\0") if part]


def process_settings(pid: int) -> Settings:
    """The settings process `pid` runs with: its flags and MTT_EXPORTER_* variables, loaded
    with the exporter's loader (relative paths from its working directory). SystemExit(1)
    when it is not an exporter or its settings do not load."""
    try:
        args = exporter_args(_proc(pid, "cmdline"))
        environ = dict(item.partition("=")[::2] for item in _proc(pid, "environ"))
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError as error:
        print(f"mtt-exporter healthcheck: cannot read process {pid}: {error.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    if args is None:
        print(f"mtt-exporter healthcheck: process {pid} is not a running mtt-exporter (use --pid)", file=sys.stderr)
        raise SystemExit(1)
    for key in [k for k in os.environ if k.startswith("MTT_EXPORTER_")]:
        del os.environ[key]
    os.environ.update({k: v for k, v in environ.items() if k.startswith("MTT_EXPORTER_")})
    os.chdir(cwd)
    return load(args)


def check(url: str, timeout: float) -> bool:
    """True when url answers 200; the certificate is not verified (it names the public host,
    the check asks loopback)."""
    context = ssl._create_unverified_context() if url.startswith("https:") else None  # noqa: S323
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status == 200
    except OSError as error:  # urllib's errors, refused, timed out
        print(f"mtt-exporter healthcheck: {url}: {error}", file=sys.stderr)
        return False


def main(argv: list[str]) -> None:
    """Entry point of `mtt-exporter healthcheck`."""
    parser = argparse.ArgumentParser(
        prog="mtt-exporter healthcheck",
        description="Ask the running exporter (its flags and environment read from /proc) for /-/healthy; exit 0 when healthy.")
    parser.add_argument("--pid", type=int, default=1, help="process id of the exporter (default 1: a container's)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    url = health_url(process_settings(args.pid))
    if not check(url, args.timeout):
        raise SystemExit(1)
    print(f"healthy: {url}")
