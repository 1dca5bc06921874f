"""The state file: calls in progress saved atomically on shutdown (and periodically), loaded (and removed) on start.

The data is `correlator.dump_state` plus `saved_at`, the wall-clock time of the snapshot;
this module only does the file side. The calls' receipt times are kept on the wall clock in
the file and on the process clock in memory (see clock.py): a save maps them to the wall
clock of now (which may have stepped since start); a load takes them as they are, since
the process clock is the wall clock as of start.

A file that cannot be trusted is logged, counted (`mtt_state_file_set_aside_total`) and
renamed aside (`<name>.<reason>-<UTC time>`), and the exporter starts empty: a bad file
never stops a start. Untrusted: not a regular file (a directory, FIFO, device or symlink:
opened without following links and without blocking), unreadable, larger than
`max_bytes`, damaged (any failure of parsing or checking it, whatever the exception),
undated (an older version wrote it), saved longer ago than `max_age` (it misses the
notifications since, which MTT does not send again: its open calls would be phantoms),
or dated ahead of the wall clock. Every time in it must be a number within plausible
bounds, and no call may be last seen after the snapshot was taken.

When any save fails (periodic or final), the older file is set aside at once: it no
longer holds the state of the process, and a hard kill before the next good save would
otherwise let the next start take it for current and bring back calls ended since. A start
also removes the temp files of saves that a kill interrupted.
"""

from __future__ import annotations

import contextlib
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


class SetAside(StrEnum):
    """Why a state file was not loaded: the `reason` label of `mtt_state_file_set_aside_total`."""

    CORRUPT = "corrupt"  # not JSON, not ours, another version, or damaged
    UNREADABLE = "unreadable"  # not a regular file (directory, FIFO, device, symlink), or cannot be read
    OVERSIZE = "oversize"  # larger than the size a state of --max-calls calls can take
    UNDATED = "undated"  # no `saved_at`: written by a version that did not date its snapshots
    STALE = "stale"  # saved longer ago than --state-max-age
    FUTURE = "future"  # dated ahead of the wall clock: the clock went back since


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
    """Remove the temp files of saves a kill interrupted (`.<name>.*.tmp` beside `path`); returns how many."""
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
    a readable regular file of at most `max_bytes`.
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

    def load(self) -> list[Fact]:
        """Fill the (empty) correlator from the file, then remove it; returns the facts of restoring.

        The file is used once: after a hard kill an old file would bring back calls that
        have ended since, and count them again. Whatever is wrong with the file, this
        returns (starting empty) rather than raises.
        """
        leftovers = remove_leftover_temps(self.path)
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
        try:
            self.path.unlink()
        except OSError as error:
            log.warning("cannot remove the loaded state file", extra={"path": str(self.path), "error": str(error)})
        log.info(
            "state loaded",
            extra={"path": str(self.path), "calls": len(self.correlator), "in_progress": self.correlator.in_progress(),
                   "age_seconds": round(self.clock() - data["saved_at"], 3)},
        )
        return facts

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
        return None

    def _set_aside(self, reason: SetAside, detail: str) -> None:
        """Rename whatever is at the path aside (a symlink itself, not its target), so this
        run's saves can write there and the next start does not meet it again."""
        self.set_aside = reason
        aside = self.path.with_name(f"{self.path.name}.{reason.value}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        try:
            os.rename(self.path, aside)
        except OSError as error:
            aside_text = f"not moved: {error}"
        else:
            aside_text = str(aside)
        log.error(
            "state file unusable, set aside; starting empty",
            extra={"path": str(self.path), "aside": aside_text, "reason": reason.value, "error": detail},
        )

    def snapshot(self) -> tuple[int, dict]:
        """Take the state now; call it in the event loop's thread (the correlator is not thread-safe)."""
        self._taken += 1
        with _gc_paused():
            data = dump_state(self.correlator, shift=self.clock.step())
        data["saved_at"] = self.clock.wall()
        return self._taken, data

    def write(self, snapshot: tuple[int, dict]) -> bool:
        """Write a snapshot unless a newer one is already written; safe from any thread.

        Raises OSError when the file cannot be written, after setting the older file aside.
        """
        number, data = snapshot
        with self._lock:
            if number <= self._written:
                return False
            started = time.perf_counter()
            try:
                payload = json.dumps(data, separators=(",", ":")).encode()
                write_atomically(self.path, payload)
            except OSError:
                # the file left is older than the state now: never let a start take it for current
                self._written = max(self._written, number)
                self._discard_older()
                raise
            self._written = number
        log.info(
            "state saved",
            extra={"path": str(self.path), "calls": len(data["calls"]), "bytes": len(payload),
                   "seconds": round(time.perf_counter() - started, 3)},
        )
        return True

    def save(self) -> None:
        """Snapshot and write now, logging a failure rather than raising it (used at shutdown).

        When the write fails, an older file (a periodic snapshot) is set aside (by `write`):
        the next start would take it for the state at shutdown and bring back calls ended since.
        """
        try:
            self.write(self.snapshot())  # newer than any periodic write still running: that one is skipped
        except OSError as error:
            log.error("cannot write the state file", extra={"path": str(self.path), "error": str(error)})

    def _discard_older(self) -> None:
        """Set the older snapshot aside (or remove it); only a regular file: anything else is no snapshot."""
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):
                return
        except OSError:
            return
        aside = self.path.with_name(f"{self.path.name}.{SetAside.STALE.value}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        except OSError:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return
            except OSError as error:
                log.error("cannot remove the older state file: the next start may load it",
                          extra={"path": str(self.path), "error": str(error)})
                return
            aside_text = "removed"
        else:
            aside_text = str(aside)
        log.error("the older state file is set aside: the next start begins empty",
                  extra={"path": str(self.path), "aside": aside_text})
