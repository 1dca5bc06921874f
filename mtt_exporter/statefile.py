"""The state file: calls in progress saved atomically on shutdown (and periodically), loaded (and removed) on start.

The data is `correlator.dump_state`; this module only does the file side. A file that
cannot be used is logged and renamed aside (`<name>.corrupt-<UTC time>`), and the exporter
starts empty: a bad file never stops a start.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .correlator import Correlator, Fact, dump_state, load_state

log = logging.getLogger("mtt_exporter")


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

    def __init__(self, path: Path, correlator: Correlator) -> None:
        self.path = path
        self.correlator = correlator
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
                facts = load_state(json.loads(raw), self.correlator)
        except (ValueError, RecursionError) as error:  # JSON, UTF-8 and StateError are ValueErrors
            self._set_aside(f"{type(error).__name__}: {error}"[:300])
            return []
        try:
            self.path.unlink()
        except OSError as error:
            log.warning("cannot remove the loaded state file", extra={"path": str(self.path), "error": str(error)})
        log.info(
            "state loaded",
            extra={"path": str(self.path), "calls": len(self.correlator), "in_progress": self.correlator.in_progress()},
        )
        return facts

    def _set_aside(self, reason: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        try:
            os.replace(self.path, aside)
        except OSError as error:
            aside_text = f"not moved: {error}"
        else:
            aside_text = str(aside)
        log.error(
            "state file unusable, set aside; starting empty",
            extra={"path": str(self.path), "aside": aside_text, "error": reason},
        )

    def snapshot(self) -> tuple[int, dict]:
        """Take the state now; call it in the event loop's thread (the correlator is not thread-safe)."""
        self._taken += 1
        with _gc_paused():
            return self._taken, dump_state(self.correlator)

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
        """Snapshot and write now, logging a failure rather than raising it (used at shutdown)."""
        try:
            self.write(self.snapshot())
        except OSError as error:
            log.error("cannot write the state file", extra={"path": str(self.path), "error": str(error)})
