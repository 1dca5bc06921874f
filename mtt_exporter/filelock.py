"""An exclusive advisory lock on a file's path: one exporter per --state-file, one recorder per --record.

The lock is `fcntl.flock` on a lock file beside the path (`.<name>.lock`, never removed: removing
it would let two processes lock two different inodes). It goes with the process: a kill
releases it, so a crash never leaves a stale lock behind. flock locks an open file
description, so a second lock taken in the same process on the same path fails too.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


class Busy(OSError):
    """Another process (or another open lock in this one) holds the lock of this path."""


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def acquire(path: Path, what: str) -> int:
    """Take the lock of `path` without waiting; returns the descriptor that holds it (close it to release).

    Raises Busy, with one line naming `what` (the option) and the path, when it is held.
    """
    lock = lock_path(path)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise Busy(errno.EBUSY, f"{what} {path} is in use by another exporter (lock {lock} held)") from None
        raise
    return fd
