"""``mp_pool`` and ``mp_executor``: results, lost task errors, hung tasks, under every method."""

from __future__ import annotations

import pytest

from tests.conftest import STRICT_ARGS
from tests.sections import section

METHODS = ("fork", "spawn", "forkserver")

# The tasks live in a module of their own that does not import pytest: a worker started by spawn
# (or by the forkserver) imports the module of its task, and pytest would cost it ~0.2s.
TASKS = """
import multiprocessing
import time


def square(n):
    return n * n


def boom(n):
    raise ValueError(f"bad {n}")


def hang(n):
    open("hanging", "w").close()
    time.sleep(60)


def shout(n):
    print("item", n)
    return n


def whoami(n):
    return multiprocessing.current_process().name


def remember(value):
    global REMEMBERED
    REMEMBERED = value


def remembered(n):
    return REMEMBERED


def fail_init():
    raise RuntimeError("no database")


def fail_first_init(path):
    try:  # the first worker only: the next one finds the file
        open(path, "x").close()
    except FileExistsError:
        return
    raise RuntimeError("no database yet")


def touch(path):
    time.sleep(0.2)
    open(path, "w").close()
"""

POOLS = """
import concurrent.futures
import os
import time

import pytest

from tasks import (
    boom,
    fail_first_init,
    fail_init,
    hang,
    remember,
    remembered,
    shout,
    square,
    touch,
    whoami,
)


def wait_for_hang():
    # Until a worker runs hang (it is then in its sleep, or about to be).
    deadline = time.monotonic() + 60
    while not os.path.exists("hanging") and time.monotonic() < deadline:
        time.sleep(0.01)
    os.remove("hanging")


def test_pool(mp_pool):
    pool = mp_pool(processes=2)
    assert pool.map(square, [1, 5, 9]) == [1, 25, 81]
    assert pool.apply_async(square, (10,)).get(timeout=30) == 100
    assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]


def test_pool_initializer(mp_pool):
    pool = mp_pool(processes=1, initializer=remember, initargs=("set up",), maxtasksperchild=2)
    assert pool.map(remembered, range(3)) == ["set up"] * 3


def test_pool_error_fetched(mp_pool):
    result = mp_pool(processes=1).apply_async(boom, (1,))
    with pytest.raises(ValueError, match="bad 1"):
        result.get(timeout=30)


def test_pool_error_callback(mp_pool):
    seen = []
    mp_pool(processes=1).apply_async(boom, (2,), error_callback=seen.append).wait(30)
    assert [str(error) for error in seen] == ["bad 2"]


def test_pool_output(mp_pool, mp_output):
    pool = mp_pool(processes=1)
    assert pool.map(shout, range(3)) == [0, 1, 2]
    assert mp_output.text == "item 0\\nitem 1\\nitem 2\\n"
    assert {line.name for line in mp_output.lines} == set(pool.map(whoami, range(1)))


def test_pool_error_lost(mp_pool):
    mp_pool(processes=1).apply_async(boom, (3,)).wait(30)


@pytest.mark.mp_join_timeout(1)  # waits for the join timeout
def test_pool_hangs(mp_pool):
    pool = mp_pool(processes=2)
    pool.apply_async(hang, (1,))
    assert pool.apply(square, (3,)) == 9
    wait_for_hang()


@pytest.mark.mp_join_timeout(10)  # not waited for: ended as soon as its workers keep dying
def test_pool_initializer_raises(mp_pool):
    mp_pool(processes=2, initializer=fail_init).apply_async(square, (2,))


@pytest.mark.mp_join_timeout(20)  # not waited for: its task is lost with the worker
def test_pool_worker_exits(mp_pool):
    mp_pool(processes=2).apply_async(os._exit, (3,))


def test_pool_initializer_raised_once(mp_pool, tmp_path):
    pool = mp_pool(processes=1, initializer=fail_first_init, initargs=(str(tmp_path / "x"),))
    assert pool.apply(square, (3,)) == 9


def test_executor(mp_executor):
    executor = mp_executor(max_workers=2)
    assert list(executor.map(square, [1, 2, 3])) == [1, 4, 9]
    assert executor.submit(square, 4).result(timeout=30) == 16


def test_executor_error_fetched(mp_executor):
    future = mp_executor(max_workers=1).submit(boom, 4)
    assert isinstance(future.exception(timeout=30), ValueError)


def test_executor_error_lost(mp_executor):
    future = mp_executor(max_workers=1).submit(boom, 5)
    concurrent.futures.wait([future], timeout=30)


@pytest.fixture
def quick_teardown(tmp_path):
    # Requested before mp_executor, so torn down after it.
    ended = []
    yield ended
    took = time.monotonic() - ended[0]
    ran = len(list(tmp_path.glob("not-waited-*")))
    assert took < 5 and ran <= 3, f"teardown: {took:.1f}s; {ran} of 6 tasks ran"


# Cancelled futures never finish: the teardown waits for the workers, not for the join timeout.
@pytest.mark.mp_join_timeout(10)
def test_executor_cancelled(quick_teardown, mp_executor, tmp_path):
    not_waited = mp_executor(max_workers=1)  # made first: finished first, right after the test
    waited = mp_executor(max_workers=1)
    futures = [waited.submit(touch, str(tmp_path / f"waited-{n}")) for n in range(6)]
    waited.shutdown(wait=True, cancel_futures=True)
    assert any(future.cancelled() for future in futures)
    # At most the running task and the two in the call queue run; the others are cancelled.
    for n in range(6):
        not_waited.submit(touch, str(tmp_path / f"not-waited-{n}"))
    not_waited.shutdown(wait=False, cancel_futures=True)
    quick_teardown.append(time.monotonic())


@pytest.mark.mp_join_timeout(1)  # waits for the join timeout
def test_executor_hangs(mp_executor):
    executor = mp_executor(max_workers=2)
    executor.submit(hang, 1)
    assert executor.submit(square, 4).result(timeout=30) == 16
    wait_for_hang()
"""


def test_pools_and_executors(pytester: pytest.Pytester) -> None:
    # One inner run for the three methods: one pytest start instead of three.
    pytester.makepyfile(test_pools=POOLS, tasks=TASKS)
    result = pytester.runpytest_subprocess(
        f"--mp-start-methods={','.join(METHODS)}", *STRICT_ARGS, timeout=180
    )
    # Those that lose an error or hang pass their call, then fail at teardown.
    result.assert_outcomes(passed=15 * 3, errors=7 * 3)
    for method in METHODS:
        m = f"[[]{method}[]]"
        section(result, f"ERROR at teardown of test_pool_error_lost[{method}]").fnmatch_lines(
            [
                f"*ERROR at teardown of test_pool_error_lost{m}*",
                f"mpcheck: test_pools.py::test_pool_error_lost{m}: an error of a task was lost",
                "",
                "pool task boom(3) raised, and its result was never fetched:",
                "Traceback (most recent call last):",
                '  File "*/tasks.py", line *, in boom',
                '    raise ValueError(f"bad {n}")',
                "ValueError: bad 3",
            ]
        )
        section(result, f"ERROR at teardown of test_pool_hangs[{method}]").fnmatch_lines(
            [
                f"*ERROR at teardown of test_pool_hangs{m}*",
                f"mpcheck: test_pools.py::test_pool_hangs{m}: a pool did not finish within the "
                "join timeout (1s): 1 busy worker; unfinished tasks:",
                "    hang(1)",
                "",
                "hung process * '*PoolWorker-*': hung, state sleeping, age *s",
                "*",
                "    started at: test_pools.py:* by multiprocessing.Process.start",
                "    ended by:   *",
                "    a worker of a pool still busy after the join timeout",
                "    waiting in: sleeping (time.sleep) [[]kernel: *[]]",
                "    stack (most recent call last):",
                "      Thread 0x* (main thread), most recent call last:",
                "*",
                '        File "*/tasks.py", line *, in hang',
                "          time.sleep(60)",
            ]
        )
        # Its workers die in the initializer and the pool replaces them for ever: it is ended
        # at once, and the report says why (no busy worker, no stack).
        dying = section(result, f"ERROR at teardown of test_pool_initializer_raises[{method}]")
        dying.fnmatch_lines(
            [
                f"*ERROR at teardown of test_pool_initializer_raises{m}*",
                f"mpcheck: test_pools.py::test_pool_initializer_raises{m}: a pool's workers kept "
                "dying: its initializer raised in * workers (exit code 1); the pool started * "
                "workers in all, replacing each one that died; unfinished tasks:",
                "    square(2)",
                "",
                "the initializer's error, in the first of them (worker * '*PoolWorker-*'):",
                "Traceback (most recent call last):",
                '  File "*/tasks.py", line *, in fail_init',
                '    raise RuntimeError("no database")',
                "RuntimeError: no database",
                "",
                "A pool replaces a worker that dies without a word: the task that it ran is lost, "
                "and a pool whose workers die as they start never runs one. mpcheck terminated it.",
            ]
        )
        dying.no_fnmatch_line("*busy worker*")
        # A worker that exited in a task took the task with it: ended at once, not waited for.
        lost = section(result, f"ERROR at teardown of test_pool_worker_exits[{method}]")
        lost.fnmatch_lines(
            [
                f"*ERROR at teardown of test_pool_worker_exits{m}*",
                f"mpcheck: test_pools.py::test_pool_worker_exits{m}: a pool lost its tasks: 1 "
                "worker exited with code 3, and none of those still running runs a task; "
                "unfinished tasks:",
                "    _exit(3)",
                "",
                "A pool replaces a worker that dies without a word: the task that it ran is lost, "
                "and the pool would wait for it for ever. mpcheck terminated it. *",
            ]
        )
        lost.no_fnmatch_line("*busy worker*")
        section(
            result, f"ERROR at teardown of test_pool_initializer_raised_once[{method}]"
        ).fnmatch_lines(
            [
                f"*ERROR at teardown of test_pool_initializer_raised_once{m}*",
                f"mpcheck: test_pools.py::test_pool_initializer_raised_once{m}: an error of a "
                "pool's initializer was lost",
                "",
                "the pool's initializer raised in a worker, which the pool replaced "
                "(worker * '*PoolWorker-*'):",
                "Traceback (most recent call last):",
                '  File "*/tasks.py", line *, in fail_first_init',
                '    raise RuntimeError("no database yet")',
                "RuntimeError: no database yet",
            ]
        )
        section(result, f"ERROR at teardown of test_executor_error_lost[{method}]").fnmatch_lines(
            [
                f"*ERROR at teardown of test_executor_error_lost{m}*",
                f"mpcheck: test_pools.py::test_executor_error_lost{m}: an error of a task was lost",
                "",
                "executor task boom(5) raised, and its result was never fetched:",
                "Traceback (most recent call last):",
                '  File "*/tasks.py", line *, in boom',
                "ValueError: bad 5",
            ]
        )
        section(result, f"ERROR at teardown of test_executor_hangs[{method}]").fnmatch_lines(
            [
                f"*ERROR at teardown of test_executor_hangs{m}*",
                f"mpcheck: test_pools.py::test_executor_hangs{m}: an executor did not finish "
                "within the join timeout (1s): 1 busy worker; unfinished tasks:",
                "    hang(1)",
                "",
                "hung process * '*': hung, state sleeping, age *s",
                "*",
                "    a worker of an executor still busy after the join timeout",
                "*",
                '        File "*/tasks.py", line *, in hang',
            ]
        )
    # Only the busy worker of each is reported; the pools' workers were ended, none leaked.
    result.stdout.fnmatch_lines(["mpcheck: * 0 leaked, 0 unreaped, 6 hung, 6 ended by mpcheck"])
