"""The seed article's first examples, as tests: two processes, their pids, names and liveness.

"Multiprocessing in Python" (PythonGeeks) starts two processes that print the even and the odd
numbers below 15, shows their pids and ``is_alive()``, and their names. Here the same code runs
under pytest with the ``mp_spawn`` fixture, which also gives back what each child printed, in the
order it was written, and checks that every child ended well.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest

from pytest_mpcheck import OutputLog, Spawner, TrackedProcess


def even(n: int) -> None:
    """Print all even numbers below ``n``."""
    for i in range(0, n, 2):
        print("even:", i)


def odd(n: int) -> None:
    """Print all odd numbers below ``n``."""
    for i in range(1, n, 2):
        print("odd:", i)


def own_pid() -> int:
    print("Id of the process:", os.getpid())
    return os.getpid()


def own_name() -> str:
    return multiprocessing.current_process().name


# The article's output shows the even block before the odd one. That order is luck: both
# processes run at once, and their lines may interleave. What is certain is each one's own output.
@pytest.mark.mp_start_methods("fork", "spawn", "forkserver")
def test_even_and_odd(mp_spawn: Spawner, mp_output: OutputLog) -> None:
    prc1 = mp_spawn(even, args=(15,))
    prc2 = mp_spawn(odd, args=(15,))
    prc1.join()
    prc2.join()

    assert prc1.output == "".join(f"even: {i}\n" for i in range(0, 15, 2))
    assert prc2.output == "".join(f"odd: {i}\n" for i in range(1, 15, 2))
    assert len(mp_output.lines) == 15
    assert sorted(mp_output.by_process()) == ["Process-1", "Process-2"]


def test_even_then_odd(mp_spawn: Spawner, mp_output: OutputLog) -> None:
    # To get the article's output for certain, wait for the first process before the second.
    mp_spawn(even, args=(15,)).join()
    mp_spawn(odd, args=(15,)).join()
    mp_output.assert_grouped()  # each process's lines form one block
    assert mp_output.text.splitlines()[7:9] == ["even: 14", "odd: 1"]


def test_pids_and_is_alive(
    mp_spawn: Spawner, mp_context: multiprocessing.context.BaseContext
) -> None:
    # An event the test sets keeps the second process alive until the test lets it go, so that
    # "process 1 has completed and 2 is continuing" is certain, not a race.
    gate = mp_context.Event()
    prc1 = mp_spawn(own_pid)
    prc2 = mp_spawn(gate.wait, args=(30,))
    assert prc1.pid != os.getpid()
    assert prc2.pid != os.getpid()
    assert prc2.is_alive()

    prc1.join()
    assert not prc1.is_alive()  # process 1 has completed
    assert prc2.is_alive()  # and 2 is continuing

    gate.set()
    prc2.join()
    assert not prc2.is_alive()
    # The child's own os.getpid() is the pid the parent sees.
    assert prc1.result == prc1.pid
    assert prc1.output == f"Id of the process: {prc1.pid}\n"


def test_default_names(mp_spawn: Spawner) -> None:
    prc1: TrackedProcess = mp_spawn(own_name)
    prc2: TrackedProcess = mp_spawn(own_name)
    # Counted per test, as in a fresh program: Process-1, Process-2.
    assert (prc1.result, prc2.result) == ("Process-1", "Process-2")
    assert (prc1.name, prc2.name) == ("Process-1", "Process-2")


def test_given_names(mp_spawn: Spawner) -> None:
    prc1 = mp_spawn(own_name, name="Funct 1")
    prc2 = mp_spawn(own_name, name="Funct 2")
    assert (prc1.result, prc2.result) == ("Funct 1", "Funct 2")
