"""Restarts with real processes: SIGTERM drains and saves, the next start loads, a bad file is set aside."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from mtt_exporter.correlator import STATE_VERSION
from mtt_exporter.replay import post_all
from mtt_exporter.simulate import EXPECTED_STATUS, SimConfig, diff, generate

from .conftest import need_binary
from .process import Exporter, combined


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
    assert sample(text, "mtt_calls_total{line=\"other\",outcome=\"answered\"}") == 1
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
    assert json.loads(state.read_text())["version"] == STATE_VERSION  # a good file was written at the stop


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


def post_deliveries(exporter: Exporter, deliveries) -> Counter:
    """POST the simulator's deliveries as MTT would (one body a request); returns (kind, status) counts."""
    stats = asyncio.run(post_all(deliveries, exporter.base + "/notify", speed=None, concurrency=8))
    return stats.results


def test_restart_in_the_middle_of_a_workload_loses_and_doubles_nothing(tmp_path):
    """Half the traffic, SIGTERM, restart, the other half: both runs' expositions add up to the truth."""
    grace = 8  # longer than posting half the workload takes: no decision falls between scrape and stop
    workload = generate(SimConfig(calls=500, seed=11, malformed_pct=10, duplicate_pct=5, reorder_pct=5))
    half = len(workload.deliveries) // 2
    args = ("--state-file", str(tmp_path / "state.json"), "--call-end-grace", str(grace))

    first = Exporter(tmp_path, *args).start()
    started = time.monotonic()
    results = post_deliveries(first, workload.deliveries[:half])
    before_stop = first.metrics()
    assert first.stop() == 0
    assert time.monotonic() - started < grace, "posting took longer than the grace period: raise it"
    saved = json.loads((tmp_path / "state.json").read_text())["calls"]
    open_calls = sum(1 for _, call in saved if not call.get("ended"))
    assert open_calls > 0  # the cut really fell in the middle of calls

    second = Exporter(tmp_path, *args).start()
    try:
        assert sample(second.metrics(), "mtt_calls_in_progress") == open_calls
        results += post_deliveries(second, workload.deliveries[half:])
        time.sleep(grace + 1.5)  # unanswered calls are decided after the grace period, then a tick
        after = second.metrics()
    finally:
        assert second.stop() == 0
    assert sum(results.values()) == len(workload.deliveries)
    assert all(status == str(EXPECTED_STATUS[kind]) for kind, status in results), results
    assert diff(workload.truth, combined(before_stop, after)) == []
    # the second run alone misses what the first one counted: the sum is not trivially right
    assert diff(workload.truth, after) != []


def read_only_root(data: Path | None) -> list[str]:
    """A prefix running the exporter with / mounted read-only (and `data` a tmpfs), in its own mount namespace."""
    unshare = need_binary("unshare")
    probe = subprocess.run([unshare, "--mount", "--propagation", "private", "mount", "-o", "remount,bind,ro", "/"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount namespace here: {probe.stderr.decode().strip()}")
    script = "mount -o remount,bind,ro / && "
    if data is not None:
        script += f"mount -t tmpfs -o size=16m,mode=0700 tmpfs {data} && "
    return [unshare, "--mount", "--propagation", "private", "sh", "-c", script + 'exec "$0" "$@"']


def test_read_only_root_filesystem_with_a_writable_data_dir(tmp_path, seed_call):
    data = tmp_path / "data"
    data.mkdir()
    exporter = Exporter(tmp_path, "--data-dir", str(data), "--state-file", "state.json",
                        prefix=read_only_root(data)).start()
    try:
        assert exporter.post(seed_call[:4])[0] == 200
    finally:
        assert exporter.stop() == 0
    log = exporter.log()
    assert "state saved" in log and "Read-only" not in log and "ERROR" not in log


def test_read_only_root_filesystem_without_a_data_dir(tmp_path, seed_call):
    exporter = Exporter(tmp_path, prefix=read_only_root(None)).start()
    try:
        assert exporter.post(seed_call)[0] == 200
        assert 'mtt_calls_total{line="other",outcome="answered"} 1.0' in exporter.metrics()
    finally:
        assert exporter.stop() == 0
    unwritable = Exporter(tmp_path, "--state-file", str(tmp_path / "state.json"), prefix=read_only_root(None))
    with pytest.raises(AssertionError, match="exited 1"):
        unwritable.start()
    assert "is not writable" in unwritable.log()
