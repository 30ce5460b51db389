"""The join deadlock: a child that put data on a Queue cannot end before the data is read.

Recognised from the child's own stack (its main thread joins the queue's feeder thread at exit),
so it is explained in plain code, without a fixture, under every start method: in the report of
a leftover, of a child still running when pytest-timeout expired, and of a hung mp_spawn child.
"""

from __future__ import annotations

import pytest

from tests.conftest import FAST_ARGS

PUTS_THEN_JOINS = """
import multiprocessing

import pytest

BIG = b"x" * 1_000_000  # more than a pipe holds: the feeder thread blocks until it is read


def produce(queue, done):
    queue.put(BIG)
    done.set()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_join_with_a_timeout_before_get(method):
    context = multiprocessing.get_context(method)
    queue, done = context.Queue(), context.Event()
    producer = context.Process(target=produce, args=(queue, done), name="producer")
    producer.start()
    assert done.wait(60)
    producer.join(0.5)  # returns: the child cannot end


@pytest.mark.timeout(3)
def test_join_before_get():
    context = multiprocessing.get_context("fork")
    queue, done = context.Queue(), context.Event()
    producer = context.Process(target=produce, args=(queue, done), name="producer")
    producer.start()
    producer.join()
    assert queue.get() == BIG


@pytest.mark.mp_join_timeout(1)
def test_mp_spawn_join_before_get(mp_spawn):
    context = multiprocessing.get_context("fork")
    queue, done = context.Queue(), context.Event()
    mp_spawn(produce, args=(queue, done), name="producer").join()
"""

WAITING_IN = (
    "    waiting in: the end of its Queue's feeder thread: what it put on a multiprocessing "
    "Queue was not all read"
)
PITFALL = (
    "    pitfall:    the join deadlock: a process that put data on a multiprocessing Queue "
    "cannot end until that data is read (its feeder thread is still writing it to the pipe), so "
    "joining it first waits for ever. Read the queue (get()) before join(); or, if losing the "
    "data is fine, call cancel_join_thread() on the queue in the child."
)


def _first_line_of(text: str, marker: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if marker in line)


def test_the_join_deadlock_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_queue=PUTS_THEN_JOINS)
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--timeout-method=signal", timeout=120)
    result.assert_outcomes(passed=3, failed=2, errors=3)
    start = _first_line_of(PUTS_THEN_JOINS, "producer.start()") - 1  # the text starts with \n
    for method in ("fork", "spawn", "forkserver"):
        result.stdout.fnmatch_lines(
            [
                f"*ERROR at teardown of test_join_with_a_timeout_before_get[[]{method}[]]*",
                "leaked process * 'producer': still running, *",
                f"    started at: test_queue.py:{start} by multiprocessing.Process.start",
                "    ended by:   *",
                WAITING_IN,
                PITFALL,
                "    stack (most recent call last):",
            ]
        )
    result.stdout.fnmatch_lines(
        [
            "*_ test_join_before_get _*",
            "*pytest-timeout (3s, signal method): 1 child process of the test still running*",
            "hung process * 'producer': hung, *",
            "*",
            "    still running when pytest-timeout's 3s timeout (signal method) expired",
            WAITING_IN,
            PITFALL,
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_mp_spawn_join_before_get _*",
            "hung process * 'producer': hung, *",
            "*",
            WAITING_IN,
            PITFALL,
        ]
    )
