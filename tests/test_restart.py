"""Restarts with real processes: SIGTERM drains and saves, the next start loads, a bad file is set aside."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest

from .process import Exporter


def sample(text: str, line_start: str) -> float:
    """The value of the exposition line that starts with `line_start` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(predicate, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_accepting_finishes_in_flight_and_saves(tmp_path, seed_call, sig):
    state = tmp_path / "state.json"
    exporter = Exporter(tmp_path, "--state-file", str(state)).start()
    assert exporter.post(seed_call[:3])[0] == 200
    # a request in flight: headers and half the body sent when the signal comes
    body = json.dumps(seed_call[3:7]).encode()
    slow = socket.create_connection(("127.0.0.1", exporter.port), timeout=30)
    slow.sendall(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:20])
    time.sleep(0.5)  # let the server start handling it (the handler then counts as in flight)
    exporter.process.send_signal(sig)
    wait_for(lambda: refused(exporter.port), what="the listener to close")
    assert exporter.process.poll() is None  # still finishing the request
    slow.sendall(body[20:])
    answer = slow.recv(65536).decode()
    slow.close()
    assert answer.startswith("HTTP/1.1 200"), answer
    assert '"accepted": 4' in answer
    assert exporter.process.wait(30) == 0
    saved = json.loads(state.read_text())
    (conf_id, call), = saved["calls"]
    assert conf_id == "BC5F236C5AD211E981BA5CB901FED6FC"
    assert len(call["seen"]) == 7  # the in-flight notifications are in the file
    assert "state saved" in exporter.log()

    again = Exporter(tmp_path, "--state-file", str(state)).start()
    try:
        assert sample(again.metrics(), "mtt_calls_in_progress") == 1
        assert again.post(seed_call)[0] == 200
        text = again.metrics()
    finally:
        assert again.stop() == 0
    assert sample(text, "mtt_notifications_duplicate_total{event=\"originate\"}") == 1
    assert sample(text, "mtt_calls_total{outcome=\"answered\"}") == 1
    assert sample(text, "mtt_answered_duration_seconds_sum") == 89
    assert sample(text, "mtt_talk_duration_seconds_sum") == 79
    assert sample(text, "mtt_calls_in_progress") == 0


@pytest.mark.parametrize("content", [b'{"format":"mtt-exporter-state","version":1,"calls":[["X",', b"\x00" * 64,
                                     b'{"format":"mtt-exporter-state","version":0,"calls":[]}'],
                         ids=["truncated", "binary", "old version"])
def test_start_with_an_unusable_state_file(tmp_path, seed_call, content):
    state = tmp_path / "state.json"
    state.write_bytes(content)
    exporter = Exporter(tmp_path, "--state-file", str(state)).start()
    try:
        assert exporter.post(seed_call)[0] == 200
    finally:
        assert exporter.stop() == 0
    (aside,) = tmp_path.glob("state.json.corrupt-*")
    assert aside.read_bytes() == content
    assert "state file unusable, set aside" in exporter.log()
    assert json.loads(state.read_text())["version"] == 1  # a good file was written at the stop


def test_periodic_snapshot_survives_sigkill(tmp_path, seed_call):
    state = tmp_path / "state.json"
    exporter = Exporter(tmp_path, "--state-file", str(state), "--state-interval", "1").start()
    assert exporter.post(seed_call[:4])[0] == 200
    wait_for(lambda: state.exists() and len(json.loads(state.read_text())["calls"]) == 1, what="a snapshot")
    exporter.stop(signal.SIGKILL)
    assert not list(tmp_path.glob(".state.json.*.tmp"))  # the rename is atomic: no half files
    again = Exporter(tmp_path, "--state-file", str(state)).start()
    try:
        assert again.post(seed_call[4:])[0] == 200
        text = again.metrics()
    finally:
        again.stop()
    assert sample(text, "mtt_answered_duration_seconds_sum") == 89
    assert sample(text, "mtt_calls_in_progress") == 0
