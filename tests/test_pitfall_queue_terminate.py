"""A child that fed a multiprocessing Queue, then was ended by a signal: the queue is not to be
trusted any more.

Found in plain code (a ``Process`` of every start method) and for ``mp_spawn`` children, with no
fixture: the child says, once per queue, that it started the queue's feeder thread; the test's
report (a warning, whatever the mode) names the queue, the process, the signal and the fix. Not
for a child that never put, one that put and ended by itself, a ``SimpleQueue`` (no feeder
thread), one that the plugin itself ended (a leftover, a hung ``mp_spawn`` child), nor in mode off.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import STRICT_ARGS

QUEUES = """
import multiprocessing
import os
import signal
import time

import pytest


def feed(queue, *more):
    for each in (queue, *more):
        each.put("item")
    time.sleep(60)


def feed_and_return(queue):
    queue.put("item")


def sleep_holding(queue):
    time.sleep(60)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_terminated(method):
    context = multiprocessing.get_context(method)
    queue = context.Queue()  # queue-made
    feeder = context.Process(target=feed, args=(queue,), name="feeder")
    feeder.start()  # feeder-started
    assert queue.get(timeout=60) == "item"
    feeder.terminate()
    feeder.join()
    assert feeder.exitcode == -signal.SIGTERM


def test_killed_joinable():
    context = multiprocessing.get_context("spawn")
    tasks = context.JoinableQueue()  # joinable-made
    worker = context.Process(target=feed, args=(tasks,), name="worker")
    worker.start()  # worker-started
    assert tasks.get(timeout=60) == "item"
    worker.kill()
    worker.join()
    assert worker.exitcode == -signal.SIGKILL


def test_two_queues_and_another_signal():
    context = multiprocessing.get_context("fork")
    results, logs = context.Queue(), context.Queue()  # two-made
    child = context.Process(target=feed, args=(results, logs), name="both")
    child.start()  # both-started
    assert results.get(timeout=60) == logs.get(timeout=60) == "item"
    os.kill(child.pid, signal.SIGUSR1)
    child.join()
    assert child.exitcode == -signal.SIGUSR1


@pytest.mark.mp_start_methods("fork", "spawn", "forkserver")
def test_mp_spawn_terminated(mp_spawn, mp_context):
    queue = mp_context.Queue()  # spawn-made
    child = mp_spawn(feed, args=(queue,), name="spawned")  # spawn-started
    assert queue.get(timeout=60) == "item"
    child.terminate()
    child.join()


@pytest.mark.mp_check("warn")
def test_terminated_on_purpose_in_warn_mode():
    queue = multiprocessing.get_context("forkserver").Queue()  # warn-made
    feeder = multiprocessing.get_context("forkserver").Process(
        target=feed, args=(queue,), name="on-purpose"
    )
    feeder.start()  # warn-started
    assert queue.get(timeout=60) == "item"
    feeder.terminate()
    feeder.join()


@pytest.mark.mp_check("off")
def test_terminated_in_mode_off():
    queue = multiprocessing.get_context("spawn").Queue()
    feeder = multiprocessing.get_context("spawn").Process(target=feed, args=(queue,))
    feeder.start()
    assert queue.get(timeout=60) == "item"
    feeder.terminate()
    feeder.join()


def test_terminated_never_put():
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=sleep_holding, args=(queue,))
    child.start()
    child.terminate()
    child.join()
    assert child.exitcode == -signal.SIGTERM


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_put_then_joined(method):
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=feed_and_return, args=(queue,))
    child.start()
    assert queue.get(timeout=60) == "item"
    child.join()
    assert child.exitcode == 0


def test_simple_queue_terminated():
    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    child = context.Process(target=feed, args=(queue,))
    child.start()
    assert queue.get() == "item"
    child.terminate()
    child.join()
    assert child.exitcode == -signal.SIGTERM


def test_leftover_ended_by_mpcheck():
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(
        target=feed, args=(queue,), name="leftover"
    )
    child.start()  # leftover-started
    assert queue.get(timeout=60) == "item"


@pytest.mark.mp_join_timeout(1)
def test_hung_mp_spawn_ended_by_mpcheck(mp_spawn):
    queue = multiprocessing.get_context("spawn").Queue()
    mp_spawn(feed, args=(queue,), name="hung").join()
"""

REPORTED = [
    *(f"test_terminated[{method}]" for method in ("fork", "spawn", "forkserver")),
    "test_killed_joinable",
    "test_two_queues_and_another_signal",
    *(f"test_mp_spawn_terminated[{method}]" for method in ("fork", "spawn", "forkserver")),
    "test_terminated_on_purpose_in_warn_mode",
]
NOT_REPORTED = [
    "test_terminated_in_mode_off",
    "test_terminated_never_put",
    "test_put_then_joined[fork]",
    "test_put_then_joined[spawn]",
    "test_simple_queue_terminated",
    "test_leftover_ended_by_mpcheck",
    "test_hung_mp_spawn_ended_by_mpcheck",
]

WHY = (
    "  Why: a process ended by a signal stops its queue's feeder thread wherever it is: what it "
    "put but had not yet written to the queue's pipe is lost, a message it was writing may be "
    "left half-written, and the queue's write lock may stay held; a later get() may then hang or "
    "raise, and a put() of another process may hang."
)
JOINABLE = " A JoinableQueue counts what was lost as unfinished: its join() may wait for ever."
FIX = (
    "  How to fix: tell the child to stop (a sentinel such as None on a queue it reads, or an "
    "Event it checks) and join() it; terminate() or kill() only as a last resort, and then do "
    "not use the queue again."
)
ONE_QUEUE = (
    "a multiprocessing queue can no longer be trusted: a process that put to it was ended by a "
    "signal"
)


def _line(marker: str) -> str:
    """``test_queue.py:N`` of the one line of :data:`QUEUES` that carries ``marker``."""
    lines = QUEUES.lstrip("\n").splitlines()  # the file as pytester writes it
    numbers = [n for n, text in enumerate(lines, 1) if f"# {marker}" in text]
    assert len(numbers) == 1, marker
    return f"test_queue.py:{numbers[0]}"


def _escaped(nodeid: str) -> str:
    return nodeid.replace("[", "[[]")


def _heading(test: str, what: str = ONE_QUEUE) -> str:
    """The first line of the warning, as the warnings summary shows it."""
    return f"  *test_queue.py:*: MpCheckWarning: mpcheck: test_queue.py::{_escaped(test)}: {what}"


def test_a_terminated_feeder_names_its_queue(pytester: pytest.Pytester) -> None:
    """One inner run, with every blanket warning an error (the report stays a warning): the
    tests that end a feeder pass, each warned with the lines a user reads; the others are not
    warned, and only the leftover (a teardown error) and the hung child (its join fails) fail."""
    pytester.makepyfile(test_queue=QUEUES)
    result = pytester.runpytest_subprocess(*STRICT_ARGS, timeout=180)
    result.assert_outcomes(passed=15, failed=1, errors=1)
    for method in ("fork", "spawn", "forkserver"):
        result.stdout.fnmatch_lines(
            [
                _heading(f"test_terminated[{method}]"),
                "  ",
                f"  Queue 'queue' made at {_line('queue-made')}: 'feeder' (pid *) put to it, then "
                "was ended by SIGTERM (terminate())",
                f"      started at: {_line('feeder-started')} by multiprocessing.Process.start",
                "  ",
                WHY,
                FIX,
            ],
            consecutive=True,
        )
        result.stdout.fnmatch_lines(
            [
                _heading(f"test_mp_spawn_terminated[{method}]"),
                "  ",
                f"  Queue 'queue' made at {_line('spawn-made')}: 'spawned' (pid *) put to it, then "
                "was ended by SIGTERM (terminate())",
                f"      started at: {_line('spawn-started')} by multiprocessing.Process.start",
                "  ",
                WHY,
                FIX,
            ],
            consecutive=True,
        )
    result.stdout.fnmatch_lines(
        [
            _heading("test_killed_joinable"),
            "  ",
            f"  JoinableQueue 'tasks' made at {_line('joinable-made')}: 'worker' (pid *) put to "
            "it, then was ended by SIGKILL (kill(), or the kernel's OOM killer)",
            f"      started at: {_line('worker-started')} by multiprocessing.Process.start",
            "  ",
            WHY + JOINABLE,
            FIX,
        ],
        consecutive=True,
    )
    # A tuple assignment names no variable; a signal no one sends to end a process, by its name.
    result.stdout.fnmatch_lines(
        [
            _heading(
                "test_two_queues_and_another_signal",
                "2 multiprocessing queues can no longer be trusted: a process that put to each "
                "was ended by a signal",
            ),
            "  ",
            f"  Queue made at {_line('two-made')}: 'both' (pid *) put to it, then was ended by "
            "SIGUSR1",
            f"      started at: {_line('both-started')} by multiprocessing.Process.start",
            "  ",
            f"  Queue made at {_line('two-made')}: 'both' (pid *) put to it, then was ended by "
            "SIGUSR1",
            f"      started at: {_line('both-started')} by multiprocessing.Process.start",
            "  ",
            WHY,
            FIX,
        ],
        consecutive=True,
    )
    result.stdout.fnmatch_lines(
        [
            _heading("test_terminated_on_purpose_in_warn_mode"),
            "  ",
            f"  Queue 'queue' made at {_line('warn-made')}: 'on-purpose' (pid *) put to it, then "
            "was ended by SIGTERM (terminate())",
            f"      started at: {_line('warn-started')} by multiprocessing.Process.start",
        ],
        consecutive=True,
    )
    # What the plugin ended is its own report, not a queue the test broke.
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leftover_ended_by_mpcheck*",
            "leaked process * 'leftover': still running, *",
            f"    started at: {_line('leftover-started')} by multiprocessing.Process.start",
            "    ended by:   SIGTERM (ended by mpcheck)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_hung_mp_spawn_ended_by_mpcheck _*",
            "hung process * 'hung': hung, *",
            "    ended by:   SIGTERM (ended by mpcheck)",
        ]
    )
    warned = re.findall(
        r"MpCheckWarning: mpcheck: test_queue\.py::(\S+): (?:a multiprocessing queue|\d "
        r"multiprocessing queues) can no longer be trusted",
        result.stdout.str(),
    )
    assert sorted(warned) == sorted(REPORTED), warned
    for test in NOT_REPORTED:
        result.stdout.no_fnmatch_line(f"*mpcheck: test_queue.py::{_escaped(test)}: *trusted*")
