"""Second outside attack round on persistence: the mechanisms the first round's fixes added
(docs/reliability.md, "Attack round on persistence"): renaming aside, the temp-file cleanup at
start, the size cap, the recorder's rotation, and replay against a hostile server.

A finding the code does not survive is a strict xfail whose reason is the finding; what held
is a plain test. Every child process, server and loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mtt_exporter import statefile as statefile_module
from mtt_exporter.clock import ProcessClock
from mtt_exporter.correlator import MAX_NOTIFICATIONS_PER_CALL, Correlator, dump_state
from mtt_exporter.record import Recorder, read_records
from mtt_exporter.replay import post_all
from mtt_exporter.simulate import Delivery
from mtt_exporter.statefile import SetAside, StateFile, remove_leftover_temps

from .conftest import Clock, need_binary
from .process import Exporter
from .test_correlator import NOW, SEED, run


def snapshot_file(path: Path, saved_at: float = NOW + 30) -> Path:
    """A state file of one call in progress, dated `saved_at`."""
    correlator, _, _ = run(SEED[:4])
    data = dump_state(correlator)
    data["saved_at"] = saved_at
    path.write_text(json.dumps(data))
    return path


def loader(path: Path, now: float = NOW + 30) -> tuple[StateFile, Correlator]:
    clock = Clock(now)
    correlator = Correlator()
    return StateFile(path, correlator, ProcessClock(clock, clock)), correlator


def asides(directory: Path, name: str = "state.json") -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(f"{name}.") and not n.endswith(".tmp"))


@pytest.fixture
def frozen_second(monkeypatch):
    """Every set-aside name made within one UTC second (two events in one second, made certain)."""
    fixed = time.gmtime(NOW)
    monkeypatch.setattr(statefile_module.time, "gmtime", lambda *args: fixed)


def failing_writes(monkeypatch, fail: set[int]):
    """write_atomically raises ENOSPC on the calls numbered in `fail` (1-based), else writes."""
    real = statefile_module.write_atomically
    calls = {"n": 0}

    def write(path, payload):
        calls["n"] += 1
        if calls["n"] in fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, payload)

    monkeypatch.setattr(statefile_module, "write_atomically", write)


# --- the state file: renaming aside -----------------------------------------------------------


def test_a_file_that_cannot_be_removed_is_not_loaded_twice(tmp_path, monkeypatch):
    path = snapshot_file(tmp_path / "state.json")
    real_unlink, real_rename = Path.unlink, os.rename

    def unlink(self, *args, **kwargs):
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_unlink(self, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        if Path(src) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(statefile_module.os, "rename", rename)
    first, first_correlator = loader(path)
    assert len(first.load()) == 1 and len(first_correlator) == 1
    second, second_correlator = loader(path, NOW + 40)  # a crash loop: restarted 10 s later
    restored = second.load()
    assert restored == [] and len(second_correlator) == 0


def test_a_foreign_state_file_in_a_sticky_directory_is_not_loaded_at_every_start(tmp_path):
    """Real processes run as `nobody` (setpriv); the file is root's, mode 0644."""
    setpriv = need_binary("setpriv")
    if os.geteuid() != 0:
        pytest.skip("needs root to run the exporter as another user")
    import shutil
    import tempfile
    sticky = Path(tempfile.mkdtemp(prefix="x3-sticky-", dir="/tmp"))
    try:
        os.chmod(sticky, 0o1777)
        path = snapshot_file(sticky / "state.json", saved_at=time.time())
        data = json.loads(path.read_text())
        data["calls"][0][1]["last_seen"] = time.time() - 1
        path.write_text(json.dumps(data))
        os.chmod(path, 0o644)
        prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        logs = []
        for _ in range(2):
            exporter = Exporter(tmp_path, "--state-file", str(path), prefix=prefix).start()
            exporter.stop()
            logs.append(exporter.log())
        # changed with the fix: not owned by the exporter's user, the file is never loaded
        # (round 2 expected one load, then none); each start says why
        assert all("state loaded" not in log and "untrusted" in log for log in logs), logs
    finally:
        shutil.rmtree(sticky, ignore_errors=True)


@pytest.mark.parametrize("mode", [pytest.param(0o666, id="0666"), pytest.param(0o622, id="0622")])
def test_a_world_writable_state_file_is_not_trusted(tmp_path, mode):
    path = snapshot_file(tmp_path / "state.json")
    os.chmod(path, mode)
    state, correlator = loader(path)
    state.load()
    assert len(correlator) == 0


def test_two_failed_saves_in_one_second_leave_nothing_aside(tmp_path, monkeypatch, frozen_second):
    """Changed with the fix (round 2 expected both older snapshots kept aside, finding 6): a
    failed save now removes the older snapshot (finding 4: on a full disk its blocks are what
    the next save needs), so no set-aside name can collide; the good saves are whole."""
    path = tmp_path / "state.json"
    state, _ = loader(path)
    failing_writes(monkeypatch, fail={2, 4})
    for number in range(1, 6):  # good, fails, good, fails, good
        try:
            state.write((number, {"calls": [], "n": number}))
        except OSError:
            pass
        assert path.exists() == (number % 2 == 1)
    assert asides(tmp_path) == [] and json.loads(path.read_text())["n"] == 5


def test_two_corrupt_files_in_one_second_are_both_kept(tmp_path, frozen_second):
    path = tmp_path / "state.json"
    for content in ("first corrupt", "second corrupt"):
        path.write_text(content)
        state, _ = loader(path)
        assert state.load() == [] and state.set_aside is SetAside.CORRUPT
    assert sorted((tmp_path / name).read_text() for name in asides(tmp_path)) == ["first corrupt", "second corrupt"]


def test_set_aside_files_are_bounded(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    state, _ = loader(path)
    failing_writes(monkeypatch, fail=set(range(2, 21, 2)))
    seconds, gmtime = iter(range(1000)), time.gmtime
    monkeypatch.setattr(statefile_module.time, "gmtime", lambda *args: gmtime(NOW + next(seconds)))
    for number in range(1, 21):
        try:
            state.write((number, {"calls": [], "pad": "x" * 1000}))
        except OSError:
            pass
    assert len(asides(tmp_path)) <= 3, asides(tmp_path)


def in_small_tmpfs(tmp_path: Path, code: str, size: str) -> subprocess.CompletedProcess[str]:
    """Run `code` (with DATA, the mount point) in a private mount namespace with a tmpfs of `size` at DATA."""
    unshare = need_binary("unshare")
    data = tmp_path / "data"
    data.mkdir()
    script = tmp_path / "child.py"
    script.write_text(f"DATA = {str(data)!r}\n" + textwrap.dedent(code))
    shell = f"mount -t tmpfs -o size={size} tmpfs {data} && exec \"$0\" \"$@\""
    result = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", shell, sys.executable,
                             str(script)], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    if result.returncode != 0 and "Traceback" not in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    return result


def test_saves_recover_once_the_older_snapshot_is_given_up(tmp_path):
    result = in_small_tmpfs(tmp_path, """
        import os
        from pathlib import Path
        from mtt_exporter.correlator import Correlator
        from mtt_exporter.statefile import StateFile
        state = StateFile(Path(DATA) / "state.json", Correlator())
        pad = "x" * 400_000
        state.write((1, {"calls": [], "pad": pad}))
        filler = os.open(os.path.join(DATA, "filler"), os.O_WRONLY | os.O_CREAT)  # someone else fills the disk
        try:
            for _ in range(1000):
                os.write(filler, b"f" * 4096)
        except OSError:
            pass
        os.close(filler)
        os.truncate(os.path.join(DATA, "filler"), os.path.getsize(os.path.join(DATA, "filler")) - 300_000)
        results = []
        for number in (2, 3):
            try:
                state.write((number, {"calls": [], "pad": pad}))
                results.append("ok")
            except OSError as error:
                results.append(error.strerror)
        print(results)
        print(sorted(os.listdir(DATA)))
        # control (changed with the fix, which now gives the older snapshot up itself): the disk
        # was really full, and nothing is kept aside
        assert results[0] == "No space left on device", results
        assert not [name for name in os.listdir(DATA) if ".stale-" in name]
        print("control ok")
        """, size="1m")
    assert "Traceback" not in result.stderr, result.stderr[-800:]
    assert "control ok" in result.stdout
    results = result.stdout.splitlines()[0]
    assert results.endswith("'ok']"), result.stdout


# --- the state file: the temp-file cleanup and a second process ---------------------------------


def test_cleanup_at_start_leaves_a_save_in_flight_alone(tmp_path, monkeypatch):
    path = snapshot_file(tmp_path / "state.json")
    writer, _ = loader(tmp_path / "state.json")
    writer._written = 0
    real_fsync = os.fsync
    swept = []

    def fsync(fd):
        real_fsync(fd)
        if not swept:  # the other exporter starts while this save is between fsync and rename
            swept.append(remove_leftover_temps(path))

    monkeypatch.setattr(statefile_module.os, "fsync", fsync)
    writer.write((1, {"calls": [], "saved_at": NOW}))
    assert json.loads(path.read_text())["calls"] == []


@pytest.mark.parametrize("name", [
    pytest.param(".state.json.bak", id="other suffix"),
    pytest.param(".state.jsonx.1.tmp", id="longer name"),
    pytest.param("state.json.1.tmp", id="no leading dot"),
    pytest.param(".other.json.1.tmp", id="other file"),
])
def test_cleanup_keeps_names_outside_the_pattern(tmp_path, name):
    path = tmp_path / "state.json"
    (tmp_path / name).write_text("someone else's")
    assert remove_leftover_temps(path) == 0
    assert (tmp_path / name).read_text() == "someone else's"


def test_cleanup_leaves_a_symlink_and_its_target(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep")
    (tmp_path / ".state.json.x.tmp").symlink_to(target)
    assert remove_leftover_temps(tmp_path / "state.json") == 0
    assert target.read_text() == "keep"


def test_a_second_exporter_on_the_same_state_file_is_refused(tmp_path):
    path = tmp_path / "state.json"
    first = Exporter(tmp_path, "--state-file", str(path)).start()
    try:
        second = Exporter(tmp_path, "--state-file", str(path))
        try:
            with pytest.raises(AssertionError):
                second.start(timeout=15)
        finally:
            if second.process is not None and second.process.poll() is None:
                second.stop()
        refusal = [line for line in second.log().splitlines() if "in use by another exporter" in line]
        assert len(refusal) == 1 and "--state-file" in refusal[0] and "Traceback" not in second.log()
    finally:
        first.stop()


# --- the state file: content ------------------------------------------------------------------


def test_duplicate_conf_ids_restore_one_call(tmp_path):
    path = snapshot_file(tmp_path / "state.json")
    data = json.loads(path.read_text())
    data["calls"] = data["calls"] * 1000
    path.write_text(json.dumps(data))
    state, correlator = loader(path)
    facts = state.load()
    assert len(correlator) == 1 and len(facts) == 1
    assert len(correlator._deadlines) <= 1


def bloated_call(path: Path, field: str, count: int) -> Path:
    """The one-call snapshot with `count` legs or premedia entries, each valid, under the 16 MiB cap."""
    data = json.loads(snapshot_file(path).read_text())
    call = data["calls"][0][1]
    if field == "legs":
        leg = call["legs"][0]
        call["legs"] = [[f"7900{i:07d}", *leg[1:]] for i in range(count)]
    else:
        call["premedia"] = [["B", f"7900{i:07d}", 10.0, None] for i in range(count)]
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("field", [pytest.param("legs", id="legs"), pytest.param("premedia", id="premedia")])
def test_a_restored_call_is_bounded_like_a_live_one(tmp_path, field):
    path = bloated_call(tmp_path / "state.json", field, 200_000)
    assert path.stat().st_size < 16 << 20
    state, correlator = loader(path)
    state.load()
    call = correlator.calls.get("C1")
    assert call is None or (len(call.legs) <= MAX_NOTIFICATIONS_PER_CALL
                            and len(call.premedia or ()) <= MAX_NOTIFICATIONS_PER_CALL)


MEMORY_AT_CAP = """
import json, resource, sys, tempfile, time
from pathlib import Path
from mtt_exporter.correlator import Correlator
from mtt_exporter.statefile import StateFile
path = Path(tempfile.mkdtemp()) / "state.json"
now = time.time()
call = '["%07d",{"legs":[],"seen":[],"last_seen":' + repr(now - 1) + '}]'
count = (16 << 20) // (len(call % 0) + 1) - 10  # minimal calls filling the 16 MiB cap
path.write_text('{"format":"mtt-exporter-state","version":1,"saved_at":%r,"calls":[%s]}'
                % (now, ",".join(call % i for i in range(count))))
size = path.stat().st_size
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
state = StateFile(path, Correlator(max_calls=8192))
facts = state.load()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(size, (after - before) * 1024, len(state.correlator), state.set_aside)
"""


def test_memory_of_a_load_at_the_size_cap_is_bounded():
    """Held, loosely (the residual docs/reliability.md states): a 16 MiB file of 262,000 minimal
    calls with --max-calls 8192 loads and evicts down to 8192; peak RSS grows about 13x the
    file (205 MiB measured), so the default 1 GiB cap allows ~13 GiB. Bound asserted: 25x."""
    result = subprocess.run([sys.executable, "-c", MEMORY_AT_CAP], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent.parent)
    size, grown, kept, aside = result.stdout.split()
    assert aside == "None" and int(kept) == 8192
    assert int(grown) <= 25 * int(size)


@pytest.mark.parametrize("version", [pytest.param("true", id="bool"), pytest.param("1.0", id="float")])
def test_version_that_only_equals_one_loosely(tmp_path, version):
    """Held in effect: `true` and `1.0` compare equal to version 1 and load; the data is version 1's."""
    path = snapshot_file(tmp_path / "state.json")
    path.write_text(path.read_text().replace('"version": 1', f'"version": {version}'))
    state, correlator = loader(path)
    state.load()
    assert state.set_aside is None and len(correlator) == 1


def test_a_file_swapped_after_open_is_read_from_the_inode_opened(tmp_path, monkeypatch):
    """Held: read_regular reads through the descriptor; renaming another file over the path
    between fstat and read changes nothing read."""
    path = snapshot_file(tmp_path / "state.json")
    good = path.read_bytes()
    real_fstat = os.fstat

    def fstat(fd):
        result = real_fstat(fd)
        other = tmp_path / "other"
        other.write_text("x" * 100)
        os.replace(other, path)
        return result

    monkeypatch.setattr(statefile_module.os, "fstat", fstat)
    assert statefile_module.read_regular(path, 1 << 20) == good


# --- --record: rotation and two writers -------------------------------------------------------


def line_numbers(paths: list[Path]) -> list[int]:
    records = read_records([p for p in paths if p.exists()], lambda _: None)
    return sorted(json.loads(body)["n"] for _, body, _ in records)


@pytest.mark.parametrize(("name", "keep"), [
    pytest.param("rec.jsonl", 0, id="keep 0"),
    pytest.param("rec.jsonl", 1, id="keep 1"),
    pytest.param("rec with spaces.jsonl", 2, id="spaces in name"),
    pytest.param("-rec.jsonl", 2, id="leading dash"),
])
def test_rotation_keeps_at_most_keep_files_of_whole_lines(tmp_path, name, keep):
    path = tmp_path / name
    recorder = Recorder(path, max_bytes=2000, keep=keep)
    for n in range(100):
        recorder.write(float(n), b'{"n": %d, "pad": "%s"}' % (n, b"x" * 50), "application/json")
        if n % 7 == 0:
            recorder.flush()
    recorder.close()
    files = sorted(p for p in tmp_path.iterdir() if p.name != f".{name}.lock")  # the lock file (round 2 fix)
    assert len(files) == keep + 1
    assert all(f.stat().st_size <= 2000 for f in files)
    numbers = line_numbers(files)
    assert numbers == list(range(100 - len(numbers), 100))  # the newest, none torn or lost in between


def in_replay_order(directory: Path, name: str) -> list[Path]:
    """path.<keep> .. path.1, path: oldest first, as replay is given them."""
    files = [p for p in directory.iterdir() if p.name.startswith(name)]
    return sorted(files, key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)


def test_a_second_recorder_on_one_path_is_refused(tmp_path):
    """Changed with the fix (round 2 showed two recorders interleaving out of time order, 11
    steps back in 200 lines): the second recorder on a path now refuses to start (an exclusive
    lock), and the first keeps time order; after close the path can be recorded to again."""
    path = tmp_path / "rec.jsonl"
    a = Recorder(path, max_bytes=4000, keep=50)
    with pytest.raises(OSError, match="--record .* is in use by another exporter"):
        Recorder(path, max_bytes=4000, keep=50)
    for n in range(200):  # bounded: 200 lines
        a.write(float(n), b'{"n": %d, "pad": "%s"}' % (n, b"x" * 50), "application/json")
        if n % 5 == 0:
            a.flush()
    a.close()
    Recorder(path, max_bytes=4000, keep=50).close()
    records = read_records(in_replay_order(tmp_path, "rec.jsonl"), lambda _: None)
    assert [json.loads(body)["n"] for _, body, _ in records] == list(range(200))


def test_rotation_onto_a_directory_drops_but_never_raises(tmp_path):
    """Held (as far as promised): `.1` a directory makes rotation fail; bodies are dropped and
    logged, nothing escapes; the current file keeps whole lines."""
    path = tmp_path / "rec.jsonl"
    (tmp_path / "rec.jsonl.1").mkdir()
    recorder = Recorder(path, max_bytes=1000, keep=1)
    for n in range(50):
        recorder.write(float(n), b'{"n": %d, "pad": "%s"}' % (n, b"x" * 50), "application/json")
        recorder.flush()
    recorder.close()
    assert line_numbers([path]) == sorted(line_numbers([path]))


# --- replay against a hostile server ----------------------------------------------------------


async def hostile_server(mode: str, sent: list[int], size: int):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await asyncio.wait_for(reader.readexactly(length), 10)
            if mode == "close":
                return
            if mode == "503":
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
            chunk = b"z" * (1 << 20)
            for _ in range(size >> 20):  # bounded: size / 1 MiB chunks
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 10)
                sent[0] += len(chunk)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def replay_against(mode: str, size: int = 0, count: int = 1):
    async def main():
        sent = [0]
        server = await hostile_server(mode, sent, size)
        port = server.sockets[0].getsockname()[1]
        try:
            deliveries = [Delivery(at=0.0, body=b'{"x": 1}') for _ in range(count)]
            stats = await asyncio.wait_for(post_all(deliveries, f"http://127.0.0.1:{port}/notify", speed=None), 60)
        finally:
            server.close()
        return stats, sent[0]

    return asyncio.run(main())


@pytest.mark.parametrize(("mode", "result"), [
    pytest.param("503", "503", id="5xx"),
    pytest.param("close", "ServerDisconnectedError", id="closes the connection"),
])
def test_replay_counts_a_hostile_answer_as_a_failure(mode, result):
    stats, _ = replay_against(mode, count=3)
    assert stats.results[("event", result)] == 3
    assert stats.failures() == 3


def test_replay_does_not_read_a_huge_response_whole():
    stats, sent = replay_against("huge", size=256 << 20)
    assert sent <= 16 << 20, f"{sent >> 20} MiB read"


# --- the fixes of round 2: the edges of what they promise -------------------------------------


def test_a_loaded_file_that_can_be_neither_removed_nor_marked_is_not_restored(tmp_path, monkeypatch, caplog):
    """A read-only directory: no unlink, no marker; the calls just read are dropped (counted
    as `loaded`), since every start would otherwise restore them again."""
    path = snapshot_file(tmp_path / "state.json")
    real_unlink, real_open = Path.unlink, os.open

    def unlink(self, *args, **kwargs):
        if self == path:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, *args, **kwargs)

    def open_(name, flags, *args, **kwargs):
        if Path(name).name == ".state.json.loaded":
            raise OSError(errno.EROFS, "Read-only file system", str(name))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(statefile_module.os, "open", open_)
    state, correlator = loader(path)
    assert state.load() == [] and len(correlator) == 0 and not correlator._deadlines
    assert state.set_aside is SetAside.LOADED and "not restored" in caplog.text


def test_a_removed_file_leaves_no_marker_and_a_new_snapshot_loads(tmp_path):
    """The marker only refuses the snapshot of its date: a later save of the same path loads."""
    path = snapshot_file(tmp_path / "state.json")
    (tmp_path / ".state.json.loaded").write_text(repr(NOW + 30 - 1))  # an older snapshot's date
    state, correlator = loader(path)
    assert len(state.load()) == 1 and not path.exists()
    assert not (tmp_path / ".state.json.loaded").exists()


@pytest.mark.parametrize(("count", "loads"), [
    pytest.param(MAX_NOTIFICATIONS_PER_CALL, True, id="at the live bound"),
    pytest.param(MAX_NOTIFICATIONS_PER_CALL + 1, False, id="one over"),
])
@pytest.mark.parametrize("field", [pytest.param("legs", id="legs"), pytest.param("premedia", id="premedia")])
def test_the_restored_bound_is_the_live_one(tmp_path, field, count, loads):
    state, correlator = loader(bloated_call(tmp_path / "state.json", field, count))
    state.load()
    assert (state.set_aside is None and len(correlator) == 1) if loads else state.set_aside is SetAside.CORRUPT


def test_set_aside_files_at_start_are_bounded_newest_kept(tmp_path):
    path = tmp_path / "state.json"
    (tmp_path / "state.json.corrupt-20000101T000000Z").write_text("round 1 name, oldest")
    for n in range(6):  # bounded: 6 starts meeting a corrupt file
        path.write_text(f"corrupt {n}")
        state, _ = loader(path)
        state.load()
    kept = sorted((tmp_path / name).read_text() for name in asides(tmp_path))
    assert len(kept) == statefile_module.KEEP_SET_ASIDE and kept == ["corrupt 3", "corrupt 4", "corrupt 5"]


@pytest.mark.parametrize("kind", [pytest.param("file", id="file"), pytest.param("directory", id="directory")])
def test_rename_noreplace_never_replaces(tmp_path, kind):
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir() if kind == "directory" else source.write_text("source")
    target.write_text("target")
    with pytest.raises(FileExistsError):
        statefile_module.rename_noreplace(source, target)
    assert target.read_text() == "target" and source.exists()
    target.unlink()
    statefile_module.rename_noreplace(source, target)
    assert target.exists() and not source.exists()


def test_the_lock_is_released_at_stop_and_the_next_start_takes_it(tmp_path):
    path = tmp_path / "state.json"
    for _ in range(2):  # bounded: two starts one after the other
        Exporter(tmp_path, "--state-file", str(path)).start().stop()
    assert (tmp_path / ".state.json.lock").exists()


def test_a_second_exporter_on_the_same_record_file_is_refused(tmp_path):
    path = tmp_path / "rec.jsonl"
    first = Exporter(tmp_path, "--record", str(path)).start()
    try:
        second = Exporter(tmp_path, "--record", str(path))
        try:
            with pytest.raises(AssertionError):
                second.start(timeout=15)
        finally:
            if second.process is not None and second.process.poll() is None:
                second.stop()
        assert "--record" in second.log() and "in use by another exporter" in second.log()
    finally:
        first.stop()
