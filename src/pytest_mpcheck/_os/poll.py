"""Waiting, bounded, for something that no file descriptor announces (a process to end)."""

from __future__ import annotations

import time
from collections.abc import Callable

#: The first pause, and the longest: quick answers for what ends at once, few wake-ups after.
FIRST_PAUSE = 0.002
LONGEST_PAUSE = 0.05


def poll_until(done: Callable[[], bool], timeout: float) -> bool:
    """Ask ``done()`` until it is true or ``timeout`` seconds have passed; its last answer.

    ``done`` is asked at once, then after pauses that double from 2 ms to 50 ms, and once more
    when the time is up: a wait of ``timeout <= 0`` asks once.
    """
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, LONGEST_PAUSE)
    return True
