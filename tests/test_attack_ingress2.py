"""A third outside attack on the HTTP side (#9), against the mechanisms of the two hardening passes.

Real processes over loopback (`tests.process.Exporter`). Tests under "broke" reproduce a fault
(strict xfail until fixed); the others pin down what held. Every loop is bounded in count and
time; nothing asserts timing.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.process import Exporter

MIB = 1024 * 1024


def notification(conf_id: str) -> dict:
    return {"h323_conf_id": conf_id, "event": {"type": "o", "side": "B"}, "redirect_number": "79001234567",
            "date_time": int(time.time())}


def exchange(port: int, data: bytes, wait: float = 2.0) -> bytes:
    """Send raw bytes on a new connection and read until the server closes it or `wait` passes."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + wait
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline and (chunk := sock.recv(65536)):
                out += chunk
    return out


def rejected(exporter: Exporter, reason: str) -> float:
    for line in exporter.metrics().splitlines():
        if line.startswith(f'mtt_notifications_rejected_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def full_size_body(conf_id: str, size: int) -> bytes:
    """A valid notification padded with JSON whitespace to exactly `size` bytes."""
    body = json.dumps(notification(conf_id)).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def hold_heads(port: int, count: int, head: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(head)
        socks.append(sock)
    return socks


@pytest.fixture
def defaults(tmp_path: Path) -> Iterator[Exporter]:
    """Defaults but a short --read-timeout (so a test's held connections end within seconds)."""
    process = Exporter(tmp_path, "--read-timeout", "6").start()
    yield process
    process.stop()


# --- broke ---------------------------------------------------------------------------------

BUDGET_HOLDERS = [
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n{", id="content-length-1MiB-1-byte-sent"),
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", id="chunked-head-only"),
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 20\r\n\r\n",
                 id="gzip-20-bytes-announced"),
]


@pytest.mark.parametrize("head", BUDGET_HOLDERS)
def test_slow_bodies_cannot_take_the_body_budget_from_fast_senders(defaults: Exporter, head: bytes) -> None:
    socks = hold_heads(defaults.port, 64, head)  # 64 x 1 MiB = the default 64 MiB budget
    try:
        time.sleep(0.5)
        statuses = [defaults.post(notification(f"BUDGET{i}"))[0] for i in range(5)]
        assert statuses == [200] * 5, f"{statuses}; overloaded counted {rejected(defaults, 'overloaded')}"
    finally:
        for sock in socks:
            sock.close()


Q_ZERO = [
    pytest.param({"Accept-Encoding": "gzip;q=0, identity"}, "Content-Encoding", "gzip", id="gzip-q0"),
    pytest.param({"Accept": "application/openmetrics-text;q=0, text/plain"}, "Content-Type", "openmetrics", id="openmetrics-q0"),
    pytest.param({"Accept-Encoding": "identity, GZIP; Q=0.000"}, "Content-Encoding", "gzip", id="gzip-q0-upper-case"),
    pytest.param({"Accept": "text/plain, application/openmetrics-text; version=1.0.0; q=0.0"}, "Content-Type",
                 "openmetrics", id="openmetrics-versioned-q0"),
]


@pytest.mark.parametrize(("headers", "header", "refused"), Q_ZERO)
def test_metrics_negotiation_honours_q0(defaults: Exporter, headers: dict[str, str], header: str, refused: str) -> None:
    """RFC 9110 12.4.2: q=0 means not acceptable."""
    import urllib.request
    req = urllib.request.Request(defaults.base + "/metrics", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as response:
        value = response.headers.get(header) or ""
        response.read()
    assert refused not in value, f"{header}: {value} although the client said q=0"


PROXIED_RELOADS = [
    pytest.param({"X-Forwarded-For": "203.0.113.7"}, id="x-forwarded-for"),
    pytest.param({"Forwarded": "for=203.0.113.7"}, id="forwarded"),
    pytest.param({"X-Real-IP": "203.0.113.7"}, id="x-real-ip"),
]


@pytest.mark.parametrize("headers", PROXIED_RELOADS)
def test_a_proxied_request_is_not_trusted_as_loopback_for_reload(tmp_path: Path, headers: dict[str, str]) -> None:
    label_map = tmp_path / "labels.yaml"
    label_map.write_text('lines:\n  "79586488002": sales\n')
    exporter = Exporter(tmp_path, "--label-map", str(label_map), "--token", "t0k3n-Reload").start()
    try:
        status, body = exporter.request("POST", "/-/reload", b"", headers)
        assert status == 403, body
    finally:
        exporter.stop()


def test_reloads_are_rate_limited_and_a_token_still_passes_through_a_proxy(tmp_path: Path) -> None:
    label_map = tmp_path / "labels.yaml"
    label_map.write_text('lines:\n  "79586488002": sales\n')
    exporter = Exporter(tmp_path, "--label-map", str(label_map), "--token", "t0k3n-Reload").start()
    try:
        proxied = {"X-Forwarded-For": "203.0.113.7", "Authorization": "Bearer t0k3n-Reload"}
        assert exporter.request("POST", "/-/reload", b"", proxied)[0] == 200
        status, body = exporter.request("POST", "/-/reload")  # loopback, but within the second
        assert status == 429, body
        assert json.loads(body)["reason"] == "overloaded"
        assert rejected(exporter, "overloaded") == 1
    finally:
        exporter.stop()


# --- held ----------------------------------------------------------------------------------


def _abort_mid_body(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n{" + b" " * 5000)
        time.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST


def _abort_chunked(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{  ")
        time.sleep(0.1)


def _bad_chunk(port: int) -> None:
    exchange(port, b"POST /notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 1)


def _bad_gzip(port: int) -> None:
    exchange(port, b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\n"
             + b"\x1f\x8b" + b"\x00" * 8, 1)


def _gzip_bomb(port: int) -> None:
    bomb = gzip.compress(b" " * (4 * MIB))
    exchange(port, b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
             % len(bomb) + bomb, 1)


def _too_large(port: int) -> None:
    exchange(port, b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n{", 1)


def _timeout(port: int) -> None:
    exchange(port, b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", 2.5)


def _abort_after_body(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % MIB
                     + full_size_body("ABORTED1", MIB))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _internal_json(port: int) -> None:
    exchange(port, b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n[1,2,3,4", 1)


ABORTS = [
    pytest.param(_abort_mid_body, id="rst-mid-body"),
    pytest.param(_abort_chunked, id="close-mid-chunk"),
    pytest.param(_bad_chunk, id="bad-chunk-size"),
    pytest.param(_bad_gzip, id="bad-gzip"),
    pytest.param(_gzip_bomb, id="gzip-bomb-4MiB"),
    pytest.param(_too_large, id="content-length-413"),
    pytest.param(_timeout, id="body-408"),
    pytest.param(_abort_after_body, id="rst-after-full-body"),
    pytest.param(_internal_json, id="broken-json"),
]


@pytest.mark.parametrize("abort", ABORTS)
def test_every_abort_path_releases_the_body_budget(tmp_path: Path, abort) -> None:
    """--max-buffered-bytes = --max-body-bytes: one leaked reservation would 429 every full-size body."""
    exporter = Exporter(tmp_path, "--max-buffered-bytes", str(MIB), "--read-timeout", "2").start()
    try:
        for _ in range(3):
            abort(exporter.port)
        time.sleep(2.5)  # every aborted request's handler finished (read timeout 2 s)
        for i in range(3):
            status, body = exporter.request("POST", "/notify", full_size_body(f"AFTER{i}", MIB),
                                            {"Content-Type": "application/json"})
            assert status == 200, body[:300]
    finally:
        exporter.stop()


def test_legit_pipelining_beyond_the_queue_cap_is_served(defaults: Exporter) -> None:
    """8 pipelined POSTs in one segment (the cap is 2 queued): all 8 answered 200, in order."""
    one = json.dumps(notification("PIPE")).encode()
    requests = b"".join(
        b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(body) + body for body in (one.replace(b"PIPE", b"PIPE%d" % i) for i in range(8)))
    answer = exchange(defaults.port, requests, wait=3)
    assert answer.count(b"HTTP/1.1 200") == 8, answer[:500]


ODD_PROTOCOL = [
    pytest.param(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", id="websocket-upgrade"),
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                 b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 2\r\n\r\n{}", id="h2c-upgrade"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="h2-preface"),
    pytest.param(b"POST /notify HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", id="http11-without-host"),
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;" + b"e" * 60000
                 + b"\r\n{}\r\n0\r\n\r\n", id="huge-chunk-extension"),
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
                 + b"".join(b"X-T%d: v\r\n" % i for i in range(200)) + b"\r\n", id="200-trailers"),
    pytest.param(b"BREW /notify HTTP/1.1\r\nHost: x\r\n\r\n", id="absurd-method"),
    pytest.param(b"M" * 1500 + b" /notify HTTP/1.1\r\nHost: x\r\n\r\n", id="1500-byte-method"),
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", id="two-content-lengths"),
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 4\r\n\r\n\x00\x01\x02\x03", id="br-garbage"),
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip, gzip\r\nContent-Length: 2\r\n\r\n{}", id="gzip-gzip"),
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Encoding: deflate\r\nContent-Length: 2\r\n\r\n{}", id="deflate-plain"),
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}", id="expect-100"),
    pytest.param(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                 id="cl-and-te"),
]


@pytest.mark.parametrize("request_bytes", ODD_PROTOCOL)
def test_odd_protocol_paths_get_json_4xx_and_a_normal_post_still_passes(defaults: Exporter, request_bytes: bytes) -> None:
    answer = exchange(defaults.port, request_bytes, wait=1.5)
    head, _, body = answer.partition(b"\r\n\r\n")
    if answer:
        status = int(head.split(b" ")[1])
        assert status < 500, answer[:300]
        if status >= 400:
            assert b"application/json" in head, answer[:300]
            json.loads(body)
    status, body = defaults.post(notification("AFTERODD"))
    assert status == 200, body
    assert rejected(defaults, "internal") == 0


RELOAD_SPOOFS = [
    pytest.param({"X-Forwarded-For": "127.0.0.1"}, id="xff-loopback"),
    pytest.param({"X-Forwarded-For": "::1, 127.0.0.1"}, id="xff-two-loopbacks"),
    pytest.param({"X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"}, id="x-real-ip-forwarded"),
]


def _own_address() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing interface
        address = probe.getsockname()[0]
        return None if address.startswith("127.") else address
    return None


@pytest.mark.parametrize("headers", RELOAD_SPOOFS)
def test_reload_from_a_non_loopback_peer_cannot_pass_as_loopback(tmp_path: Path, headers: dict[str, str]) -> None:
    own = _own_address()
    if own is None:
        pytest.skip("no non-loopback address on this host")
    exporter = Exporter(tmp_path, "--token", "t0k3n-Reload")
    exporter.args = ("--listen", f"0.0.0.0:{exporter.port}", *exporter.args)  # the last --listen wins
    port = exporter.port
    exporter.start()
    try:
        sent = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + b"".join(
            f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"
        with socket.create_connection((own, port), timeout=3) as sock:
            sock.sendall(sent)
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
    finally:
        exporter.stop()


def _series(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line and not line.startswith("#")]


def _scrapes(exporter: Exporter) -> dict[str, str]:
    """The exposition in text, OpenMetrics, and both gzipped (the renderer's cached pieces)."""
    import urllib.request
    out = {}
    for name, accept, encoding in (("text", "", "identity"), ("om", "application/openmetrics-text", "identity"),
                                   ("text-gz", "", "gzip"), ("om-gz", "application/openmetrics-text", "gzip")):
        req = urllib.request.Request(exporter.base + "/metrics", headers={"Accept": accept, "Accept-Encoding": encoding})
        with urllib.request.urlopen(req, timeout=10) as response:
            body = response.read()
            if response.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
        out[name] = body.decode()
    return out


def test_removed_line_leaves_every_exposition_after_reload_and_storms_do_not_grow_it(tmp_path: Path) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
    from prometheus_client.parser import text_string_to_metric_families as text_families
    label_map = tmp_path / "labels.yaml"
    both = 'lines:\n  "79586488002": sales\n  "79586488003": support\n'
    label_map.write_text(both)
    exporter = Exporter(tmp_path, "--label-map", str(label_map)).start()
    try:
        call = {**notification("RELOAD1"), "sip_id": "79586488002"}
        assert exporter.post(call)[0] == 200
        before = _scrapes(exporter)  # the renderer caches these pieces
        assert all(_series(text, 'line="sales"') for text in before.values())
        label_map.write_text('lines:\n  "79586488003": support\n')
        assert exporter.request("POST", "/-/reload")[0] == 200
        after = _scrapes(exporter)
        for name, text in after.items():
            assert not _series(text, 'line="sales"'), name
            assert _series(text, 'line="support"'), name
        list(text_families(after["text"]))
        list(om_families(after["om"]))
        assert after["om-gz"].endswith("# EOF\n")
        for i in range(4):  # reloads from loopback (at most one a second): the exposition keeps its size
            label_map.write_text(both if i % 2 else 'lines:\n  "79586488003": support\n')
            time.sleep(1.05)
            assert exporter.request("POST", "/-/reload")[0] == 200
        final = _scrapes(exporter)
        assert len(_series(final["text"], "mtt_")) == len(_series(before["text"], "mtt_"))
        assert _series(final["om-gz"], 'line="sales"') and not _series(final["om-gz"], 'mtt_call_attempts_total{line="sales"} 1')
        status, body = exporter.post({**notification("RELOAD2"), "sip_id": "79586488002"})
        assert status == 200, body
    finally:
        exporter.stop()


HOSTILE_NAMES = [
    pytest.param('lines:\n  "79586488002": "sales\\"} 1\\n# EOF"\n', id="quote-newline-eof"),
    pytest.param('lines:\n  "79586488002": "other"\n', id="other"),
    pytest.param('lines:\n  "79586488002": "Sales"\n', id="upper-case"),
    pytest.param('lines:\n  "79586488002": "s\\u0430les"\n', id="cyrillic-homoglyph"),
    pytest.param('lines:\n  "79586488002": ' + "a" * 41 + "\n", id="41-chars"),
    pytest.param('lines:\n  "79586488002": &a [x]\n  "79586488003": *a\n', id="yaml-anchor-list"),
    pytest.param("lines: !!python/object/apply:os.system ['true']\n", id="yaml-python-tag"),
]


@pytest.mark.parametrize("content", HOSTILE_NAMES)
def test_hostile_label_map_on_reload_is_refused_and_the_old_map_stays(tmp_path: Path, content: str) -> None:
    label_map = tmp_path / "labels.yaml"
    label_map.write_text('lines:\n  "79586488002": sales\n')
    exporter = Exporter(tmp_path, "--label-map", str(label_map)).start()
    try:
        label_map.write_text(content)
        status, body = exporter.request("POST", "/-/reload")
        assert status == 400, body
        assert json.loads(body)["status"] == "error"
        assert _series(exporter.metrics(), 'line="sales"')
        assert exporter.post({**notification("HOSTILE1"), "sip_id": "79586488002"})[0] == 200
    finally:
        exporter.stop()


def test_trickle_readers_cannot_hold_every_connection(tmp_path: Path) -> None:
    """Readers steady enough never to stall a write (never dropped for it) are still evicted
    between two answers when a sender needs the connection."""
    limit = 4
    exporter = Exporter(tmp_path, "--max-connections", str(limit), "--read-timeout", "2").start()
    readers = []
    try:
        pipelined = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n" * 40000
        for _ in range(limit):
            sock = socket.create_connection(("127.0.0.1", exporter.port))
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(pipelined)
            readers.append(sock)
        received = [0] * limit
        deadline = time.monotonic() + 8  # four read timeouts
        while time.monotonic() < deadline:
            for i, sock in enumerate(readers):
                with contextlib.suppress(BlockingIOError, OSError):
                    received[i] += len(sock.recv(8192))
            time.sleep(0.1)  # ~80 kB/s a connection: the server's writes resume within the timeout
        assert min(received) > 300_000, received  # still being served after four read timeouts
        try:
            status, body = exporter.request("POST", "/notify", notification("TRICKLE1"),
                                            {"Content-Type": "application/json"}, timeout=5)
        except OSError as error:
            status, body = 0, repr(error).encode()
        assert status == 200, (status, body[:200], received)
    finally:
        for sock in readers:
            sock.close()
        exporter.stop()


def test_with_a_token_unauthenticated_slow_bodies_reserve_no_budget(tmp_path: Path) -> None:
    """The token is checked before the body budget is reserved: without it the budget attack fails."""
    exporter = Exporter(tmp_path, "--token", "t0k3n-Budget", "--read-timeout", "6").start()
    socks = hold_heads(exporter.port, 64, b"POST /notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    try:
        time.sleep(0.5)
        status, body = exporter.post(notification("TOKENBUDGET1"), path="/notify/t0k3n-Budget")
        assert status == 200, body
    finally:
        for sock in socks:
            sock.close()
        exporter.stop()


def _post_on(sock: socket.socket, conf_id: str) -> bytes:
    body = json.dumps(notification(conf_id)).encode()
    sock.sendall(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % len(body) + body)
    try:
        return sock.recv(65536)
    except OSError as error:
        return repr(error).encode()


def test_eviction_spares_an_active_sender_for_silent_connections(tmp_path: Path) -> None:
    exporter = Exporter(tmp_path, "--max-connections", "3", "--read-timeout", "20").start()
    sender = socket.create_connection(("127.0.0.1", exporter.port), timeout=3)
    silent = []
    try:
        assert _post_on(sender, "EVICT0").startswith(b"HTTP/1.1 200")
        time.sleep(0.2)
        silent = [socket.create_connection(("127.0.0.1", exporter.port)) for _ in range(2)]  # never send a byte
        time.sleep(1.0)
        assert _post_on(sender, "EVICT1").startswith(b"HTTP/1.1 200")  # the sender is active: idle 0.5 s
        time.sleep(0.5)
        newcomer = socket.create_connection(("127.0.0.1", exporter.port))  # the table is full: one is closed
        silent.append(newcomer)
        time.sleep(0.3)
        answer = _post_on(sender, "EVICT2")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        sender.close()
        for sock in silent:
            sock.close()
        exporter.stop()
