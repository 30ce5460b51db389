"""A deadlock between processes: each holds one checked lock and waits for the other's.

Two workers take the same two locks in opposite orders, and this time they really deadlock. The
hang is found by ``mp_spawn``'s join timeout; its report names the cycle (who holds which lock,
taken where, and waits for which, where, held by whom) beside each process's stack, and the fix.
Needs the lock checker (``mp_locks``). The original code runs in an inner pytest session, so that
this file passes; run ``pytest examples -rP`` to see the report.
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
    result.stdout.fnmatch_lines(
        [
            "mpcheck: 'to-bob' (pid *) did not finish: join() waited 2s (the join timeout)",
            "hung process * 'to-bob': hung, *",
            "    started at: test_transfer.py:16 by multiprocessing.Process.start",
            "*",
            "    deadlock:   holds 'alice' (taken at test_transfer.py:5) and waits for 'bob' (at "
            "test_transfer.py:8), which to-alice (pid *) holds",
            "*",
            "The processes marked 'deadlock' wait for each other's checked locks in a cycle: "
            "none can go on. How to fix: take these locks in one global order everywhere "
            "(mp_locks.assert_ordered() checks the order of a run, deadlocked or not).",
        ]
    )
