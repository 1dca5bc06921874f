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

    def __init__(self, binary: str, directory: Path, *flags: str) -> None:
        self.binary, self.directory, self.port, self.flags = binary, directory, free_port(), flags
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start(self, timeout: float = 10) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning", *self.flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.wait(self.port, timeout)

    @staticmethod
    def wait(port: int, timeout: float) -> None:
        """Until a server answers PING on `port`."""
        deadline = time.monotonic() + timeout
        with redis.Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0)) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
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


class RedisClusterNodes:
    """Three redis-server primaries joined into a Cluster (no replicas)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary, self.directory = binary, directory
        self.ports = [free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self, timeout: float = 20) -> None:
        for port in self.ports:
            node = self.directory / str(port)
            node.mkdir()
            self.processes.append(subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(free_port()),
                 "--dir", str(node),
                 "--daemonize", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port in self.ports:
            RedisServer.wait(port, timeout)
        subprocess.run(
            [self.binary.replace("redis-server", "redis-cli"), "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in self.ports), "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        for port in self.ports:
            with redis.Redis(port=port, socket_timeout=5) as client:
                while client.cluster("info")["cluster_state"] != "ok":
                    if time.monotonic() > deadline:
                        raise TimeoutError("cluster not ok")
                    time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=10)


class RedisSentinel:
    """A redis-server primary and replica watched by one Sentinel, as service `mymaster`,
    failing over half a second after the primary stops answering."""

    def __init__(self, binary: str, directory: Path) -> None:
        (directory / "primary").mkdir()
        (directory / "replica").mkdir()
        self.primary = RedisServer(binary, directory / "primary")
        self.replica = RedisServer(binary, directory / "replica", "--replicaof", "127.0.0.1", str(self.primary.port))
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster/0"

    def start(self, timeout: float = 10) -> None:
        self.primary.start()
        self.replica.start()
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {self.primary.port} 1\n"
            "sentinel down-after-milliseconds mymaster 500\nsentinel failover-timeout mymaster 5000\n"
        )
        self.process = subprocess.Popen([self.binary, str(config), "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        RedisServer.wait(self.port, timeout)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.replica.stop()
        self.primary.stop()
