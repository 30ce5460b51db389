"""What the test modules share: the options of a fast inner run, and bounded waits."""

from __future__ import annotations

import time
from collections.abc import Callable

pytest_plugins = ["pytester"]

#: Options for an inner ``runpytest_subprocess``: no cache files in the inner project, and a
#: short grace between SIGTERM and SIGKILL (a child that dies at SIGTERM is not slowed by it).
FAST_ARGS = ("-p", "no:cacheprovider", "--mp-kill-grace=0.5")

#: As :data:`FAST_ARGS`, with every warning of the inner run an error.
STRICT_ARGS = (*FAST_ARGS, "-W", "error")


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    interval: float = 0.02,
    message: str | None = None,
) -> bool:
    """Call ``predicate`` every ``interval`` seconds until it is true, for at most ``timeout``.

    Returns ``True`` once it held. When it never did: returns ``False`` if no ``message`` was
    given (the caller asserts something that says more), else raises ``AssertionError`` with
    ``message`` and how long it waited.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if message is None:
        return False
    raise AssertionError(f"{message} (waited {timeout:g}s)")
