"""A real redis-server for the tests, on a free loopback port in a directory of its own."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .process import free_port


class RedisServer:
    """redis-server without persistence, except a dump.rdb written by `stop(save=True)`
    and read again by the next `start()` (as a Redis with persistence restarts)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start(self, timeout: float = 10) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise
                    time.sleep(0.05)

    def stop(self, save: bool = False) -> None:
        if self.process is None:
            return
        with self.client() as client:
            try:
                client.shutdown(save=save, nosave=not save)
            except redis.ConnectionError:
                pass  # the server closes the connection as it exits
        self.process.wait(timeout=10)
        self.process = None
