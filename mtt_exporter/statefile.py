"""The state file: calls in progress saved atomically on shutdown (and periodically), loaded (and removed) on start.

The data is `correlator.dump_state` plus `saved_at`, the wall-clock time of the snapshot;
this module only does the file side. The calls' receipt times are kept on the wall clock in
the file and on the process clock in memory (see clock.py): a save maps them to the wall
clock of now (which may have stepped since start); a load takes them as they are, since
the process clock is the wall clock as of start.

A file that cannot be trusted is logged, counted (`mtt_state_file_set_aside_total`) and
renamed aside (`<name>.<reason>-<UTC time>.<nanoseconds><counter digit>Z`, never over another file; at most
KEEP_SET_ASIDE of them are kept, the oldest removed), and the exporter starts empty: a bad
file never stops a start. When it cannot be renamed (a read-only directory), it is left
where it is, still counted and logged. Untrusted: not a regular file (a directory, FIFO,
device or symlink: opened without following links and without blocking), not owned by the
exporter's user or writable by group or others, unreadable, larger than `max_bytes`,
damaged (any failure of parsing or checking it, whatever the exception; a call over the
live per-call bounds), undated (an older version wrote it), saved longer ago than `max_age`
(it misses the notifications since, which MTT does not send again: its open calls would be
phantoms), dated ahead of the wall clock, or already loaded once (see below). Every time
in it must be a number within plausible bounds, and no call may be last seen after the
snapshot was taken.

A snapshot is used once. It is removed after loading; when it cannot be (a bind-mounted
file: EBUSY; an immutable one), its `saved_at` goes into a marker beside it
(`.<name>.loaded`) and a start meeting a snapshot of that date again refuses it
(`loaded`); when the marker cannot be written either (a read-only directory), the calls just
read are dropped and the start is empty: a file that cannot be consumed is never restored.

One exporter per file: `acquire` takes an exclusive lock (filelock.py) that the server holds
from start to exit; a second exporter on the same path refuses to start. Only the holder of
the lock removes the temp files of saves that a kill interrupted.

When any save fails (periodic or final), the older file is removed at once (unlink needs no
free space, and on a full disk its blocks are what the next save needs): it no longer holds
the state of the process, and a hard kill before the next good save would otherwise let
the next start take it for current and bring back calls ended since.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import gc
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

from . import filelock
from .clock import ProcessClock, seconds
from .correlator import READABLE_STATE_VERSIONS, STATE_FORMAT, Correlator, Fact, dump_state, load_state

log = logging.getLogger("mtt_exporter")

#: Default --state-max-age: a restart takes seconds; a snapshot older than a typical call
#: (ACD is one to three minutes) holds mostly calls that have ended unseen meanwhile.
MAX_AGE_SECONDS = 120.0
#: A snapshot dated this far ahead of the wall clock is still taken (a clock slewed back).
FUTURE_TOLERANCE_SECONDS = 5.0
#: Largest state file read, per call of --max-calls: a snapshot takes about 310 bytes per
#: call; a larger file is refused unread, before it can exhaust memory.
MAX_BYTES_PER_CALL = 2048
#: ... and at least this, whatever --max-calls.
MIN_MAX_BYTES = 16 << 20
_READ_CHUNK = 1 << 20
#: Set-aside files kept beside the state file (all reasons together); the oldest are removed.
KEEP_SET_ASIDE = 3


class SetAside(StrEnum):
    """Why a state file was not loaded: the `reason` label of `mtt_state_file_set_aside_total`."""

    CORRUPT = "corrupt"  # not JSON, not ours, another version, or damaged
    UNREADABLE = "unreadable"  # not a regular file (directory, FIFO, device, symlink), or cannot be read
    OVERSIZE = "oversize"  # larger than the size a state of --max-calls calls can take
    UNDATED = "undated"  # no `saved_at`: written by a version that did not date its snapshots
    STALE = "stale"  # saved longer ago than --state-max-age
    FUTURE = "future"  # dated ahead of the wall clock: the clock went back since
    UNTRUSTED = "untrusted"  # not owned by the exporter's user, or writable by group or others
    LOADED = "loaded"  # loaded once already but could not be removed (or marked) since


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Building or loading a whole call table creates millions of containers, each batch of
    which sets off a collection over the whole heap (5x the time); none of them form cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_leftover_temps(path: Path) -> int:
    """Remove the temp files of saves a kill interrupted (`.<name>.*.tmp` beside `path`); returns how many.

    Only under the lock of `path`: while another process holds it, a temp file may be its
    save in flight, and nothing is removed.
    """
    try:
        fd = filelock.acquire(path, "--state-file")
    except OSError:
        return 0
    try:
        return _remove_temps(path)
    finally:
        os.close(fd)


def _remove_temps(path: Path) -> int:
    """remove_leftover_temps, the lock already held."""
    removed = 0
    try:
        names = os.listdir(path.parent)
    except OSError:
        return 0
    for name in names:
        if name.startswith(_temp_prefix(path)) and name.endswith(".tmp"):
            leftover = path.parent / name
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(leftover).st_mode):
                    os.unlink(leftover)
                    removed += 1
    return removed


class _Unusable(Exception):
    """The path holds nothing that can be loaded."""

    def __init__(self, reason: SetAside, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path`, read without following a symlink, without
    blocking on a FIFO and without reading more than `max_bytes`.

    Raises FileNotFoundError when nothing is there, _Unusable for anything else that is not
    a readable regular file of at most `max_bytes`, owned by this process's user and
    writable by no one else (anyone who could write it could have planted calls in it).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:  # ELOOP: a symlink; EACCES
        why = "a symlink (not followed)" if error.errno == errno.ELOOP else f"cannot open: {error}"
        raise _Unusable(SetAside.UNREADABLE, why) from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _Unusable(SetAside.UNREADABLE, "not a regular file")
        if status.st_uid != os.geteuid() or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise _Unusable(SetAside.UNTRUSTED, f"owner uid {status.st_uid}, mode {stat.S_IMODE(status.st_mode):04o}: "
                                                f"not owned by uid {os.geteuid()} alone (0600 expected)")
        if status.st_size > max_bytes:
            raise _Unusable(SetAside.OVERSIZE, f"{status.st_size} bytes, more than {max_bytes}")
        chunks, total = [], 0
        while True:  # bounded even if the file grows while it is read
            chunk = os.read(fd, min(_READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise _Unusable(SetAside.OVERSIZE, f"more than {max_bytes} bytes")
    except OSError as error:
        raise _Unusable(SetAside.UNREADABLE, f"cannot read: {error}") from None
    finally:
        os.close(fd)


def write_atomically(path: Path, payload: bytes) -> None:
    """Temp file in the same directory, fsync, rename over `path`, fsync the directory.

    A crash at any point leaves either the old file or the new one, never a mix. The file
    is private (0600): it holds call ids and forwarding numbers.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)  # glibc 2.28+; not in musl before 1.2.? nor elsewhere


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename `source` to `target` unless something is there already (FileExistsError).

    renameat2(RENAME_NOREPLACE) where the C library and the filesystem have it; else a hard
    link and an unlink (atomic no-replace too, for anything but a directory); a directory
    without renameat2 is renamed after checking the name is free.
    """
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        error = ctypes.get_errno()
        if error not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(error, os.strerror(error), str(source))
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.rename(source, target)
        return
    os.unlink(source)


class StateFile:
    """The state file of one correlator: load once, then save snapshots, newest wins."""

    def __init__(self, path: Path, correlator: Correlator, clock: ProcessClock | None = None,
                 max_age: float = MAX_AGE_SECONDS, max_bytes: int | None = None) -> None:
        self.path = path
        self.correlator = correlator
        self.clock = clock if clock is not None else ProcessClock()
        self.max_age = max_age
        #: the largest file loaded: by default in proportion to --max-calls
        self.max_bytes = max_bytes if max_bytes is not None else max(MIN_MAX_BYTES, correlator.max_calls * MAX_BYTES_PER_CALL)
        #: why the file was not loaded at start, if it was not
        self.set_aside: SetAside | None = None
        self._lock = threading.Lock()
        self._taken = 0
        self._written = 0
        self._lock_fd: int | None = None
        #: where the date of a snapshot goes that was loaded but could not be removed
        self.marker = path.with_name(f".{path.name}.loaded")
        self._counter = 0

    def acquire(self) -> None:
        """Take the exclusive lock of the path (see filelock.py); filelock.Busy (an OSError)
        with one line to log when another exporter holds it."""
        if self._lock_fd is None:
            self._lock_fd = filelock.acquire(self.path, "--state-file")

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> list[Fact]:
        """Fill the (empty) correlator from the file, then remove it; returns the facts of restoring.

        The file is used once: after a hard kill an old file would bring back calls that
        have ended since, and count them again. Whatever is wrong with the file, this
        returns (starting empty) rather than raises.
        """
        leftovers = _remove_temps(self.path) if self._lock_fd is not None else 0
        if leftovers:
            log.warning("removed temp files of interrupted saves", extra={"path": str(self.path), "count": leftovers})
        try:
            raw = read_regular(self.path, self.max_bytes)
        except FileNotFoundError:
            log.info("no state file yet, starting empty", extra={"path": str(self.path)})
            return []
        except _Unusable as error:
            self._set_aside(error.reason, str(error))
            return []
        try:
            with _gc_paused():
                data = json.loads(raw)
                del raw
                refused = self._untrusted(data)
                if refused is not None:
                    self._set_aside(*refused)
                    return []
                # the process clock is the wall clock as of start; _untrusted made a valid saved_at a float
                saved_at = data.get("saved_at") if isinstance(data, dict) else None
                not_after = saved_at + FUTURE_TOLERANCE_SECONDS if isinstance(saved_at, float) else None
                facts = load_state(data, self.correlator, not_after=not_after)
        except Exception as error:  # noqa: BLE001 - any failure to parse or check the file: JSON, UTF-8,
            # StateError, RecursionError (deep nesting), MemoryError, or a bug meeting odd data
            self._discard_partial()
            self._set_aside(SetAside.CORRUPT, f"{type(error).__name__}: {error}"[:300])
            return []
        if not self._consume(data["saved_at"]):
            self._discard_partial()
            self.set_aside = SetAside.LOADED
            return []
        log.info(
            "state loaded",
            extra={"path": str(self.path), "calls": len(self.correlator), "in_progress": self.correlator.in_progress(),
                   "age_seconds": round(self.clock() - data["saved_at"], 3)},
        )
        return facts

    def _consume(self, saved_at: float) -> bool:
        """Make sure no start loads this snapshot again: remove it, or else mark its date as
        loaded; False when neither can be done (the caller then drops what it restored)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            try:
                fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, repr(saved_at).encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as marking:
                log.error(
                    "cannot remove the loaded state file nor mark it loaded: its calls are not restored, "
                    "or every start would restore them again; starting empty",
                    extra={"path": str(self.path), "error": str(error), "marker_error": str(marking)})
                return False
            log.warning("cannot remove the loaded state file; marked as loaded, the next start will refuse it",
                        extra={"path": str(self.path), "marker": str(self.marker), "error": str(error)})
            return True
        with contextlib.suppress(OSError):
            self.marker.unlink()
        return True

    def _loaded_before(self, saved_at: float) -> bool:
        """Whether the marker says a snapshot of this date was loaded already."""
        try:
            return float(read_regular(self.marker, 64)) == saved_at
        except (OSError, _Unusable, ValueError):
            return False

    def _discard_partial(self) -> None:
        """load_state is all or nothing; should a bug break that promise, start empty anyway."""
        if self.correlator.calls:
            self.correlator.calls.clear()
            self.correlator._deadlines.clear()

    def _untrusted(self, data: object) -> tuple[SetAside, str] | None:
        """Why a snapshot must not be loaded, judged by its date; None: take it."""
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or data.get("version") not in READABLE_STATE_VERSIONS:
            return None  # load_state says what is wrong
        saved_at = data.get("saved_at")
        if saved_at is None:
            return SetAside.UNDATED, "the snapshot carries no saved_at time"
        try:
            saved_at = seconds(saved_at)
        except ValueError as error:
            return SetAside.CORRUPT, f"saved_at: {error}"
        data["saved_at"] = saved_at
        age = self.clock() - saved_at
        if age > self.max_age:
            return SetAside.STALE, f"saved {age:.0f} s ago, more than --state-max-age {self.max_age:g} s"
        if age < -FUTURE_TOLERANCE_SECONDS:
            return SetAside.FUTURE, f"saved {-age:.0f} s in the future: the wall clock went back"
        if self._loaded_before(saved_at):
            return SetAside.LOADED, "this snapshot was loaded once already (it could not be removed then)"
        return None

    def _set_aside(self, reason: SetAside, detail: str) -> None:
        """Rename whatever is at the path aside (a symlink itself, not its target), so this
        run's saves can write there and the next start does not meet it again."""
        self.set_aside = reason
        try:
            aside_text = str(self._rename_aside(reason))
        except OSError as error:
            aside_text = f"not moved: {error}"
        else:
            self._prune_asides()
        log.error(
            "state file unusable, set aside; starting empty",
            extra={"path": str(self.path), "aside": aside_text, "reason": reason.value, "error": detail},
        )

    def _rename_aside(self, reason: SetAside) -> Path:
        """Rename the path to a name of its own: UTC time to the nanosecond, never over another file."""
        for _ in range(100):  # bounded: a name is taken only by a rename in the same nanosecond
            self._counter += 1
            ns = time.time_ns()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 1_000_000_000))
            unique = f"{ns % 1_000_000_000:09d}{self._counter % 10}"
            aside = self.path.with_name(f"{self.path.name}.{reason.value}-{stamp}.{unique}Z")
            try:
                rename_noreplace(self.path, aside)
            except FileExistsError:
                continue
            return aside
        raise OSError(errno.EEXIST, "no free set-aside name")

    def _prune_asides(self) -> None:
        """Keep the newest KEEP_SET_ASIDE set-aside files (regular files and symlinks; a directory stays)."""
        prefixes = tuple(f"{self.path.name}.{reason.value}-" for reason in SetAside)
        try:
            names = [n for n in os.listdir(self.path.parent) if n.startswith(prefixes)]
        except OSError:
            return
        dated = []
        for name in names:
            with contextlib.suppress(OSError):
                if not stat.S_ISDIR(os.lstat(self.path.parent / name).st_mode):
                    prefix = next(p for p in prefixes if name.startswith(p))
                    dated.append((name[len(prefix):], name))  # the UTC time: oldest first
        dated.sort()
        for _, name in dated[:max(0, len(dated) - KEEP_SET_ASIDE)]:
            with contextlib.suppress(OSError):
                os.unlink(self.path.parent / name)
                log.warning("old set-aside state file removed", extra={"path": str(self.path.parent / name)})

    def snapshot(self) -> tuple[int, dict]:
        """Take the state now; call it in the event loop's thread (the correlator is not thread-safe)."""
        self._taken += 1
        with _gc_paused():
            data = dump_state(self.correlator, shift=self.clock.step())
        data["saved_at"] = self.clock.wall()
        return self._taken, data

    def write(self, snapshot: tuple[int, dict]) -> bool:
        """Write a snapshot unless a newer one is already written; safe from any thread.

        Raises OSError when the file cannot be written, after removing the older file.
        """
        number, data = snapshot
        with self._lock:
            if number <= self._written:
                return False
            held = self._lock_fd is not None  # the server holds it from start to exit
            self.acquire()  # raises while another exporter holds the file: its snapshot is left alone
            started = time.perf_counter()
            try:
                payload = json.dumps(data, separators=(",", ":")).encode()
                write_atomically(self.path, payload)
            except OSError:
                # the file left is older than the state now: never let a start take it for current
                self._written = max(self._written, number)
                self._discard_older()
                raise
            finally:
                if not held:
                    self.release()
            self._written = number
        log.info(
            "state saved",
            extra={"path": str(self.path), "calls": len(data["calls"]), "bytes": len(payload),
                   "seconds": round(time.perf_counter() - started, 3)},
        )
        return True

    def save(self) -> None:
        """Snapshot and write now, logging a failure rather than raising it (used at shutdown).

        When the write fails, an older file (a periodic snapshot) is removed (by `write`):
        the next start would take it for the state at shutdown and bring back calls ended since.
        """
        try:
            self.write(self.snapshot())  # newer than any periodic write still running: that one is skipped
        except OSError as error:
            log.error("cannot write the state file", extra={"path": str(self.path), "error": str(error)})

    def _discard_older(self) -> None:
        """Remove the older snapshot; only a regular file: anything else is no snapshot.

        Removed, not renamed aside: on a full disk (the usual reason a save fails) its blocks
        are what the next save needs, and a file renamed aside keeps them.
        """
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):
                return
            os.unlink(self.path)
        except FileNotFoundError:
            return
        except OSError as error:
            log.error("cannot remove the older state file: the next start may load it",
                      extra={"path": str(self.path), "error": str(error)})
            return
        log.error("the older state file is removed: the next start begins empty", extra={"path": str(self.path)})
