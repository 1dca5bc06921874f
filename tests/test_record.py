"""--record: every received body as JSON lines, rotated; and `replay` of the files."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest

from mtt_exporter.record import Recorder, read_records
from mtt_exporter.server import RECORDER

from .conftest import NOW


async def test_every_received_body_is_recorded(make_client, clock, tmp_path, seed_call):
    path = tmp_path / "rec.jsonl"
    client, app = await make_client(record=path, max_body_bytes=1024)
    bodies = [json.dumps(seed_call[2]).encode(), b"{broken", b"\xff\xfe not utf-8", "event=o&h323_conf_id=1".encode()]
    types = ["application/json", "application/json", "text/plain", "application/x-www-form-urlencoded"]
    for i, (body, content_type) in enumerate(zip(bodies, types)):
        clock.now = NOW + i
        await client.post("/notify", data=body, headers={"Content-Type": content_type})
    await client.post("/notify?token=x", data=b"x" * 2048)  # too large: never read, not recorded
    app[RECORDER].flush()
    assert list(read_records([path])) == [(NOW + i, b, t) for i, (b, t) in enumerate(zip(bodies, types))]
    assert path.stat().st_mode & 0o777 == 0o600
    assert "token" not in path.read_text()


async def test_record_off_by_default(make_client):
    _, app = await make_client()
    assert RECORDER not in app


def test_rotation_keeps_the_newest_files_in_order(tmp_path):
    path = tmp_path / "rec.jsonl"
    recorder = Recorder(path, max_bytes=4096, keep=2)
    for i in range(200):
        recorder.write(float(i), b'{"n": %d, "pad": "%s"}' % (i, b"x" * 100), "application/json")
        if i % 10 == 9:
            recorder.flush()
    recorder.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rec.jsonl.lock", "rec.jsonl", "rec.jsonl.1", "rec.jsonl.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    times = [t for t, _, _ in read_records([tmp_path / "rec.jsonl.2", tmp_path / "rec.jsonl.1", path])]
    assert times == [float(i) for i in range(200 - len(times), 200)]  # contiguous, oldest first, ends with the last


class FullDisk:
    """The recorder's real file on a disk with `room` bytes left: a write past it is cut
    short (the count written), the next one fails with ENOSPC, as write(2) does."""

    def __init__(self, file, room: int, truncate_fails: bool = False) -> None:
        self.file, self.room, self.truncate_fails = file, room, truncate_fails

    def write(self, data: bytes) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        count = self.file.write(data[: self.room])
        self.room -= count
        return count

    def fileno(self) -> int:
        if self.truncate_fails:
            raise OSError(errno.EIO, "Input/output error")
        return self.file.fileno()

    def __getattr__(self, name):
        return getattr(self.file, name)


def line(i: int) -> bytes:
    return b'{"time": %d.000000, "content_type": "application/json", "body": "{\\"n\\": %d}"}\n' % (i, i)


LINE = len(line(0))  # every line(i) for i < 10 has this length


@pytest.mark.parametrize("room", [
    pytest.param(0, id="disk already full"),
    pytest.param(LINE // 2, id="cut in the first line"),
    pytest.param(2 * LINE, id="cut at a line end"),
    pytest.param(2 * LINE + 7, id="cut in the third line"),
])
def test_disk_full_leaves_whole_lines_and_recording_resumes(tmp_path, caplog, room):
    path = tmp_path / "rec.jsonl"
    recorder = Recorder(path, max_bytes=1 << 20, keep=1)
    disk = FullDisk(recorder._file, room)
    recorder._file = disk
    for i in range(5):
        recorder.write(float(i), b'{"n": %d}' % i, "application/json")
    recorder.flush()
    assert path.read_bytes() == b"".join(line(i) for i in range(room // LINE))  # whole lines or none
    recorder.write(5.0, b'{"n": 5}', "application/json")
    recorder.flush()  # still full: one log line for the whole outage
    assert caplog.text.count("cannot write --record file") == 1
    recorder._file = disk.file  # space freed
    recorder.write(6.0, b'{"n": 6}', "application/json")
    recorder.close()
    skipped: list[str] = []
    assert [t for t, _, _ in read_records([path], skipped.append)] == [float(i) for i in range(room // LINE)] + [6.0]
    assert skipped == []
    assert f"{6 - room // LINE} bodies were not recorded" in caplog.text


def test_torn_line_that_cannot_be_truncated_is_ended_before_the_next(tmp_path):
    path = tmp_path / "rec.jsonl"
    recorder = Recorder(path, max_bytes=1 << 20, keep=1)
    disk = FullDisk(recorder._file, LINE + 10, truncate_fails=True)
    recorder._file = disk
    for i in range(3):
        recorder.write(float(i), b'{"n": %d}' % i, "application/json")
    recorder.flush()
    recorder._file = disk.file
    recorder.write(3.0, b'{"n": 3}', "application/json")
    recorder.close()
    skipped: list[str] = []
    assert [t for t, _, _ in read_records([path], skipped.append)] == [0.0, 3.0]
    assert len(skipped) == 1 and "rec.jsonl:2" in skipped[0]


async def test_write_error_loses_the_recording_not_the_notification(make_client, tmp_path, seed_call, caplog, monkeypatch):
    client, app = await make_client(record=tmp_path / "rec.jsonl")
    recorder = app[RECORDER]
    monkeypatch.setattr(recorder, "_file", FullDisk(recorder._file, 0))
    monkeypatch.setattr("mtt_exporter.record.RECORD_FLUSH_BYTES", 1)  # flush inside the request
    response = await client.post("/notify", json=seed_call[2])
    assert response.status == 200
    assert "cannot write --record file" in caplog.text


def test_max_bytes_is_a_hard_limit_even_within_one_flush(tmp_path, caplog):
    path = tmp_path / "rec.jsonl"
    recorder = Recorder(path, max_bytes=4096, keep=10)
    for i in range(100):  # ~6 KB per flush of 40: more than a whole file
        recorder.write(float(i), b'{"n": %d, "pad": "%s"}' % (i, b"x" * 100), "application/json")
        if i % 40 == 39:
            recorder.flush()
    recorder.write(100.0, b"x" * 5000, "application/json")  # its line alone is over the limit
    recorder.close()
    files = sorted(tmp_path.iterdir(), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    assert all(p.stat().st_size <= 4096 for p in files)
    assert [t for t, _, _ in read_records(files)] == [float(i) for i in range(100)]
    assert "1 bodies not recorded: one line would be larger than --record-max-bytes 4096" in caplog.text


@pytest.mark.parametrize("bad", [
    pytest.param(line(1)[:30] + line(2), id="torn line glued to the next"),
    pytest.param(b"not json\n", id="not JSON"),
    pytest.param(b'{"time": 1, "body_b64": "***"}\n', id="bad base64"),
    pytest.param(b'{"time": "x", "body": "{}"}\n', id="time not a number"),
    pytest.param(b"[1, 2]\n", id="not an object"),
])
def test_replay_skips_and_counts_a_bad_line(tmp_path, bad):
    path = tmp_path / "rec.jsonl"
    path.write_bytes(line(0) + bad + line(3))
    skipped: list[str] = []
    assert [t for t, _, _ in read_records([path], skipped.append)] == [0.0, 3.0]
    assert len(skipped) == 1 and skipped[0].startswith(f"{path}:2: not a recorded body")
    with pytest.raises(ValueError, match="rec.jsonl:2"):  # without on_skip: refused, as before
        list(read_records([path]))


def test_undecodable_content_type_is_escaped(tmp_path):
    # aiohttp keeps header bytes that are not UTF-8 as surrogates; the line must still be written
    recorder = Recorder(tmp_path / "rec.jsonl", max_bytes=4096, keep=1)
    recorder.write(1.5, b"{}", "text/\udcff")
    recorder.close()
    assert list(read_records([tmp_path / "rec.jsonl"])) == [(1.5, b"{}", "text/\udcff")]


def test_file_size_limit_of_the_kernel_cuts_a_write_short_and_leaves_whole_lines(tmp_path):
    # the real system call: under RLIMIT_FSIZE write(2) writes what fits and returns the
    # count, the next write fails (EFBIG), as on a full disk; done in a child process
    path, limit = tmp_path / "rec.jsonl", 3 * LINE + 20
    child = f"""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from mtt_exporter.record import Recorder
recorder = Recorder({str(path)!r}, max_bytes=1 << 20, keep=1)
for i in range(8):
    recorder.write(float(i), b'{{"n": %d}}' % i, "application/json")
recorder.close()
"""
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert path.read_bytes() == b"".join(line(i) for i in range(3))
    assert "cannot write --record file" in result.stderr


# --- attack round on persistence (#9): the class of each fault ------------------------------


def _link_to(target):
    def make(path):
        if target == "file":
            path.with_name("other.conf").write_text("setting = 1\n")
            path.symlink_to(path.with_name("other.conf"))
        else:
            path.symlink_to(target)
    return make


@pytest.mark.parametrize("make", [
    pytest.param(lambda p: __import__("os").mkfifo(p), id="FIFO: would block"),
    pytest.param(lambda p: p.mkdir(), id="directory"),
    pytest.param(_link_to("file"), id="symlink to another file"),
    pytest.param(_link_to("/dev/null"), id="symlink to /dev/null"),
    pytest.param(_link_to("nowhere"), id="dangling symlink: would be created elsewhere"),
])
def test_record_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path, make):
    import os

    path = tmp_path / "rec.jsonl"
    make(path)
    before = {p.name: (p.lstat().st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
              for p in tmp_path.iterdir()}
    with pytest.raises(OSError, match="symlink|not a regular file"):
        Recorder(path, max_bytes=1 << 20, keep=1)
    assert {p.name: (p.lstat().st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in tmp_path.iterdir()} == before  # nothing created, written or chmodded
    assert not os.path.exists(tmp_path / "nowhere")


@pytest.mark.parametrize(("existing", "skipped"), [
    pytest.param(b"", 0, id="empty"),
    pytest.param(line(1), 0, id="whole lines"),
    pytest.param(line(1) + line(2)[:-1], 0, id="torn just before its newline: whole again"),
    pytest.param(line(1)[:5], 1, id="one torn line"),
])
def test_recorder_starts_on_a_line_boundary(tmp_path, existing, skipped):
    path = tmp_path / "rec.jsonl"
    path.write_bytes(existing)
    recorder = Recorder(path, max_bytes=1 << 20, keep=1)
    recorder.write(9.0, b'{"n": 9}', "application/json")
    recorder.close()
    lost: list[str] = []
    assert [t for t, _, _ in read_records([path], lost.append)][-1] == 9.0
    assert len(lost) == skipped


@pytest.mark.parametrize("bad", [
    pytest.param(b'{"time": 1' + b"0" * 400 + b', "body": "{}"}', id="time of 401 digits"),
    pytest.param(b'{"time": 1e300, "body": "{}"}', id="time 1e300"),
    pytest.param(b'{"time": "inf", "body": "{}"}', id="time a string"),
    pytest.param(b'{"time": NaN, "body": "{}"}', id="time NaN"),
    pytest.param(b'{"time": -1, "body": "{}"}', id="time before 1970"),
    pytest.param(b'{"time": true, "body": "{}"}', id="time a bool"),
    pytest.param(b'{"body": "{}"}', id="no time"),
    pytest.param(b'{"time": 1, "body": 5}', id="body a number"),
    pytest.param(b'{"time": 1, "body": "\\ud800"}', id="body a lone surrogate"),
    pytest.param(b'{"time": 1, "body_b64": "!!"}', id="body_b64 not base64"),
    pytest.param(b'{"time": 1, "body_b64": ["x"]}', id="body_b64 a list"),
    pytest.param(b'{"time": 1, "body": "{}", "content_type": 5}', id="content_type a number"),
    pytest.param(b'{"time": 1, "body": "{}", "content_type": {"a": 1}}', id="content_type an object"),
    pytest.param(b'{"time": 1, "body": "{}", "content_type": "a\\r\\nX: 1"}', id="content_type CR LF"),
    pytest.param(b'{"time": 1, "body": "{}", "content_type": "a\\u0000"}', id="content_type NUL"),
    pytest.param(b'{"time": 1, "body": "{}", "content_type": "' + b"x" * 300 + b'"}', id="content_type overlong"),
    pytest.param(b'[1, 2]', id="a list"),
    pytest.param(b'[' * 200_000, id="deep nesting"),
    pytest.param(b'{"a": ' * 100_000, id="deep objects"),
])
def test_replay_skips_and_counts_any_bad_line(tmp_path, bad):
    path = tmp_path / "rec.jsonl"
    path.write_bytes(line(1) + bad + b"\n" + line(2))
    lost: list[str] = []
    assert [t for t, _, _ in read_records([path], lost.append)] == [1.0, 2.0]
    assert len(lost) == 1 and "rec.jsonl:2" in lost[0]


def test_replay_skips_an_overlong_line_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr("mtt_exporter.record.MAX_LINE_BYTES", 100)
    path = tmp_path / "rec.jsonl"
    path.write_bytes(line(1) + b'{"time": 1, "body": "' + b"x" * 1000 + b'"}\n' + line(2))
    lost: list[str] = []
    assert [t for t, _, _ in read_records([path], lost.append)] == [1.0, 2.0]
    assert len(lost) == 1 and "rec.jsonl:2" in lost[0] and "longer than" in lost[0]


@pytest.mark.parametrize(("times", "expected"), [
    pytest.param([1.0, 2.0, 5.0], [0.0, 1.0, 4.0], id="recorded spacing kept"),
    pytest.param([1.0, 1e9, 1e9 + 1], [0.0, 3600.0, 3601.0], id="a huge gap shortened"),
    pytest.param([10.0, 5.0, 6.0], [0.0, 0.0, 1.0], id="back in time: no gap"),
])
def test_replay_schedule_is_bounded(tmp_path, times, expected):
    from mtt_exporter.replay import _replayed

    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"".join(b'{"time": %r, "body": "{}"}\n' % t for t in times))
    assert [d.at for d in _replayed([path], [])] == expected
