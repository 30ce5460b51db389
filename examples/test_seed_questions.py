"""The two questions from the seed article's comments, answered as tests.

1. "Only thing missing is approach to kill a process from main program."
2. "Also will the is_alive() detect if the process just hangs?"
"""

from __future__ import annotations

import multiprocessing.context
import multiprocessing.synchronize
import signal
import time
from collections.abc import Callable

from pytest_mpcheck import Spawner


def forever() -> None:
    while True:
        time.sleep(0.01)


def ignores_sigterm(ready: multiprocessing.synchronize.Event) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    forever()


def working() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sum(range(10_000))  # busy: computing


def hangs_on(lock: multiprocessing.synchronize.Lock) -> None:
    lock.acquire()  # hung: the lock is never released while it waits


def wait_until(condition: Callable[[], object], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


def test_end_a_process_from_the_main_program(mp_spawn: Spawner) -> None:
    prc = mp_spawn(forever)
    # terminate() sends SIGTERM; join() then waits for the end and reaps the process.
    prc.terminate()
    prc.join()
    assert not prc.is_alive()
    # A negative exit code is the signal that ended it. Reading exitcode tells mp_spawn that the
    # test has checked it: the non-zero code does not fail the test.
    assert prc.exitcode == -signal.SIGTERM


def test_kill_when_terminate_is_ignored(
    mp_spawn: Spawner, mp_context: multiprocessing.context.BaseContext
) -> None:
    ready = mp_context.Event()
    prc = mp_spawn(ignores_sigterm, args=(ready,))
    assert ready.wait(30)  # it ignores SIGTERM from now on
    prc.terminate()
    prc.join(timeout=0.5)
    assert prc.is_alive()  # SIGTERM was ignored
    prc.kill()  # SIGKILL cannot be ignored
    prc.join()
    assert prc.exitcode == -signal.SIGKILL


def test_is_alive_cannot_tell_hung_from_working(
    mp_spawn: Spawner, mp_context: multiprocessing.context.BaseContext
) -> None:
    lock = mp_context.Lock()
    lock.acquire()
    busy = mp_spawn(working, name="working")
    stuck = mp_spawn(hangs_on, args=(lock,), name="hung")
    wait_until(lambda: "lock" in (stuck.waiting_in() or ""))

    # The answer to the question: no. Both are alive; is_alive() says nothing more.
    assert busy.is_alive()
    assert stuck.is_alive()

    # What the plugin tells instead: where each one is, and what it waits in.
    wait_until(lambda: "in working" in (busy.stack() or ""))
    busy_stack, stuck_stack = busy.stack(), stuck.stack()
    assert busy_stack is not None
    assert "in working" in busy_stack
    assert stuck_stack is not None
    assert "lock.acquire()" in stuck_stack
    assert busy.waiting_in() is None  # running, on a CPU
    assert "lock" in (stuck.waiting_in() or "")  # blocked on a lock (a futex in the kernel)

    # Had the test not let it go, the hung one would fail the test at teardown with this same
    # stack, and be ended. Let both finish.
    busy.terminate()
    lock.release()
    stuck.join()
    busy.join()
    assert stuck.exitcode == 0
    assert busy.exitcode == -signal.SIGTERM
