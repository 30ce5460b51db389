"""A deadlock between processes on checked locks: the cycle, who holds what and waits for what.

Told in the report of the hang (here the join timeout of ``mp_spawn``), beside each process's
stack. Real processes that really deadlock, under every start method (how a checked lock reaches
the child differs).
"""

from __future__ import annotations

import pytest

from tests.conftest import FAST_ARGS

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
    first.join()
"""


def test_a_deadlock_on_checked_locks_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_deadlock=DEADLOCK)
    result = pytester.runpytest_subprocess(
        *FAST_ARGS, "--mp-start-methods=fork,spawn,forkserver", timeout=120
    )
    assert result.parseoutcomes()["failed"] == 3
    for method in ("fork", "spawn", "forkserver"):
        result.stdout.fnmatch_lines(
            [
                f"*_ test_deadlock[[]{method}[]] _*",
                "mpcheck: 'holds-a' (pid *) did not finish: join() waited 2s (the join timeout)",
                "hung process * 'holds-a': hung, *",
                "*",
                "    deadlock:   holds 'a' (taken at test_deadlock.py:5) and waits for 'b' (at "
                "test_deadlock.py:8), which holds-b (pid *) holds",
                "    waiting in: *",
                "    stack (most recent call last):",
                "*",
                '        File "*test_deadlock.py", line 8, in hold_then_take',
                "          with second:  # waits",
                "*",
                "The processes marked 'deadlock' wait for each other's checked locks in a cycle: "
                "none can go on. How to fix: take these locks in one global order everywhere "
                "(mp_locks.assert_ordered() checks the order of a run, deadlocked or not).",
            ]
        )
