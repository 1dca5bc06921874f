"""The ingress attack round's "after" figures (docs/reliability.md), on a real exporter over loopback.

    .venv/bin/python bench/ingress_attack.py head N SIZE COUNT   # RSS a connection: N unfinished heads of COUNT headers of SIZE bytes
    .venv/bin/python bench/ingress_attack.py pipe N SIZE         # RSS a connection: 40 pipelined POSTs of SIZE-byte bodies, never read
    .venv/bin/python bench/ingress_attack.py slow                # 2 slow readers at --read-timeout 2: when are they closed
    .venv/bin/python bench/ingress_attack.py misc                # odd Accept, slow body, debug log, CONNECT/OPTIONS */Expect

Each run is bounded (a few seconds, at most a few hundred connections).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.process import Exporter  # noqa: E402
from tests.test_attack_ingress import exchange  # noqa: E402


def _rss_kb(exporter: Exporter) -> int:
    assert exporter.process is not None
    return int(Path(f"/proc/{exporter.process.pid}/status").read_text().split("VmRSS:")[1].split()[0])


def head(n: int, size: int, count: int) -> None:
    exporter = Exporter(Path(tempfile.mkdtemp()), "--token", "s3cr3t-Attack-Token").start()
    data = b"POST /notify HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%03d: " % i + b"a" * size + b"\r\n" for i in range(count))
    try:
        time.sleep(0.5)
        before, socks = _rss_kb(exporter), []
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", exporter.port))
            with contextlib.suppress(OSError):
                sock.sendall(data)
            socks.append(sock)
        time.sleep(1.5)
        print(f"head {count} x {size} B, {n} connections: {(_rss_kb(exporter) - before) / n:.0f} kB RSS a connection")
        for sock in socks:
            sock.close()
    finally:
        exporter.stop()


def pipe(n: int, size: int) -> None:
    exporter = Exporter(Path(tempfile.mkdtemp()), "--read-timeout", "30").start()
    body = b" " * size + b"{}"
    request = b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    try:
        time.sleep(0.5)
        before, socks = _rss_kb(exporter), []
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", exporter.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(request * 40)
            socks.append(sock)
        time.sleep(2)
        print(f"pipelined {size} B bodies, {n} connections: {(_rss_kb(exporter) - before) / n:.0f} kB RSS a connection")
        for sock in socks:
            sock.close()
    finally:
        exporter.stop()


def slow() -> None:
    exporter = Exporter(Path(tempfile.mkdtemp()), "--max-connections", "8", "--read-timeout", "2").start()
    pipelined = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\n\r\n" * 20000
    socks = []
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", exporter.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(pipelined)
            socks.append(sock)
        for second in range(1, 9):
            time.sleep(1)
            listed = subprocess.run(["ss", "-tn", f"sport = :{exporter.port}"], capture_output=True, text=True).stdout
            print(f"{second} s: {len(listed.splitlines()) - 1} connections open")
    finally:
        for sock in socks:
            sock.close()
        exporter.stop()


def misc() -> None:
    work = Path(tempfile.mkdtemp())
    exporter = Exporter(work).start()
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain;version=a\r\n\r\n"
    time.sleep(0.3)
    before = exporter.log_path.stat().st_size
    answers = {exchange(exporter.port, request, 0.5)[:15] for _ in range(50)}
    time.sleep(0.3)
    print(f"odd Accept: 50 scrapes {answers}, {exporter.log_path.stat().st_size - before} log bytes "
          f"for {50 * len(request)} received")
    exporter.stop()

    exporter = Exporter(work, "--read-timeout", "1").start()
    with socket.create_connection(("127.0.0.1", exporter.port), timeout=20) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    print(f"slow body: {answer[:12]!r}, closed after {time.monotonic() - start:.1f} s")
    exporter.stop()

    for fmt, request in (("json", b"GET /-/healthy?" + b"\\" * 4000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                         ("text", b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")):
        exporter = Exporter(work, "--log-level", "debug", "--log-format", fmt).start()
        time.sleep(0.3)
        before = exporter.log_path.stat().st_size
        for _ in range(20):
            exchange(exporter.port, request, 0.5)
        time.sleep(0.3)
        print(f"debug {fmt}: 20 requests of {len(request)} B, {exporter.log_path.stat().st_size - before} log bytes")
        exporter.stop()

    exporter = Exporter(work).start()
    for request in (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"POST /notify HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}"):
        answer = exchange(exporter.port, request, 1.0)
        status, body = answer.split(b"\r\n")[0], answer.rpartition(b"\r\n\r\n")[2][:60]
        print(f"{request.split(b' ')[0].decode()}: {status!r} {body!r}")
    exporter.stop()


if __name__ == "__main__":
    command, *numbers = sys.argv[1:] or ["misc"]
    {"head": head, "pipe": pipe, "slow": slow, "misc": misc}[command](*map(int, numbers))
