"""The seed article's lock example, done right, under fork, spawn and forkserver.

The article makes ``lck = Lock()`` at module level and lets each child use it. Under spawn and
forkserver every child imports the module again and gets a lock of its own, so nothing is locked
(see ``test_seed_lock_module_level.py`` for the checker's report). Here the test makes the lock and
passes it to each child, as the ``multiprocessing`` guidelines say; ``mp_locks`` makes it a checked
lock, and ``mp_output.assert_atomic`` proves, from the times of the writes and of the holds, that
each child's five lines were written as one block while it held the lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # for the annotations only: each spawn and forkserver child imports this module
    from pytest_mpcheck import LockChecker, OutputLog


def func_print(lck: Any, item: str) -> None:
    """The article's function, with the lock as an argument instead of a module global."""
    lck.acquire()
    try:
        for _ in range(5):
            print(item)
    finally:
        lck.release()


@pytest.mark.mp_start_methods("fork", "spawn", "forkserver")
def test_seed_lock_passed_to_children(
    mp_locks: LockChecker, mp_spawn: Any, mp_output: OutputLog
) -> None:
    lck = mp_locks.Lock("print")
    items = ["Hi", "Hello", "Bye"]
    processes = [mp_spawn(func_print, args=(lck, item), name=item) for item in items]
    for process in processes:
        process.join()
    mp_output.assert_atomic(lck)
    mp_locks.assert_exclusive("print")
    assert sorted(line.text for line in mp_output.lines) == sorted(items * 5)
    assert mp_locks.stats("print").acquisitions == 3
