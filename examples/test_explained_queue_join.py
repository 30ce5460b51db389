"""The join deadlock: joining a child before reading what it put on a Queue.

A process that put data on a ``multiprocessing.Queue`` does not end until that data has been read:
its queue's feeder thread is still writing it to the pipe, and the child waits for that thread at
exit. ``join()`` before ``get()`` then waits for ever (the multiprocessing documentation's
programming guidelines call this out). With pytest-timeout the plugin reports the child with its
stack, names the pitfall and says how to fix it; found in plain code, without a fixture. The
original code runs in an inner pytest session, so that this file passes; run
``pytest examples -rP`` to see the report.
"""

from __future__ import annotations

import pytest

JOIN_BEFORE_GET = """
import multiprocessing


def produce(queue):
    queue.put([n * n for n in range(100_000)])  # more than a pipe holds


def test_squares():
    queue = multiprocessing.get_context("fork").Queue()
    producer = multiprocessing.get_context("fork").Process(target=produce, args=(queue,))
    producer.start()
    producer.join()  # waits for ever: the child waits for its data to be read
    assert len(queue.get()) == 100_000
"""


def test_join_before_get_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_squares=JOIN_BEFORE_GET)
    result = pytester.runpytest_subprocess("--timeout=2", "--timeout-method=signal", timeout=120)
    print(result.stdout.str())
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: test_squares.py::test_squares: pytest-timeout (2s, signal method): 1 child "
            "process of the test still running; their stacks, then ended",
            "hung process * 'ForkProcess-1': hung, state sleeping, age *s",
            "    started at: test_squares.py:11 by multiprocessing.Process.start",
            "*",
            "    waiting in: the end of its Queue's feeder thread: what it put on a "
            "multiprocessing Queue was not all read",
            "    pitfall:    the join deadlock: a process that put data on a multiprocessing Queue "
            "cannot end until that data is read (its feeder thread is still writing it to the "
            "pipe), so joining it first waits for ever. Read the queue (get()) before join(); or, "
            "if losing the data is fine, call cancel_join_thread() on the queue in the child.",
            "    stack (most recent call last):",
        ]
    )
