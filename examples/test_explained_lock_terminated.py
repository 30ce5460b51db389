"""A process ended from outside while it held a lock.

``terminate()`` (SIGTERM), ``kill()`` or the kernel's OOM killer (SIGKILL) end a process wherever
it is: a ``multiprocessing`` lock it held is never released, and every other process that takes
it then waits for ever (the multiprocessing documentation's programming guidelines: avoid
terminating processes). With the lock checker (``mp_locks``), the report of the test names the
lock, where the ended process took it, and the signal that ended it. The original code runs in
an inner pytest session, so that this file passes; run ``pytest examples -rP`` to see the report.
"""

from __future__ import annotations

import pytest

TERMINATED = """
import time


def log_forever(lock, started):
    with lock:
        started.set()
        time.sleep(60)  # writes the log, under the lock


def test_stop_the_logger(mp_locks, mp_spawn, mp_context):
    log_lock, started = mp_locks.Lock("log"), mp_context.Event()
    logger = mp_spawn(log_forever, args=(log_lock, started), name="logger")
    started.wait(10)
    logger.terminate()  # while it holds the lock: nobody can take it any more
    logger.join()
"""


def test_terminated_holder_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_logger=TERMINATED)
    result = pytester.runpytest_subprocess("--mp-start-methods=fork", timeout=120)
    print(result.stdout.str())
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_stop_the_logger[[]fork[]]*",
            "mpcheck: test_logger.py::test_stop_the_logger[[]fork[]]: 1 lock problem",
            "",
            "held at exit: logger (pid *) ended holding lock 'log' (acquired at test_logger.py:5 "
            "at +*s); any other process that takes it waits forever; it was ended by SIGTERM "
            "(terminate()) while it held the lock: a process ended from outside never releases "
            "what it holds, so the lock can no longer be trusted",
        ]
    )
