"""Outside attacks on the persistence and timing side (#9 items 8 and 9): the state file,
`--record` / `replay`, and the process clock.

Each test states what the README promises. The ones the code did not keep were marked
`xfail(strict=True)` with the finding as the reason; all fourteen are fixed and the marks
gone (docs/reliability.md, "Attack round on persistence"). Every child process and loop is
bounded in time.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtt_exporter.clock import ProcessClock
from mtt_exporter.correlator import Correlator, dump_state
from mtt_exporter.record import Recorder, read_records
from mtt_exporter.statefile import SetAside, StateFile

from .conftest import Clock, need_binary
from .process import Exporter
from .test_correlator import B1, NOW, SEED, note, run

HOUR = 3600.0
CHILD_TIMEOUT = 20.0


def child(code: str, timeout: float = CHILD_TIMEOUT, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter; TimeoutExpired is a finding, not a hang of the suite."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def snapshot_file(tmp_path: Path, steps=SEED[:4], saved_at: float = NOW) -> Path:
    """A state file of one call in progress (C1, answered), dated `saved_at`."""
    correlator, _, _ = run(steps)
    data = dump_state(correlator)
    data["saved_at"] = saved_at
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data))
    return path


def loader(path: Path, now: float = NOW) -> tuple[StateFile, Correlator]:
    clock = Clock(now)
    correlator = Correlator()
    return StateFile(path, correlator, ProcessClock(clock, clock)), correlator


# --- the state file: bytes --------------------------------------------------------------------


BIG = "1" + "0" * 400  # a valid JSON number; float() of it overflows


@pytest.mark.parametrize("where", [pytest.param("saved_at", id="saved_at"), pytest.param("last_seen", id="last_seen"),
                                   pytest.param("deadline", id="deadline")])
def test_huge_integer_time_is_set_aside_not_raised(tmp_path, where):
    path = snapshot_file(tmp_path)
    data = json.loads(path.read_text())
    (data if where == "saved_at" else data["calls"][0][1])[where] = "HUGE"
    path.write_text(json.dumps(data).replace('"HUGE"', BIG))
    state, correlator = loader(path)
    assert state.load() == [] and len(correlator) == 0
    assert state.set_aside is SetAside.CORRUPT and not path.exists()


def test_process_starts_despite_a_huge_saved_at(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"format":"mtt-exporter-state","version":1,"calls":[],"saved_at":%s}' % BIG)
    exporter = Exporter(tmp_path, "--state-file", str(path))
    try:
        exporter.start(timeout=20)
    finally:
        if exporter.process is not None:
            exporter.stop(signal.SIGKILL)
    assert not path.exists()


def test_fifo_at_the_state_path_does_not_hang_the_start(tmp_path):
    path = tmp_path / "state.json"
    os.mkfifo(path)
    code = f"""
        from pathlib import Path
        from mtt_exporter.correlator import Correlator
        from mtt_exporter.statefile import StateFile
        StateFile(Path({str(path)!r}), Correlator()).load()
        """
    try:
        result = child(code, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail("load() of a FIFO still blocked after 8 s")
    assert result.returncode == 0, result.stderr


def test_huge_state_file_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "state.json"
    with path.open("wb") as file:
        file.truncate(2 << 30)  # sparse: no disk used
    code = f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
        from pathlib import Path
        from mtt_exporter.correlator import Correlator
        from mtt_exporter.statefile import StateFile
        state = StateFile(Path({str(path)!r}), Correlator())
        state.load()
        print(state.set_aside)
        """
    result = child(code)
    assert result.returncode == 0, result.stderr[-300:]


def test_directory_at_the_state_path_is_counted(tmp_path):
    path = tmp_path / "state.json"
    path.mkdir()
    state, correlator = loader(path)
    assert state.load() == []
    assert state.set_aside is not None


def test_symlink_at_the_state_path_is_replaced_not_followed_on_save(tmp_path):
    """Held: os.replace swaps the link itself; the target outside is untouched."""
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    path = tmp_path / "state.json"
    path.symlink_to(target)
    correlator, _, _ = run(SEED[:4])
    StateFile(path, correlator).save()
    assert target.read_text() == "keep" and not path.is_symlink()


def test_a_future_last_seen_does_not_stop_ttl_expiry(tmp_path):
    correlator, _, _ = run(SEED[:4])
    data = dump_state(correlator)
    (conf_id, call), = data["calls"]
    data["calls"] = [["FUTURE", {**call, "last_seen": NOW + 1e9}], [conf_id, call]]
    data["saved_at"] = NOW + 10
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data))
    state, restored = loader(path, NOW + 10)
    state.load()
    if state.set_aside is not None:
        return  # refusing the whole file is also a fix
    restored.expire(NOW + restored.ttl + 100)
    assert conf_id not in restored.calls


# --- the state file: timings and faults -----------------------------------------------------


def test_temp_file_of_a_killed_save_is_cleaned_up(tmp_path):
    path = tmp_path / "state.json"
    code = f"""
        import os, signal
        from pathlib import Path
        from mtt_exporter import statefile
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # killed mid-save
        statefile.write_atomically(Path({str(path)!r}), b"x" * 100_000)
        """
    result = child(code)
    assert result.returncode == -signal.SIGKILL
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the leftover
    # a whole restart cycle: start (load), run, stop (save)
    correlator, _, _ = run(SEED[:4])
    state = StateFile(path, Correlator())
    state.acquire()  # as the server does: only the holder of the lock cleans up (attack round 2, finding 7)
    state.load()
    state.release()
    StateFile(path, correlator).save()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_failed_periodic_save_then_hard_kill_brings_back_no_ended_call(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    correlator, _, _ = run(SEED[:4])
    state = StateFile(path, correlator)
    state.write(state.snapshot())  # a periodic snapshot: C1 answered, in progress
    for offset, notification in SEED[4:]:  # C1 ends
        correlator.apply(notification, NOW + offset)
    assert correlator.in_progress() == 0

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):  # the next periodic snapshot fails (server.py logs it and goes on)
        state.write(state.snapshot())
    monkeypatch.undo()
    # SIGKILL here: no final save. The next start:
    fresh = Correlator()
    StateFile(path, fresh).load()
    assert fresh.in_progress() == 0


def test_final_save_failing_on_the_real_file_size_limit_removes_the_older_snapshot(tmp_path):
    """Held (real process, real EFBIG via prlimit): the next start is empty, no phantom calls.
    Changed in attack round 2 (finding 4): the older snapshot is removed, not set aside."""
    import time

    seed = json.loads((Path(__file__).parent / "data" / "seed_call.json").read_text())
    path = tmp_path / "state.json"
    exporter = Exporter(tmp_path, "--state-file", str(path), "--state-interval", "1").start()
    try:
        began = [{**n, "h323_conf_id": f"CALL{i:04d}"} for i in range(150) for n in seed[:4]]
        for k in range(0, len(began), 400):
            assert exporter.post(began[k:k + 400])[0] == 200
        deadline = time.monotonic() + 15
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert path.stat().st_size > 20_000
        resource.prlimit(exporter.process.pid, resource.RLIMIT_FSIZE, (20_000, 20_000))
        ended = [{**n, "h323_conf_id": f"CALL{i:04d}"} for i in range(150) for n in seed[4:]]
        for k in range(0, len(ended), 400):
            assert exporter.post(ended[k:k + 400])[0] == 200
    finally:
        exporter.stop()
    assert not path.exists()
    assert "older state file is removed" in exporter.log()
    again = Exporter(tmp_path, "--state-file", str(path)).start()
    try:
        assert "mtt_calls_in_progress 0.0" in again.metrics()
    finally:
        again.stop()


def test_state_survives_a_start_whose_port_is_taken(tmp_path):
    """Held: the state is loaded (and the file removed) before the bind; the failed start saves it again."""
    import socket

    path = snapshot_file(tmp_path, saved_at=__import__("time").time())
    before = json.loads(path.read_text())["calls"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "mtt_exporter", "--listen", f"127.0.0.1:{port}",
                                 "--state-file", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "cannot start" in result.stderr
    assert [conf_id for conf_id, _ in json.loads(path.read_text())["calls"]] == [conf_id for conf_id, _ in before]


# --- the clock ------------------------------------------------------------------------------


def test_rapid_restarts_across_wall_clock_steps_keep_every_deadline(tmp_path):
    """Held: five restarts, the wall clock stepping +7 h, -1 h, ... while each process runs;
    a pending grace deadline stays exactly as far ahead as the real time left, every time."""
    correlator, _, _ = run(SEED[:3] + [(20, note("h", 20, B1, side="B", cause=17))])  # grace pending
    wall, monotonic = Clock(NOW + 20), Clock(50.0)
    clock = ProcessClock(wall, monotonic)
    remaining = correlator.calls["C1"].deadline - clock()
    path = tmp_path / "state.json"
    for number, step in enumerate((7 * HOUR, -HOUR, 0.05, -7 * HOUR, 86_400.0), 1):
        wall.now += step  # a step while the process runs: moves nothing
        wall.now += 1.0
        monotonic.now += 1.0
        remaining -= 1.0
        assert correlator.calls["C1"].deadline - clock() == pytest.approx(remaining, abs=0.1)
        StateFile(path, correlator, clock).save()
        wall.now += 1.0  # the restart takes a second
        remaining -= 1.0
        monotonic = Clock(1000.0 * number)  # a new process: another monotonic origin
        clock = ProcessClock(wall, monotonic)
        correlator = Correlator(grace=15)
        state = StateFile(path, correlator, clock)
        state.load()
        assert state.set_aside is None and correlator.in_progress() == 1
        # steps under clock.JITTER_SECONDS (0.1 s) are taken for reading jitter, by design
        assert correlator.calls["C1"].deadline - clock() == pytest.approx(remaining, abs=0.1)
    assert remaining > 0 and correlator.expire(clock()) == []


# --- --record ---------------------------------------------------------------------------------


def body_line(i: int) -> bytes:
    return b'{"time": %d.000000, "content_type": "application/json", "body": "{\\"n\\": %d}"}\n' % (i, i)


def test_record_file_torn_before_the_start_keeps_the_next_body(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_bytes(body_line(1) + body_line(2)[:25])  # torn by a kill
    recorder = Recorder(path, max_bytes=1 << 20, keep=1)
    recorder.write(3.0, b'{"n": 3}', "application/json")
    recorder.close()
    skipped: list[str] = []
    bodies = [body for _, body, _ in read_records([path], skipped.append)]
    assert b'{"n": 3}' in bodies and len(skipped) == 1


def test_record_does_not_write_through_a_symlink(tmp_path):
    target = tmp_path / "not-a-recording.conf"
    target.write_text("setting = 1\n")
    os.chmod(target, 0o644)
    link = tmp_path / "rec.jsonl"
    link.symlink_to(target)
    try:
        recorder = Recorder(link, max_bytes=1 << 20, keep=1)
        recorder.write(1.0, b'{"numberA": "79001234567"}', "application/json")
        recorder.close()
    except OSError:
        pass  # refusing the link is a fix too
    assert target.read_text() == "setting = 1\n"
    assert os.stat(target).st_mode & 0o777 == 0o644


def test_record_rotation_on_a_full_filesystem_keeps_whole_lines_and_no_fd(tmp_path):
    """Held: a real full filesystem (tmpfs of 64 KiB and 4 inodes, one the lock file in a private mount
    namespace): the new file after the second rotation cannot be created (ENOSPC), later
    flushes keep failing; no exception escapes, every file left holds whole lines, no
    descriptor leaks, and the failure is logged once, not once per flush."""
    unshare = need_binary("unshare")
    data = tmp_path / "data"
    data.mkdir()
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from mtt_exporter.record import Recorder
        recorder = Recorder({str(data / "rec.jsonl")!r}, max_bytes=4096, keep=2)
        fds = len(os.listdir("/proc/self/fd"))
        for i in range(400):
            recorder.write(float(i), b'{{"n": %d, "pad": "%s"}}' % (i, b"x" * 100), "application/json")
            if i % 10 == 9:
                recorder.flush()
        recorder.close()
        print(len(os.listdir("/proc/self/fd")) - fds)
        print(sorted(os.listdir({str(data)!r})))
        """))
    shell = f"mount -t tmpfs -o size=64k,nr_inodes=4 tmpfs {data} && exec \"$0\" \"$@\""  # 4: the lock file
    result = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", shell, sys.executable,
                             str(script)], capture_output=True, text=True, timeout=60)
    if "mount" in result.stderr and result.returncode != 0 and "Traceback" not in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr[-500:]
    delta, names = result.stdout.splitlines()[-2:]
    assert int(delta) <= 0  # closed or never reopened, nothing else left open
    assert result.stderr.count("cannot write --record file") == 1
    assert "Traceback" not in result.stderr
    assert eval(names) == [".rec.jsonl.lock", "rec.jsonl.1", "rec.jsonl.2"]  # the third file could not be created


# --- replay -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    pytest.param(b'{"time": 1' + b"0" * 400 + b', "body": "{}"}\n', id="time overflows a float"),
    pytest.param(b"[" * 200_000 + b"\n", id="deeply nested line"),
])
def test_replay_skips_a_line_that_breaks_the_parser(tmp_path, bad):
    path = tmp_path / "rec.jsonl"
    path.write_bytes(body_line(1) + bad + body_line(2))
    skipped: list[str] = []
    assert [t for t, _, _ in read_records([path], skipped.append)] == [1.0, 2.0]
    assert len(skipped) == 1


@pytest.mark.parametrize("time_value", [pytest.param(b"1e300", id="1e300"), pytest.param(b'"inf"', id="inf string")])
def test_replay_of_an_absurd_time_finishes(tmp_path, time_value):
    path = tmp_path / "rec.jsonl"
    path.write_bytes(body_line(1) + b'{"time": %s, "body": "{}"}\n' % time_value)
    try:
        subprocess.run([sys.executable, "-m", "mtt_exporter", "replay", str(path), "--url",
                        "http://127.0.0.1:9/notify"], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("replay still sleeping after 10 s")


@pytest.mark.parametrize("content_type", [pytest.param(b"5", id="a number"), pytest.param(b'["x"]', id="a list"),
                                          pytest.param(b'"a\\r\\nX-Injected: 1"', id="CR LF")])
def test_replay_survives_a_hostile_content_type(tmp_path, content_type):
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b'{"time": 1, "body": "{}", "content_type": %s}\n' % content_type + body_line(2))
    exporter = Exporter(tmp_path).start()
    try:
        result = subprocess.run([sys.executable, "-m", "mtt_exporter", "replay", str(path), "--url",
                                 exporter.base + "/notify", "--as-fast-as-possible"],
                                capture_output=True, text=True, timeout=30)
    finally:
        exporter.stop()
    assert "Traceback" not in result.stderr
    assert any("recorded" in line and "400" in line for line in result.stdout.splitlines()), result.stderr[-300:]


def test_record_file_truncated_by_logrotate_then_disk_full_keeps_whole_lines(tmp_path):
    from .test_record import LINE, FullDisk

    path = tmp_path / "rec.jsonl"
    recorder = Recorder(path, max_bytes=1 << 20, keep=1)
    for i in range(5):
        recorder.write(float(i), b'{"n": %d}' % i, "application/json")
    recorder.flush()
    os.truncate(path, 0)  # copytruncate
    disk = FullDisk(recorder._file, LINE + 7)
    recorder._file = disk
    for i in range(5, 8):
        recorder.write(float(i), b'{"n": %d}' % i, "application/json")
    recorder.flush()
    recorder._file = disk.file  # space freed
    recorder.write(8.0, b'{"n": 8}', "application/json")
    recorder.close()
    data = path.read_bytes()
    assert b"\0" not in data
    skipped: list[str] = []
    assert [t for t, _, _ in read_records([path], skipped.append)] == [5.0, 8.0] and skipped == []


def many_calls_file(path: Path, count: int) -> None:
    """A fresh state file of `count` answered calls in progress (built directly: posting them is slower)."""
    import time

    correlator, _, _ = run(SEED[:4])
    (_, call), = dump_state(correlator)["calls"]
    now = time.time()
    call = {**call, "last_seen": now - 5}
    path.write_text(json.dumps({"format": "mtt-exporter-state", "version": 1, "saved_at": now,
                                "calls": [[f"C{i:06d}", call] for i in range(count)]}))


@pytest.mark.parametrize("second", [pytest.param(signal.SIGINT, id="then SIGINT"),
                                    pytest.param(signal.SIGTERM, id="then SIGTERM again")])
def test_second_signal_during_the_final_save_loses_nothing(tmp_path, second):
    """Held: 20,000 calls; a second signal 50 ms into the shutdown (inside the save) neither
    interrupts the save nor leaves a temp file; exit 0 and every call in the file."""
    import time

    path = tmp_path / "state.json"
    many_calls_file(path, 20_000)
    exporter = Exporter(tmp_path, "--state-file", str(path)).start(timeout=60)
    exporter.process.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    exporter.process.send_signal(second)
    assert exporter.process.wait(60) == 0
    assert len(json.loads(path.read_text())["calls"]) == 20_000
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_fifo_at_the_record_path_does_not_hang_the_start(tmp_path):
    path = tmp_path / "rec.jsonl"
    os.mkfifo(path)
    code = f"""
        from mtt_exporter.record import Recorder
        try:
            Recorder({str(path)!r}, max_bytes=1 << 20, keep=1)
        except OSError:
            pass  # refusing it is a fix too
        """
    try:
        child(code, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail("Recorder() on a FIFO still blocked after 8 s")
