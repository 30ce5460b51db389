"""A fork while another thread runs: the threads alive, where each was started, and the fix.

A forked child is a copy of its parent with one thread, the one that forked: a lock that another
thread held at that moment stays locked in the child for ever. Python 3.12+ only says "This
process is multi-threaded, use of fork() may lead to deadlocks in the child"; the plugin says
which threads, started where and by which test or fixture, in one warning per test. It is found in
plain code, without a fixture. The original code runs in an inner pytest session, so that this
file passes; run ``pytest examples -rP`` to see the report.
"""

from __future__ import annotations

import pytest

HEARTBEAT_THEN_WORKERS = """
import multiprocessing
import threading
import time


def beat(stop):
    while not stop.wait(0.01):
        pass


def work(n):
    return n * n


def test_workers_started_after_a_heartbeat_thread():
    stop = threading.Event()
    heartbeat = threading.Thread(target=beat, args=(stop,), name="heartbeat", daemon=True)
    heartbeat.start()
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        assert pool.map(work, range(4)) == [0, 1, 4, 9]
    stop.set()
    heartbeat.join()
"""


def test_fork_with_threads_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_heartbeat=HEARTBEAT_THEN_WORKERS)
    # Python 3.12 and later add a DeprecationWarning of their own at each such fork: left out
    # here, so that the report shown is the plugin's on every version.
    result = pytester.runpytest_subprocess(
        "-W", "ignore:This process:DeprecationWarning", timeout=120
    )
    print(result.stdout.str())
    # Only a warning: the test passes, as it does without the plugin (Python too only warns).
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*MpCheckWarning: mpcheck: test_heartbeat.py::"
            "test_workers_started_after_a_heartbeat_thread: forked while other threads were "
            "running. The child is a copy of this process with only the thread that forked: a "
            "lock that another thread held at that moment (of logging, of a queue, of I/O) stays "
            "locked in the child for ever, and the child deadlocks when it takes it.",
            "    fork at test_heartbeat.py:20 (multiprocessing.Process.start, 2 times); threads "
            "alive:",
            "      'heartbeat', daemon: started at test_heartbeat.py:18 by this test",
            "  How to fix: start the processes before the threads (or join the threads before "
            "forking), or use the spawn or forkserver start method "
            "(multiprocessing.get_context('spawn'), or --mp-start-methods=spawn,forkserver for "
            "the mp_* fixtures).",
        ]
    )
