"""A deadlock between processes: each holds one checked lock and waits for the other's.

Two workers take the same two locks in opposite orders, and this time they really deadlock. The
hang is found by ``mp_spawn``'s join timeout; its report shows the whole cycle: each process
(the one joined, and the one it waits for, ended with it) with who holds which lock, taken
where, and waits for which, where, held by whom, beside its stack; then the fix. At teardown the
lock checker adds the lock-order inversion behind it. Needs the lock checker (``mp_locks``). The
original code runs in an inner pytest session, so that this file passes; run
``pytest examples -rP`` to see the report.
"""

from __future__ import annotations

import pytest

TRANSFER = """
import pytest


def transfer(source, target, ready, other_ready):
    with source:
        ready.set()
        other_ready.wait(20)
        with target:
            pass


@pytest.mark.mp_join_timeout(2)
def test_two_transfers(mp_locks, mp_spawn, mp_context):
    alice, bob = mp_locks.Lock("alice"), mp_locks.Lock("bob")
    alice_ready, bob_ready = mp_context.Event(), mp_context.Event()
    to_bob = mp_spawn(transfer, args=(alice, bob, alice_ready, bob_ready), name="to-bob")
    mp_spawn(transfer, args=(bob, alice, bob_ready, alice_ready), name="to-alice")
    to_bob.join()
"""


def test_deadlock_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_transfer=TRANSFER)
    result = pytester.runpytest_subprocess("--mp-start-methods=fork", timeout=120)
    print(result.stdout.str())
    assert result.parseoutcomes()["failed"] == 1
    # The failure: both processes of the cycle, each with its deadlock line and its stack.
    result.stdout.fnmatch_lines(
        [
            "*_ test_two_transfers[[]fork[]] _*",
            "mpcheck: 'to-bob' (pid *) did not finish: join() waited 2s (the join timeout)",
            "",
            "hung process * 'to-bob': hung, *",
            "    command:    *",
            "    started at: test_transfer.py:16 by multiprocessing.Process.start",
            "    ended by:   SIGTERM (ended by mpcheck)",
            "    join() timed out: the child hung or is too slow",
            "    deadlock:   holds 'alice' (taken at test_transfer.py:5) and waits for 'bob' (at "
            "test_transfer.py:8), which to-alice (pid *) holds",
            "    waiting in: *",
            "    stack (most recent call last):",
            "      Thread * (main thread), most recent call last:",
            '        File "*test_transfer.py", line 8, in transfer',
            "          with target:",
            '        File "*checked.py", line *, in _wait',
            "          acquired = bool(self._lock.acquire(True, timeout))",
            "",
            "hung process * 'to-alice': hung, *",
            "    command:    *",
            "    started at: test_transfer.py:17 by multiprocessing.Process.start",
            "    ended by:   SIGTERM (ended by mpcheck)",
            "    in the same deadlock: it can never finish either",
            "    deadlock:   holds 'bob' (taken at test_transfer.py:5) and waits for 'alice' (at "
            "test_transfer.py:8), which to-bob (pid *) holds",
            "    waiting in: *",
            "    stack (most recent call last):",
            "      Thread * (main thread), most recent call last:",
            '        File "*test_transfer.py", line 8, in transfer',
            "          with target:",
            '        File "*checked.py", line *, in _wait',
            "          acquired = bool(self._lock.acquire(True, timeout))",
            "",
            "The processes marked 'deadlock' wait for each other's checked locks in a cycle: "
            "none can go on. How to fix: take these locks in one global order everywhere "
            "(mp_locks.assert_ordered() checks the order of a run, deadlocked or not).",
        ],
        consecutive=True,
    )
    # The teardown: the lock-order inversion behind it, and nothing else (both processes were
    # reported and ended above: none is still running, and the locks they held are the
    # deadlock's, no lock that a process forgot).
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_two_transfers[[]fork[]] _*",
            "mpcheck: test_transfer.py::test_two_transfers[[]fork[]]: 1 lock problem",
            "",
            "lock-order inversion: locks 'alice', 'bob' are taken in opposite orders (a deadlock "
            "waiting to happen, whether or not this run deadlocked)",
            "    to-bob (pid *) waited for 'bob' at test_transfer.py:8 while holding 'alice' "
            "(taken at test_transfer.py:5)",
            "    to-alice (pid *) waited for 'alice' at test_transfer.py:8 while holding 'bob' "
            "(taken at test_transfer.py:5)",
            "  How to fix: take these locks in one global order everywhere. Two processes that "
            "take them in opposite orders at the same moment deadlock.",
            "=*= FAILURES =*=",
        ],
        consecutive=True,
    )
