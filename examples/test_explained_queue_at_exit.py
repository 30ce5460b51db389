"""A queue dropped with data nobody read: pytest would wait for it at exit, for ever.

``put()`` hands each item to the queue's feeder thread, which writes it to the queue's pipe. A test
that puts more than the pipe holds (64 KiB on Linux) and drops the queue unread leaves that thread
waiting for a reader; as Python exits, multiprocessing joins it, with no timeout, and pytest never
ends (the multiprocessing documentation's programming guidelines: "joining processes that use
queues"). With the plugin, the thread is not waited for, and standard error says which queue, where
its first ``put()`` was, in which test, and how to fix it. Found in plain code, without a fixture,
in every mode. The original code runs in an inner pytest session, so that this file passes; run
``pytest examples -rP`` to see the report.
"""

from __future__ import annotations

import pytest

PUT_AND_FORGET = """
import multiprocessing


def test_results_are_queued():
    results = multiprocessing.get_context("fork").Queue()
    results.put([n * n for n in range(100_000)])  # more than a pipe holds, and never read
"""


def test_a_dropped_queue_does_not_hold_the_exit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_results=PUT_AND_FORGET)
    result = pytester.runpytest_subprocess(timeout=60)
    print(result.stderr.str())
    result.assert_outcomes(passed=1)
    result.stderr.fnmatch_lines(
        [
            "mpcheck: 1 multiprocessing queue feeder thread was still writing as Python exited, "
            "to a pipe that nobody read: multiprocessing would have waited for it with no "
            "timeout, and pytest would not have ended. Not waited for; what was not written is "
            "lost:",
            "    thread 'QueueFeederThread', its queue's first put() at test_results.py:6 by "
            "test_results.py::test_results_are_queued: writing its last item",
            "How to fix: get() every item that was put before the queue is dropped (the "
            "multiprocessing guidelines: joining processes that use queues), or call "
            "cancel_join_thread() on a queue whose data may be lost.",
        ]
    )
