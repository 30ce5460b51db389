"""Terminating a process that feeds a Queue: the queue can no longer be trusted.

A process's ``put()`` only hands the item to its queue's feeder thread, which writes it to the
queue's pipe later. ``terminate()`` (or ``kill()``) stops that thread wherever it is: what it had
not written yet is lost, a message it was writing may be left half-written, and the queue's write
lock may stay held, so a later ``get()`` may hang or raise (the multiprocessing documentation's
programming guidelines: "Avoid terminating processes"). The plugin warns the test, in plain code
and without a fixture, naming the queue, the process, the signal and the fix; it is a warning,
not a failure, since a test may end a worker on purpose and never use its queue again. Stopping
the worker by telling it to stop, then joining it, gets no warning. The original code runs in an
inner pytest session, so that this file passes; run ``pytest examples -rP`` to see the report.
"""

from __future__ import annotations

import pytest

SQUARES = """
import multiprocessing
import time


def produce(results):
    n = 0
    while True:  # streams squares until it is stopped
        results.put(n * n)
        n += 1
        time.sleep(0.01)


def produce_until_told(results, stop):
    n = 0
    while not stop.is_set():
        results.put(n * n)
        n += 1
        time.sleep(0.01)


def test_first_squares():
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    producer = context.Process(target=produce, args=(results,), name="producer")
    producer.start()
    assert [results.get(timeout=60) for _ in range(3)] == [0, 1, 4]
    producer.terminate()  # enough squares: stop it the quick way
    producer.join()


def test_first_squares_stopped_cleanly():
    context = multiprocessing.get_context("spawn")
    results, stop = context.Queue(), context.Event()
    producer = context.Process(target=produce_until_told, args=(results, stop), name="producer")
    producer.start()
    assert [results.get(timeout=60) for _ in range(3)] == [0, 1, 4]
    stop.set()  # it ends by itself, its feeder thread having written all it put
    producer.join()
"""


def test_terminated_feeder_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_squares=SQUARES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    print(result.stdout.str())
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*MpCheckWarning: mpcheck: test_squares.py::test_first_squares: a multiprocessing "
            "queue can no longer be trusted: a process that put to it was ended by a signal",
            "  ",
            "  Queue 'results' made at test_squares.py:23: 'producer' (pid *) put to it, then was "
            "ended by SIGTERM (terminate())",
            "      started at: test_squares.py:25 by multiprocessing.Process.start",
            "  ",
            "  Why: a process ended by a signal stops its queue's feeder thread wherever it is: "
            "what it put but had not yet written to the queue's pipe is lost, a message it was "
            "writing may be left half-written, and the queue's write lock may stay held; a later "
            "get() may then hang or raise, and a put() of another process may hang.",
            "  How to fix: tell the child to stop (a sentinel such as None on a queue it reads, "
            "or an Event it checks) and join() it; terminate() or kill() only as a last resort, "
            "and then do not use the queue again.",
        ],
        consecutive=True,
    )
    result.stdout.no_fnmatch_line("*test_first_squares_stopped_cleanly: *trusted*")
