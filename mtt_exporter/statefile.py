"""The state file: calls in progress saved atomically on shutdown (and periodically), loaded (and removed) on start.

The data is `correlator.dump_state` plus `saved_at`, the wall-clock time of the snapshot;
this module only does the file side. The calls' receipt times are kept on the wall clock in
the file and on the process clock in memory (see clock.py): a save maps them to the wall
clock of now (which may have stepped since start); a load takes them as they are, since
the process clock is the wall clock as of start.

A file that cannot be trusted is logged, counted (`mtt_state_file_set_aside_total`) and
renamed aside (`<name>.<reason>-<UTC time>`), and the exporter starts empty: a bad file
never stops a start. Untrusted: damaged, undated (an older version wrote it), saved longer
ago than `max_age` (it misses the notifications since, which MTT does not send again:
its open calls would be phantoms), or dated ahead of the wall clock. When the final save
at shutdown fails, the older file is set aside at once, for the same reason.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

from .clock import ProcessClock
from .correlator import READABLE_STATE_VERSIONS, STATE_FORMAT, Correlator, Fact, dump_state, load_state

log = logging.getLogger("mtt_exporter")

#: Default --state-max-age: a restart takes seconds; a snapshot older than a typical call
#: (ACD is one to three minutes) holds mostly calls that have ended unseen meanwhile.
MAX_AGE_SECONDS = 120.0
#: A snapshot dated this far ahead of the wall clock is still taken (a clock slewed back).
FUTURE_TOLERANCE_SECONDS = 5.0


class SetAside(StrEnum):
    """Why a state file was not loaded: the `reason` label of `mtt_state_file_set_aside_total`."""

    CORRUPT = "corrupt"  # not JSON, not ours, another version, or damaged
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


def write_atomically(path: Path, payload: bytes) -> None:
    """Temp file in the same directory, fsync, rename over `path`, fsync the directory.

    A crash at any point leaves either the old file or the new one, never a mix. The file
    is private (0600): it holds call ids and forwarding numbers.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
                 max_age: float = MAX_AGE_SECONDS) -> None:
        self.path = path
        self.correlator = correlator
        self.clock = clock if clock is not None else ProcessClock()
        self.max_age = max_age
        #: why the file was not loaded at start, if it was not
        self.set_aside: SetAside | None = None
        self._lock = threading.Lock()
        self._taken = 0
        self._written = 0

    def load(self) -> list[Fact]:
        """Fill the (empty) correlator from the file, then remove it; returns the facts of restoring.

        The file is used once: after a hard kill an old file would bring back calls that
        have ended since, and count them again.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            log.info("no state file yet, starting empty", extra={"path": str(self.path)})
            return []
        except OSError as error:
            log.error("cannot read the state file, starting empty", extra={"path": str(self.path), "error": str(error)})
            return []
        try:
            with _gc_paused():
                data = json.loads(raw)
                refused = self._untrusted(data)
                if refused is not None:
                    self._set_aside(*refused)
                    return []
                facts = load_state(data, self.correlator)  # the process clock is the wall clock as of start
        except (ValueError, RecursionError) as error:  # JSON, UTF-8 and StateError are ValueErrors
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

    def _untrusted(self, data: object) -> tuple[SetAside, str] | None:
        """Why a snapshot must not be loaded, judged by its date; None: take it."""
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or data.get("version") not in READABLE_STATE_VERSIONS:
            return None  # load_state says what is wrong
        saved_at = data.get("saved_at")
        if saved_at is None:
            return SetAside.UNDATED, "the snapshot carries no saved_at time"
        if isinstance(saved_at, bool) or not isinstance(saved_at, int | float) or not math.isfinite(saved_at):
            return SetAside.CORRUPT, f"saved_at: expected a finite number, got {type(saved_at).__name__}"
        age = self.clock() - saved_at
        if age > self.max_age:
            return SetAside.STALE, f"saved {age:.0f} s ago, more than --state-max-age {self.max_age:g} s"
        if age < -FUTURE_TOLERANCE_SECONDS:
            return SetAside.FUTURE, f"saved {-age:.0f} s in the future: the wall clock went back"
        return None

    def _set_aside(self, reason: SetAside, detail: str) -> None:
        self.set_aside = reason
        aside = self.path.with_name(f"{self.path.name}.{reason.value}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        try:
            os.replace(self.path, aside)
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

        Raises OSError when the file cannot be written.
        """
        number, data = snapshot
        with self._lock:
            if number <= self._written:
                return False
            started = time.perf_counter()
            payload = json.dumps(data, separators=(",", ":")).encode()
            write_atomically(self.path, payload)
            self._written = number
        log.info(
            "state saved",
            extra={"path": str(self.path), "calls": len(data["calls"]), "bytes": len(payload),
                   "seconds": round(time.perf_counter() - started, 3)},
        )
        return True

    def save(self) -> None:
        """Snapshot and write now, logging a failure rather than raising it (used at shutdown).

        When the write fails, an older file (a periodic snapshot) is set aside: the next
        start would take it for the state at shutdown and bring back calls ended since.
        """
        snapshot = self.snapshot()
        try:
            self.write(snapshot)
        except OSError as error:
            log.error("cannot write the state file", extra={"path": str(self.path), "error": str(error)})
            with self._lock:
                self._written = max(self._written, snapshot[0])  # a periodic write still running is skipped
                self._discard_older()

    def _discard_older(self) -> None:
        aside = self.path.with_name(f"{self.path.name}.{SetAside.STALE.value}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        try:
            os.replace(self.path, aside)
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
