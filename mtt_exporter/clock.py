"""The two clocks of the exporter: wall time for what leaves the process, a steady clock for its decisions.

Grace periods, the TTL and the ticker's decisions must not follow a step of the wall clock
(a VM resumed, `chronyd makestep`): `ProcessClock` reads the wall clock once, at start, and
then advances only with the monotonic clock. Its readings are still Unix seconds (equal to
the wall clock until the wall clock steps), so they can be kept in Redis, where every
replica's process clock agrees with the others as long as their hosts agreed at start.
What outlives the process (the state file) is mapped to the wall clock of the moment on save;
at the next start the process clock again equals the wall clock, so a load takes it as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Differences between the clocks below this are the time between reading them, not a step.
JITTER_SECONDS = 0.1


class ProcessClock:
    """Unix seconds that advance with `monotonic` only: the wall clock as read at start, plus the monotonic time since."""

    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.wall = wall
        self._monotonic = monotonic
        self._offset = wall() - monotonic()

    def __call__(self) -> float:
        """Now, for in-process timing."""
        return self._monotonic() + self._offset

    def step(self) -> float:
        """How far the wall clock is ahead of this clock now (the sum of its steps since start).

        A process time `t` is the wall time `t + step()`, and a wall time `w` the process time
        `w - step()`. 0.0 until the wall clock steps by JITTER_SECONDS or more.
        """
        step = self.wall() - self()
        return step if abs(step) >= JITTER_SECONDS else 0.0


#: Latest Unix time taken from a file (2100-01-01): any later one is damage, not a time.
MAX_UNIX_SECONDS = 4_102_444_800.0


def seconds(value: object, low: float = 0.0, high: float = MAX_UNIX_SECONDS) -> float:
    """A time read from disk (state file, recording) as a float, or ValueError.

    Only a JSON number (not a bool) within [low, high] is taken; the range is checked before
    converting, so a 400-digit integer is refused rather than overflowing float(), and NaN
    (which compares false) and infinities fall outside it.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"expected a time in [{low:g}, {high:g}] s, got {type(value).__name__}")
    return float(value)
