"""Real processes for the tests: a redis-server and exporters, on free loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, redis.RedisError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up in {timeout} s")
        time.sleep(0.05)


class RedisServer:
    """redis-server in a directory of its own, no persistence unless stopped with `save`."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        with self.client() as client:
            _wait(client.ping, "redis-server")

    def stop(self, save: bool = False) -> None:
        """SHUTDOWN, writing dump.rdb first if `save` (loaded again by the next start)."""
        if self.process is None:
            return
        with self.client() as client:
            try:
                client.shutdown(save=save, nosave=not save)
            except redis.ConnectionError:
                pass  # the server closes the connection as it exits
        self.process.wait(timeout=10)
        self.process = None


class Exporter:
    """`python -m exporter` with the given flags on a free port."""

    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--listen", f"127.0.0.1:{self.port}", "--log-level", "warning", *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )

        def listening() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"exporter exited: {self.process.stderr.read().decode()}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        _wait(listening, "exporter")

    def stop(self) -> str:
        """Terminate; returns what it wrote to stderr."""
        self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err.decode()
