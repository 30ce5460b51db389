"""Hung children and pytest-timeout: stacks reported, children ended, nothing left running."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_mpcheck._os import procfs
from tests.conftest import STRICT_ARGS, WITH_PYSPY, WITHOUT_PYSPY, InnerRun, wait_until
from tests.sections import section

# The children's target lives in a module that does not import pytest: a spawned child (and a
# child of the forkserver) imports the module of its target, and pytest would cost it ~0.2s.
# Each child writes its pid to a file, so that the outer test can check that none survived.
TARGETS = """
import os
import time


def hang(pids):
    with open(pids, "a") as out:
        out.write(f"{os.getpid()}\\n")
    time.sleep(60)
"""

HUNG = """
import multiprocessing
import os
import time

import pytest

from hung import hang

PIDS = {pids!r}


def pids_written():
    if not os.path.exists(PIDS):
        return 0
    with open(PIDS) as pids:
        return len(pids.read().split())


def wait_for_children(count):
    deadline = time.monotonic() + 30
    while pids_written() < count and time.monotonic() < deadline:
        time.sleep(0.01)


# The children start in a fixture of the test, outside pytest-timeout's time (func_only): the
# timeout is what hangs, not how long a spawned interpreter takes to start on a loaded machine.
@pytest.fixture
def children(mp_spawn, mp_start_method):
    before = pids_written()
    child = mp_spawn(hang, (PIDS,), name="stuck")
    plain = multiprocessing.get_context(mp_start_method).Process(
        target=hang, args=(PIDS,), name="plain"
    )
    plain.start()
    wait_for_children(before + 2)
    return child, plain


def test_join_of_a_hung_child(children):
    child, plain = children
    child.join(timeout=120)
    plain.join()


def test_afterwards():
    pass
"""

STUCK_TEST = """

@pytest.fixture
def stuck_child(mp_spawn):
    before = pids_written()
    mp_spawn(hang, (PIDS,), name="stuck")
    wait_for_children(before + 1)


def test_the_test_itself_is_stuck(stuck_child):
    time.sleep(60)
"""

#: pytest-timeout times the test function only: the fixtures start the children.
FUNC_ONLY = ("-o", "timeout_func_only=true")


def _pids(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()] if path.exists() else []


def _assert_all_gone(pids: list[int]) -> None:
    def alive() -> list[int]:
        return [pid for pid in pids if procfs.state(pid) not in (None, "Z")]

    wait_until(lambda: not alive(), timeout=10)
    assert not alive(), f"still running after the run: {alive()}"


@pytest.mark.parametrize(
    ("methods", "inner"),
    [
        # The start method changes how each child is prepared to answer the stack signal (the
        # fixture's and the plain one); with py-spy or without, the stacks come from the signal.
        # The methods share one inner run.
        (("fork", "spawn", "forkserver"), WITH_PYSPY),
        (("fork",), WITHOUT_PYSPY),
    ],
    ids=["every-method-with-py-spy", "fork-without-py-spy"],
    indirect=["inner"],
)
def test_timeout_signal_method(
    pytester: pytest.Pytester, methods: tuple[str, ...], inner: InnerRun
) -> None:
    pids = pytester.path / "pids"
    pytester.makepyfile(test_hung=HUNG.format(pids=str(pids)), hung=TARGETS)
    result = inner(
        f"--mp-start-methods={','.join(methods)}",
        "--timeout=2",
        "--timeout-method=signal",
        *FUNC_ONLY,
        *STRICT_ARGS,
        timeout=60 * len(methods),
    )
    result.assert_outcomes(passed=1, failed=len(methods))
    for method in methods:
        report = section(result, f"test_join_of_a_hung_child[{method}]")
        report.fnmatch_lines(
            [
                "E * Failed: Timeout (>2.0s) from pytest-timeout.",
                "*- Captured mpcheck call -*",
                f"mpcheck: test_hung.py::test_join_of_a_hung_child[[]{method}[]]: pytest-timeout "
                "(2s, signal method): 2 child processes of the test still running; their stacks, "
                "then ended",
                "",
                "hung process * 'stuck': hung, state sleeping, age *s",
                "*",
                "    started at: test_hung.py:* by multiprocessing.Process.start",
                "    ended by:   SIGTERM (ended by mpcheck)",
                "    still running when pytest-timeout's 2s timeout (signal method) expired",
                "    waiting in: sleeping (time.sleep) [[]kernel: *[]]",
                "    stack (most recent call last):",
                "      Thread 0x* (main thread), most recent call last:",
                '        File "*/hung.py", line *, in hang',
                "          time.sleep(60)",
                "",
                "hung process * 'plain': hung, state sleeping, age *s",
            ]
        )
        # Not started by a fixture, it answers the stack signal all the same, py-spy or not.
        report.fnmatch_lines(
            [
                "hung process * 'plain': hung, *",
                "*",
                "    stack (most recent call last):",
                "      Thread 0x* (main thread), most recent call last:",
                "*",
                '        File "*/hung.py", line *, in hang',
                "          time.sleep(60)",
            ]
        )
    assert len(_pids(pids)) == 2 * len(methods)
    _assert_all_gone(_pids(pids))


def test_timeout_thread_method(pytester: pytest.Pytester) -> None:
    # One start method: what is the thread method's own (mpcheck acts before pytest-timeout's
    # os._exit) does not depend on it; how each method's children give their stacks is what
    # test_timeout_signal_method checks under every method.
    method = "fork"
    pids = pytester.path / "pids"
    pytester.makepyfile(test_hung=HUNG.format(pids=str(pids)) + STUCK_TEST, hung=TARGETS)
    # 3s: mpcheck acts 0.75s before pytest-timeout's os._exit, time enough on a loaded machine.
    result = pytester.runpytest_subprocess(
        f"--mp-start-methods={method}",
        "--timeout=3",
        "--timeout-method=thread",
        *FUNC_ONLY,
        *STRICT_ARGS,
        timeout=60,
    )
    # The first test goes on once its children are ended, and fails at teardown; in the last
    # one the test itself is stuck: pytest-timeout ends pytest with os._exit, so the failures are
    # never reported, but the children's stacks were, and the children were ended.
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*+ mpcheck: before pytest-timeout ends pytest +*",
            f"mpcheck: test_hung.py::test_join_of_a_hung_child[[]{method}[]]: pytest-timeout "
            "(3s, thread method): 2 child processes of the test still running; their stacks, "
            "then ended",
            "",
            "hung process * 'stuck': hung, state sleeping, age *s",
            "*",
            '        File "*/hung.py", line *, in hang',
            "          time.sleep(60)",
            "",
            "hung process * 'plain': hung, state sleeping, age *s",
            "*",
            # Not started by a fixture: it answers the stack signal all the same, in no time.
            "    stack (most recent call last):",
            "      Thread 0x* (main thread), most recent call last:",
            "*",
            '        File "*/hung.py", line *, in hang',
            # The test went on (its join returned), failed at teardown (E); the next one passed.
            ".E.",
            "*+ mpcheck: before pytest-timeout ends pytest +*",
            f"mpcheck: test_hung.py::test_the_test_itself_is_stuck[[]{method}[]]: *",
            "*",
            '        File "*/hung.py", line *, in hang',
            "*+ Timeout +*",
        ]
    )
    assert len(_pids(pids)) == 3
    _assert_all_gone(_pids(pids))


def test_a_hung_child_waiting_for_a_lock(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_lock="""
        def take(lock):
            lock.acquire()

        def test_lock(mp_spawn, mp_context):
            lock = mp_context.Lock()
            lock.acquire()
            mp_spawn(take, (lock,), name="waiter").join()
        """
    )
    result = pytester.runpytest_subprocess("--mp-join-timeout=1", *STRICT_ARGS, timeout=60)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "hung process * 'waiter': hung, *",
            "*",
            "    waiting in: a lock or condition (futex wait) [[]kernel: *[]]",
            "    stack (most recent call last):",
            "*",
            '        File "*test_lock.py", line 2, in take',
            "          lock.acquire()",
        ]
    )
