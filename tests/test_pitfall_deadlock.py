"""A deadlock between processes on checked locks: the cycle, who holds what and waits for what.

Told in the report of the hang (here the join timeout of ``mp_spawn``, and pytest-timeout), with
every process of the cycle, each with its ``deadlock:`` line and its stack: the process the test
joined, the other one it waits for (ended with it: it can never finish either), and the pytest
process itself when a thread of the test is in the cycle (shown, not ended). Real processes that
really deadlock, under every start method (how a checked lock reaches the child differs); the
pytest process's part is read in that process, the same under every method: fork only. So is a
cycle of one, a process that takes again the Lock it holds (only the record of its wait differs).
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import FAST_ARGS
from tests.sections import section

DEADLOCK = """
import pytest


def hold_then_take(first, second, mine, theirs):
    with first:  # holds
        mine.set()
        theirs.wait(20)
        with second:  # waits
            pass


@pytest.mark.mp_join_timeout(2)
def test_deadlock(mp_locks, mp_spawn, mp_context):
    a, b = mp_locks.Lock("a"), mp_locks.Lock("b")
    a_held, b_held = mp_context.Event(), mp_context.Event()
    first = mp_spawn(hold_then_take, args=(a, b, a_held, b_held), name="holds-a")
    mp_spawn(hold_then_take, args=(b, a, b_held, a_held), name="holds-b")
    assert a_held.wait(60) and b_held.wait(60)  # started, however loaded the machine
    first.join()


@pytest.mark.mp_start_methods("fork")
@pytest.mark.timeout(2, method="signal")
def test_with_the_test_process(mp_locks, mp_spawn, mp_context):
    a, b = mp_locks.Lock("a"), mp_locks.Lock("b")
    a_held, b_held = mp_context.Event(), mp_context.Event()
    mp_spawn(hold_then_take, args=(b, a, b_held, a_held), name="holds-b")
    hold_then_take(a, b, a_held, b_held)


def take_twice(lock):
    with lock:  # takes it
        with lock:  # again
            pass


@pytest.mark.mp_start_methods("fork")
@pytest.mark.mp_join_timeout(1)
def test_self_deadlock(mp_locks, mp_spawn):
    import time

    lock = mp_locks.Lock("again")
    child = mp_spawn(take_twice, args=(lock,), name="takes-twice")
    deadline = time.monotonic() + 60
    while not mp_locks.waiting("again") and time.monotonic() < deadline:
        time.sleep(0.005)  # it waits for itself, however loaded the machine, before the join
    child.join()
"""


def _line(marker: str, after: str = "") -> int:
    """The number of the first line of DEADLOCK (as the file is written) that holds ``marker``,
    after the first one that holds ``after``."""
    lines = DEADLOCK.strip().splitlines()
    start = next(n for n, line in enumerate(lines) if after in line)
    return next(n for n, line in enumerate(lines[start:], start + 1) if marker in line)


HOLDS, WAITS = _line("# holds"), _line("# waits")

ADVICE = (
    "The processes marked 'deadlock' wait for each other's checked locks in a cycle: none can go "
    "on. How to fix: take these locks in one global order everywhere (mp_locks.assert_ordered() "
    "checks the order of a run, deadlocked or not)."
)
SELF_ADVICE = (
    "The process marked 'deadlock' waits for a checked lock that it holds itself: the thread that "
    "holds a Lock cannot take it again, and waits forever. How to fix: do not take the lock again "
    "while holding it (code called under the lock must not take it), or make it an RLock "
    "(mp_locks.RLock(name), multiprocessing.RLock) where the same thread must take it again."
)

#: The innermost frame of a process that waits for a checked lock.
WAIT_FRAME = [
    '        File "*/pytest_mpcheck/locks/checked.py", line *, in _wait',
    "          acquired = bool(self._lock.acquire(True, timeout))",
]


def _deadlock(held: str, wanted: str, holder: str) -> str:
    return (
        f"    deadlock:   holds {held!r} (taken at test_deadlock.py:{HOLDS}) and waits for "
        f"{wanted!r} (at test_deadlock.py:{WAITS}), which {holder} (pid *) holds"
    )


def _child(name: str, started: int, why: str, held: str, wanted: str, holder: str) -> list[str]:
    """The lines of one child of the cycle, from its heading to the end of its stack."""
    return [
        f"hung process * {name!r}: hung, state *, age *s",
        "    command:    *",
        f"    started at: test_deadlock.py:{started} by multiprocessing.Process.start",
        "    ended by:   SIGTERM (ended by mpcheck)",
        f"    {why}",
        _deadlock(held, wanted, holder),
        "    waiting in: *",
        "    stack (most recent call last):",
        "      Thread 0x* (main thread), most recent call last:",
        f'        File "*/test_deadlock.py", line {WAITS}, in hold_then_take',
        "          with second:  # waits",
        *WAIT_FRAME,
    ]


def _inversion(first: str, second: str) -> list[str]:
    """The teardown's whole report: the lock-order inversion only (no 'held at exit' of the
    processes that mpcheck ended, no process still running at teardown)."""
    return [
        "lock-order inversion: locks 'a', 'b' are taken in opposite orders (a deadlock waiting "
        "to happen, whether or not this run deadlocked)",
        f"    {first} (pid *) waited for 'b' at test_deadlock.py:{WAITS} while holding 'a' "
        f"(taken at test_deadlock.py:{HOLDS})",
        f"    {second} (pid *) waited for 'a' at test_deadlock.py:{WAITS} while holding 'b' "
        f"(taken at test_deadlock.py:{HOLDS})",
        "  How to fix: take these locks in one global order everywhere. Two processes that take "
        "them in opposite orders at the same moment deadlock.",
    ]


def _report_of(teardown: pytest.LineMatcher) -> list[str]:
    """The lines of a teardown error above the captured sections that pytest adds to it."""
    lines = teardown.lines
    return lines[: next((n for n, line in enumerate(lines) if line.startswith("---")), len(lines))]


def _pids(lines: list[str], pattern: str) -> list[int]:
    return [int(found[1]) for line in lines if (found := re.fullmatch(pattern, line))]


def test_a_deadlock_on_checked_locks_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_deadlock=DEADLOCK)
    result = pytester.runpytest_subprocess(
        *FAST_ARGS, "--mp-start-methods=fork,spawn,forkserver", timeout=120
    )
    # Each test fails (the hang) and errors at teardown (the lock-order inversion), but the
    # self-deadlock, whose one lock has no order to invert, only fails.
    result.assert_outcomes(failed=5, errors=4)
    for method in ("fork", "spawn", "forkserver"):
        failure = section(result, f"test_deadlock[{method}]")
        # Both processes of the cycle, each with its deadlock line and its stack, in the report
        # of the hang: the one joined, then the one it waits for.
        failure.fnmatch_lines(
            [
                f"*_ test_deadlock[[]{method}[]] _*",
                "mpcheck: 'holds-a' (pid *) did not finish: join() waited 2s (the join timeout)",
                "",
                *_child(
                    "holds-a",
                    _line('name="holds-a"'),
                    "join() timed out: the child hung or is too slow",
                    "a",
                    "b",
                    "holds-b",
                ),
                "",
                *_child(
                    "holds-b",
                    _line('name="holds-b"'),
                    "in the same deadlock: it can never finish either",
                    "b",
                    "a",
                    "holds-a",
                ),
                "",
                ADVICE,
                "The join timeout is 2s (--mp-join-timeout, *",
            ],
            consecutive=True,
        )
        # Each names the other, by the pid of its report; no process is shown twice.
        lines = failure.lines
        heads = _pids(lines, r"hung process (\d+) 'holds-[ab]': .*")
        holders = _pids(lines, r"    deadlock: .*, which holds-[ab] \(pid (\d+)\) holds")
        assert len(set(heads)) == len(heads) == 2, lines
        assert holders == heads[::-1], lines
        assert _pids(lines, r"mpcheck: 'holds-a' \(pid (\d+)\) did not finish: .*") == heads[:1]

        teardown = section(result, f"ERROR at teardown of test_deadlock[{method}]")
        teardown.fnmatch_lines(
            [
                f"*_ ERROR at teardown of test_deadlock[[]{method}[]] _*",
                f"mpcheck: test_deadlock.py::test_deadlock[[]{method}[]]: 1 lock problem",
                "",
                *_inversion("holds-a", "holds-b"),
            ],
            consecutive=True,
        )
        assert len(_report_of(teardown)) == 7, teardown.lines

    # The pytest process in the cycle: the test's own thread holds 'a' and waits for 'b', which
    # its child holds while it waits for 'a'. pytest-timeout ends it; the report shows the child,
    # then the pytest process with the stack of its thread that waits (not ended).
    failure = section(result, "test_with_the_test_process[fork]")
    failure.fnmatch_lines(["E       Failed: Timeout (>2.0s) from pytest-timeout."])
    failure.fnmatch_lines(
        [
            "mpcheck: test_deadlock.py::test_with_the_test_process[[]fork[]]: pytest-timeout (2s, "
            "signal method): 1 child process of the test still running; their stacks, then ended",
            "",
            *_child(
                "holds-b",
                _line("mp_spawn(hold_then_take", after="test_with_the_test_process"),
                "still running when pytest-timeout's 2s timeout (signal method) expired",
                "b",
                "a",
                "MainProcess",
            ),
            "",
            "test process * 'MainProcess': the pytest process, in the deadlock (not ended)",
            _deadlock("a", "b", "holds-b"),
            "    stack (its threads that wait for a checked lock; most recent call last):",
            "      Thread 0x* 'MainThread' (main thread), most recent call last:",
            '        File "*/test_deadlock.py", line '
            f"{_line('hold_then_take(a, b', after='test_with_the_test_process')}, "
            "in test_with_the_test_process",
            "          hold_then_take(a, b, a_held, b_held)",
            f'        File "*/test_deadlock.py", line {WAITS}, in hold_then_take',
            "          with second:  # waits",
            *WAIT_FRAME,
            "",
            ADVICE,
            "The stacks show where each child was when the time ran out.",
        ],
        consecutive=True,
    )
    lines = failure.lines
    me = _pids(lines, r"test process (\d+) 'MainProcess': .*")
    assert len(me) == 1, lines
    assert _pids(lines, r"    deadlock: .*, which MainProcess \(pid (\d+)\) holds") == me
    child = _pids(lines, r"hung process (\d+) 'holds-b': .*")
    assert _pids(lines, r"    deadlock: .*, which holds-b \(pid (\d+)\) holds") == child
    teardown = section(result, "ERROR at teardown of test_with_the_test_process[fork]")
    teardown.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_with_the_test_process[[]fork[]] _*",
            "mpcheck: test_deadlock.py::test_with_the_test_process[[]fork[]]: 1 lock problem",
            "",
            *_inversion("MainProcess", "holds-b"),
        ],
        consecutive=True,
    )
    assert len(_report_of(teardown)) == 7, teardown.lines

    # A cycle of one: the child waits for the Lock it holds itself. Its hold is the deadlock's,
    # not a lock it forgot: no "held at exit" at teardown.
    takes, again = _line("# takes it"), _line("# again")
    started = _line('name="takes-twice"')
    section(result, "test_self_deadlock[fork]").fnmatch_lines(
        [
            "*_ test_self_deadlock[[]fork[]] _*",
            "mpcheck: 'takes-twice' (pid *) did not finish: join() waited 1s (the join timeout)",
            "",
            "hung process * 'takes-twice': hung, state *, age *s",
            "    command:    *",
            f"    started at: test_deadlock.py:{started} by multiprocessing.Process.start",
            "    ended by:   SIGTERM (ended by mpcheck)",
            "    join() timed out: the child hung or is too slow",
            f"    deadlock:   holds 'again' (taken at test_deadlock.py:{takes}) and waits for "
            f"'again' (at test_deadlock.py:{again}), which it holds itself: a Lock is not "
            "re-entrant",
            "    waiting in: *",
            "    stack (most recent call last):",
            "      Thread 0x* (main thread), most recent call last:",
            f'        File "*/test_deadlock.py", line {again}, in take_twice',
            "          with lock:  # again",
            *WAIT_FRAME,
            "",
            SELF_ADVICE,
            "The join timeout is 1s (--mp-join-timeout, *",
        ],
        consecutive=True,
    )
    assert "ERROR at teardown of test_self_deadlock" not in result.stdout.str()
