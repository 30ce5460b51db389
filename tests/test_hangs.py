"""Hung children and pytest-timeout: stacks reported, children ended, nothing left running."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from pytest_mpcheck._os import procfs
from tests.conftest import (
    STRICT_ARGS,
    WITH_PYSPY,
    WITHOUT_PYSPY,
    InnerRun,
    process_gone,
    wait_until,
)
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


def note_pid(pids, pid=None):
    import psutil  # the create time: a survivor is killed only if it is still that process

    pid = pid or os.getpid()
    with open(pids, "a") as out:
        out.write(f"{pid} {psutil.Process(pid).create_time()!r}\\n")
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


def test_the_test_itself_is_stuck(stuck_child, server, pool, executor, session_pids):
    # The first test's timeout ended that test's children only: the session's still serve.
    assert server.poll() is None
    assert pool.apply(os.getpid) in session_pids()
    assert executor.submit(os.getpid).result() in session_pids()
    time.sleep(60)
"""

# The processes of wider-scoped fixtures, which pytest-timeout's os._exit would orphan: a server
# (a program of its own), a Pool's workers (forked) and an executor's (spawned), each noting its
# pid and create time. Autouse: they run through the first test's timeout too.
SHARED_FIXTURES = """
import multiprocessing
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from hung import note_pid

SESSION_PIDS = {session_pids!r}


def noted():
    if not os.path.exists(SESSION_PIDS):
        return []
    with open(SESSION_PIDS) as pids:
        return [int(line.split()[0]) for line in pids.read().splitlines()]


@pytest.fixture
def session_pids():
    return noted


@pytest.fixture(scope="session", autouse=True)
def server():
    server = subprocess.Popen(["sleep", "60"])
    note_pid(SESSION_PIDS, server.pid)
    yield server
    server.terminate()
    server.wait()


@pytest.fixture(scope="session", autouse=True)
def pool(server):
    # Forked before the executor's threads run: no fork with threads (which warns).
    context = multiprocessing.get_context("fork")
    with context.Pool(2, initializer=note_pid, initargs=(SESSION_PIDS,)) as pool:
        yield pool


@pytest.fixture(scope="module", autouse=True)
def executor(pool):
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, context, note_pid, (SESSION_PIDS,)) as executor:
        # It starts its workers on demand: two tasks at once start both.
        executor.submit(time.sleep, 0.2)
        executor.submit(time.sleep, 0.2)
        deadline = time.monotonic() + 30
        while len(noted()) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        yield executor
"""

#: pytest-timeout times the test function only: the fixtures start the children.
FUNC_ONLY = ("-o", "timeout_func_only=true")


def _pids(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()] if path.exists() else []


def _created(path: Path) -> list[tuple[int, float]]:
    """``(pid, create time)`` of each process that noted itself in ``path``."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(pid), float(created)) for pid, created in (line.split() for line in lines)]


def _kill_survivors(processes: list[tuple[int, float]]) -> None:
    """End what a failed run left: only the very processes that noted themselves."""
    import psutil

    for pid, created in processes:
        if not process_gone(pid, created):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


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
    # test_timeout_signal_method checks under every method. Spawn: under fork, the tests' forks
    # would run beside the threads of the session's pool (a warning).
    method = "spawn"
    pids = pytester.path / "pids"
    session_pids = pytester.path / "session-pids"
    pytester.makepyfile(
        test_hung=HUNG.format(pids=str(pids)) + STUCK_TEST,
        hung=TARGETS,
        conftest=SHARED_FIXTURES.format(session_pids=str(session_pids)),
    )
    # 3s: mpcheck acts 0.75s before pytest-timeout's os._exit, time enough on a loaded machine.
    try:
        result = pytester.runpytest_subprocess(
            f"--mp-start-methods={method}",
            "--timeout=3",
            "--timeout-method=thread",
            *FUNC_ONLY,
            *STRICT_ARGS,
            timeout=60,
        )
        shared = _created(session_pids)

        def survivors() -> list[int]:
            return [pid for pid, created in shared if not process_gone(pid, created)]

        # Before pytest-timeout's os._exit, every process of the session was ended: none
        # outlives pytest (as orphans, a pool's workers wait for tasks for ever).
        assert len(shared) == 5
        wait_until(lambda: not survivors(), timeout=10)
        assert not survivors(), f"still running after the run: {survivors()}"
    finally:
        _kill_survivors(_created(session_pids))
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
            # Then, as os._exit is certain, the processes of the wider-scoped fixtures, which
            # the first test's timeout left alone (the test went on, and so did the session).
            "*+ mpcheck: before pytest-timeout ends pytest +*",
            "mpcheck: pytest-timeout (3s, thread method) ends pytest with os._exit: 5 processes "
            "of the session still running, ended so that none outlives pytest:",
            "    process * 'sleep' of session-scoped fixture 'server', started at conftest.py:* "
            "by subprocess.Popen: SIGTERM (ended by mpcheck)",
            "    process * 'ForkPoolWorker-?' of session-scoped fixture 'pool', started at "
            "conftest.py:* by multiprocessing.Process.start: SIGTERM (ended by mpcheck)",
            "    process * 'ForkPoolWorker-?' of session-scoped fixture 'pool', *",
            "    process * 'SpawnProcess-*' of module-scoped fixture 'executor', started at "
            "conftest.py:* by multiprocessing.Process.start: SIGTERM (ended by mpcheck)",
            "    process * 'SpawnProcess-*' of module-scoped fixture 'executor', *",
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
