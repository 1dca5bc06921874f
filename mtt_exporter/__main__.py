"""`mtt-exporter` / `python -m mtt_exporter`: start the exporter; `simulate` and `replay` are the traffic tools,
`healthcheck` asks a running exporter (a container's HEALTHCHECK), `--version` prints the version."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from . import __version__, log as logsetup
from . import state
from .labelmap import LabelMapError
from .server import Runner, create_app, create_metrics_app, drain, reload_labels, runner_options, ssl_context
from .settings import Settings, load, split_host_port, unknown_variables
from .state import masked_url

log = logging.getLogger("mtt_exporter")


async def serve(settings: Settings) -> None:
    """Run the listeners until SIGTERM/SIGINT, then stop accepting, finish in-flight requests
    and save the state (the app's cleanup)."""
    app = create_app(settings)
    tls = ssl_context(settings)
    options = runner_options(settings)
    runners = [Runner(app, **options)]
    if settings.metrics_listen is not None:
        runners.append(Runner(create_metrics_app(app), **options))
    addresses = [settings.listen] + ([settings.metrics_listen] if settings.metrics_listen else [])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_labels, app)
    try:
        for runner, address, context in zip(runners, addresses, (tls, None)):
            await runner.setup()
            host, port = split_host_port(address)
            await web.TCPSite(runner, host, port, ssl_context=context).start()
        log.info(
            "listening",
            extra={"version": __version__, "listen": settings.listen, "metrics_listen": settings.metrics_listen,
                   "token": "set" if settings.token else "none", "tls": tls is not None,
                   "state_file": str(settings.state_path) if settings.state_path else None,
                   "state_backend": masked_url(settings.state_backend.get_secret_value()) if settings.state_backend else "memory"},
        )
        if settings.token is None:
            log.warning("no --token set: anyone who can reach the listener can post notifications")
        if settings.record_path is not None:
            log.warning("recording every received body to %s: the files hold phone numbers", settings.record_path)
        # start-up objects (modules, pydantic schemas) live forever: keep them out of every
        # full collection, which otherwise rescans them (tens of ms) while calls come in
        gc.freeze()
        await stop.wait()
        log.info("stopping")
        for runner in runners:  # stop accepting, then let bodies still arriving come in
            for site in runner.sites:
                await site.stop()
        if not await drain(app, settings.read_timeout):
            log.warning("requests still in flight after --read-timeout; cutting them off")
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        log.error("--event-loop uvloop: uvloop is not installed (pip install 'mtt-call-exporter[uvloop]')")
        raise SystemExit(1) from None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("simulate", "replay", "healthcheck"):
        tool = importlib.import_module(f".{args[0]}", __package__)
        return tool.main(args[1:])
    if "--version" in args:
        print(f"mtt-exporter {__version__}")
        return None
    settings = load(args)
    logsetup.setup(settings.log_level, settings.log_format)
    for warning in unknown_variables(os.environ):
        log.warning(warning)
    if settings.state_backend is not None and state.aioredis is None:
        log.error("--state-backend: the Redis client is not installed (pip install 'mtt-call-exporter[redis]')")
        raise SystemExit(1)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings))
    except OSError as error:  # e.g. the port is taken
        log.error("cannot start: %s", error)
        raise SystemExit(1) from None
    except LabelMapError as error:
        print("mtt-exporter: invalid --label-map:\n" + "\n".join(f"  {e}" for e in error.errors), file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
