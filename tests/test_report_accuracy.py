"""What a report says is what happened: several findings of one teardown read as one report, a
child the plugin ended is reaped by it, and a pool's idle workers are not called hung."""

from __future__ import annotations

import re

import pytest

from tests.conftest import FAST_ARGS

FUNC_ONLY = ("-o", "timeout_func_only=true")


def _error_section(output: str, test: str) -> str:
    """The text of the teardown error of ``test``, up to the next section or summary line."""
    found = re.search(
        rf"^_+ ERROR at teardown of {test} _+\n(.*?)"
        r"(?=^[-_=]{5,} |^mpcheck: \d+ process(es)? started by tests|\Z)",
        output,
        re.MULTILINE | re.DOTALL,
    )
    assert found is not None, f"no teardown error of {test} in:\n{output}"
    return found.group(1).rstrip("\n")


def _numbers_out(text: str) -> str:
    """``text`` with the numbers that change from run to run (pids, times, lines) made equal."""
    return re.sub(r"0x[0-9a-f]+|\d+(\.\d+)?", "N", text)


TWO_FINDINGS = """
import time


def release_unheld(lock):
    lock.release()


def fail():
    raise ValueError("the child failed")


def take(first, second):
    with first:
        with second:
            pass


def child_fails(mp_spawn):
    mp_spawn(fail, name="failing").join()


def lock_released_by_non_holder(mp_spawn, mp_locks):
    lock = mp_locks.Lock("a")
    lock.acquire()
    mp_spawn(release_unheld, args=(lock,), name="releaser").join()


def child_never_joined(mp_spawn):
    mp_spawn(time.sleep, args=(60,), name="sleeper")


def locks_in_both_orders(mp_spawn, mp_locks):
    a, b = mp_locks.Lock("a"), mp_locks.Lock("b")
    take(a, b)
    mp_spawn(take, args=(b, a), name="inverter").join()


def test_failed_alone(mp_spawn):
    child_fails(mp_spawn)


def test_release_alone(mp_spawn, mp_locks):
    lock_released_by_non_holder(mp_spawn, mp_locks)


def test_failed_and_release(mp_spawn, mp_locks):
    child_fails(mp_spawn)
    lock_released_by_non_holder(mp_spawn, mp_locks)


def test_unjoined_alone(mp_spawn):
    child_never_joined(mp_spawn)


def test_inversion_alone(mp_spawn, mp_locks):
    locks_in_both_orders(mp_spawn, mp_locks)


def test_unjoined_and_inversion(mp_spawn, mp_locks):
    locks_in_both_orders(mp_spawn, mp_locks)
    child_never_joined(mp_spawn)
"""


def test_two_fixture_findings_of_one_teardown_read_as_one_report(pytester: pytest.Pytester) -> None:
    # mp_spawn's check and the lock checker both fail one teardown: pytest would print their
    # exception group, with a traceback through the plugin. One error carries both reports,
    # each as it reads when it is alone (the same test's findings, alone, are in the same run).
    pytester.makepyfile(test_two=TWO_FINDINGS)
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=120)
    result.assert_outcomes(passed=6, errors=6)
    output = result.stdout.str()
    assert "Exception Group" not in output
    assert "ExceptionGroup" not in output
    assert "plugin.py" not in output
    result.stdout.fnmatch_lines(
        [
            # Not "BaseExceptionGroup: errors while tearing down <Function ...>".
            "ERROR test_two.py::test_failed_and_release - Failed: mpcheck: *",
            "ERROR test_two.py::test_unjoined_alone - Failed: mpcheck: *",
            "ERROR test_two.py::test_inversion_alone - Failed: mpcheck: *",
            "ERROR test_two.py::test_unjoined_and_inversion - Failed: mpcheck: *",
        ]
    )

    both = _error_section(output, "test_failed_and_release")
    assert both.splitlines() == [
        "mpcheck: test_two.py::test_failed_and_release: child process failed",
        "",
        both.splitlines()[2],  # the pid
        "Traceback (most recent call last):",
        both.splitlines()[4],  # the path of the test file
        '    raise ValueError("the child failed")',
        "ValueError: the child failed",
        "",
        "(Read p.error or p.exitcode in the test, or pass check=False to mp_spawn, to check it "
        "yourself.)",
        "",
        "mpcheck: test_two.py::test_failed_and_release: 1 lock problem",
        "",
        both.splitlines()[12],
        "  How to fix: release a lock only in the process that acquired it, ideally with `with "
        "lock:`. multiprocessing.Lock lets any process release it, silently, and its holder then "
        "runs unprotected.",
    ]
    assert re.fullmatch(
        r"'failing' \(pid \d+\) raised ValueError: the child failed", both.splitlines()[2]
    )
    assert re.fullmatch(r'  File ".*test_two\.py", line \d+, in fail', both.splitlines()[4])
    assert re.fullmatch(
        r"release of a lock not held: releaser \(pid \d+\) released lock 'a' at test_two\.py:\d+ "
        r"at \+[\d.]+s, but it did not hold it: MainProcess \(pid \d+\) held it \(acquired at "
        r"test_two\.py:\d+ at \+[\d.]+s\)",
        both.splitlines()[12],
    )
    alone = [
        _error_section(output, "test_failed_alone").replace("test_failed_alone", "T"),
        _error_section(output, "test_release_alone").replace("test_release_alone", "T"),
    ]
    assert _numbers_out(both.replace("test_failed_and_release", "T")) == _numbers_out(
        "\n\n".join(alone)
    )

    both = _error_section(output, "test_unjoined_and_inversion")
    lines = both.splitlines()
    joined = lines.index("mpcheck: test_two.py::test_unjoined_and_inversion: 1 lock problem")
    patterns = [
        r"mpcheck: test_two\.py::test_unjoined_and_inversion: 'sleeper' \(pid \d+\) still running "
        r"at teardown",
        "",
        r"hung process \d+ 'sleeper': hung, state sleeping, age [\d.]+s",
        r"    command:    \(a fork of the pytest process\) .*",
        r"    started at: test_two\.py:\d+ by multiprocessing\.Process\.start",
        r"    ended by:   SIGTERM \(ended by mpcheck\)",
        r"    still running at the end of the test: it hung, or the test never joined it",
        # time.sleep is a select() before Python 3.11: the kernel says so.
        r"    waiting in: (sleeping \(time\.sleep\)|polling file descriptors \(select/poll\)) "
        r"\[kernel: .*\]",
        r"    stack \(most recent call last\):",
    ]
    for pattern, line in zip(patterns, lines[: len(patterns)], strict=True):
        assert re.fullmatch(pattern, line), (pattern, line)
    assert lines[joined - 2].startswith("The join timeout is 30s (--mp-join-timeout, "), both
    assert lines[joined - 1 :] == [
        "",
        "mpcheck: test_two.py::test_unjoined_and_inversion: 1 lock problem",
        "",
        "lock-order inversion: locks 'a', 'b' are taken in opposite orders (a deadlock waiting "
        "to happen, whether or not this run deadlocked)",
        lines[joined + 3],
        lines[joined + 4],
        "  How to fix: take these locks in one global order everywhere. Two processes that take "
        "them in opposite orders at the same moment deadlock.",
    ]
    assert re.fullmatch(
        r"    MainProcess \(pid \d+\) took 'b' at test_two\.py:\d+ while holding 'a' \(taken at "
        r"test_two\.py:\d+\)",
        lines[joined + 3],
    )
    assert re.fullmatch(
        r"    inverter \(pid \d+\) took 'a' at test_two\.py:\d+ while holding 'b' \(taken at "
        r"test_two\.py:\d+\)",
        lines[joined + 4],
    )
    alone = [
        _error_section(output, "test_unjoined_alone").replace("test_unjoined_alone", "T"),
        _error_section(output, "test_inversion_alone").replace("test_inversion_alone", "T"),
    ]
    assert _numbers_out(both.replace("test_unjoined_and_inversion", "T")) == _numbers_out(
        "\n\n".join(alone)
    )


STUBBORN_POPEN = """
import subprocess
import sys

import pytest

# Ignores SIGTERM: the plugin kills it.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


@pytest.fixture
def child():
    process = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\\n"
    yield process
    print(f"returncode {process.returncode}")
    process.stdout.close()


def test_wait(child):
    child.wait()
"""


@pytest.mark.parametrize("method", ["signal", "thread"])
def test_a_child_ended_for_pytest_timeout_is_reaped_by_mpcheck(
    pytester: pytest.Pytester, method: str
) -> None:
    # The test waits in Popen.wait() when pytest-timeout's time is up; the plugin kills the
    # child. With the signal method the wait never resumes (pytest-timeout fails the test from
    # the handler): the plugin reaps the child itself, and its Popen knows how it ended. (The
    # thread method's wait resumes and reaps it: checked alike.)
    pytester.makepyfile(test_popen=STUBBORN_POPEN)
    timeout = {"signal": 2, "thread": 3}[method]
    result = pytester.runpytest_subprocess(
        f"--timeout={timeout}", f"--timeout-method={method}", *FUNC_ONLY, *FAST_ARGS, timeout=60
    )
    report = [
        f"mpcheck: test_popen.py::test_wait: pytest-timeout ({timeout}s, {method} method): 1 "
        "child process of the test still running; their stacks, then ended",
        "",
        "hung process * 'python*': hung, state sleeping, age *s",
        "    command:    * -c import signal, time; signal.signal(signal.SIGTERM, *",
        "    started at: test_popen.py:* by subprocess.Popen",
        "    ended by:   SIGKILL (it ignored SIGTERM; killed by mpcheck)",
        f"    still running when pytest-timeout's {timeout}s timeout ({method} method) expired",
    ]
    if method == "signal":
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            [
                "E * Failed: Timeout (>2.0s) from pytest-timeout.",
                "*- Captured mpcheck call -*",
                *report,
            ]
        )
    else:
        # The wait returned once the child was ended; the test fails at teardown for it.
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(["*+ mpcheck: before pytest-timeout ends pytest +*", *report])
    result.stdout.fnmatch_lines(
        [
            "*- Captured stdout teardown -*",
            "returncode -9",
            "mpcheck: 1 process started by tests, 0 leaked, 0 unreaped, 1 hung, 1 ended by mpcheck",
        ]
    )
    assert "unreaped process" not in result.stdout.str()


POOL_WITH_ONE_HUNG_TASK = """
import time

import pytest

BARRIER = None


def keep(barrier):
    global BARRIER
    BARRIER = barrier


def meet(_):
    BARRIER.wait(timeout=30)


def hang(_):
    time.sleep(60)


@pytest.fixture
def pool(mp_pool, mp_context):
    pool = mp_pool(3, initializer=keep, initargs=(mp_context.Barrier(3),))
    # Each of the three workers has started and run a task: all wait for the next one.
    pool.map(meet, range(3), chunksize=1)
    return pool


def test_hung_task(pool):
    pool.apply(hang, (1,))


@pytest.mark.mp_join_timeout(1)
def test_library_task_at_teardown(pool):
    pool.apply_async(time.sleep, (60,))
"""


def _blocks(text: str, first: str) -> list[list[str]]:
    """The lines of each process of a report whose first line starts with ``first``."""
    return [b.splitlines() for b in text.split("\n\n") if b.startswith(first)]


def _assert_pool_worker(block: list[str], kind: str, why: str, waiting_in: str) -> None:
    """The lines of one worker of a pool that mpcheck terminated."""
    state = {"hung": "hung", "leaked": "still running"}[kind]
    patterns = [
        rf"{kind} process \d+ 'ForkPoolWorker-\d+': {state}, state sleeping, age [\d.]+s",
        r"    command:    \(a fork of the pytest process\) .*",
        r"    started at: test_pool\.py:\d+ by multiprocessing\.Process\.start",
        r"    ended by:   terminate\(\) of its multiprocessing Pool \(called by mpcheck\)",
        re.escape(f"    {why}"),
        waiting_in,
        r"    stack \(most recent call last\):",
    ]
    for pattern, line in zip(patterns, block[: len(patterns)], strict=True):
        assert re.fullmatch(pattern, line), (pattern, "\n".join(block))


HUNG_WORKER_WAITS = (
    r"    waiting in: (sleeping \(time\.sleep\)|polling file descriptors \(select/poll\)) "
    r"\[kernel: .*\]"
)
IDLE_WORKER_WAITS = re.escape(
    "    waiting in: its pool's task queue (an idle worker, waiting for a task)"
)


@pytest.mark.parametrize("method", ["signal", "thread"])
def test_idle_workers_beside_a_hung_one_are_not_hung(
    pytester: pytest.Pytester, method: str
) -> None:
    # One worker runs a task that hangs, the two others wait for a task: only the first hung.
    pytester.makepyfile(test_pool=POOL_WITH_ONE_HUNG_TASK)
    # The thread method acts before pytest-timeout's os._exit (a quarter of the timeout, at most
    # 2s): time enough to read three stacks on a loaded machine.
    timeout = {"signal": 2, "thread": 8}[method]
    args: tuple[str, ...] = (
        f"--timeout={timeout}",
        f"--timeout-method={method}",
        *FUNC_ONLY,
        *FAST_ARGS,
    )
    if method == "thread":
        args += ("-k", "test_hung_task")  # os._exit ends the run
    result = pytester.runpytest_subprocess(*args, timeout=60)
    output = result.stdout.str()
    headline = (
        f"mpcheck: test_pool.py::test_hung_task: pytest-timeout ({timeout}s, {method} method): "
        "3 child processes of the test still running; their stacks, then ended"
    )
    assert headline in output.splitlines()
    start = output.index(headline)
    report = output[start : output.index("The stacks show where each child was", start)]
    why = f"still running when pytest-timeout's {timeout}s timeout ({method} method) expired"
    [hung] = _blocks(report, "hung process")
    _assert_pool_worker(hung, "hung", why, HUNG_WORKER_WAITS)
    assert '        File "' + str(pytester.path / "test_pool.py") + '", line 18, in hang' in hung
    assert "          time.sleep(60)" in hung
    idle = _blocks(report, "leaked process")
    assert len(idle) == 2, report
    for block in idle:
        _assert_pool_worker(block, "leaked", why, IDLE_WORKER_WAITS)
        assert "          task = get()" in block
    if method == "thread":
        return
    # The pool that mpcheck terminated is not waited for again at teardown (its task never ends).
    # test_hung_task fails for its timeout only; test_library_task_at_teardown at teardown.
    result.assert_outcomes(passed=1, failed=1, errors=1)
    assert "did not finish within the join timeout (30s)" not in output

    # A task that is a library function shows no code of the test: the idle workers still are
    # told from the busy one.
    section = _error_section(output, "test_library_task_at_teardown")
    assert section.startswith(
        "mpcheck: test_pool.py::test_library_task_at_teardown: a pool did not finish within the "
        "join timeout (1s): 1 busy worker; unfinished tasks:\n    sleep(60)\n\nhung process "
    ), section
    [busy] = _blocks(section, "hung process")
    _assert_pool_worker(
        busy,
        "hung",
        "a worker of a pool still busy after the join timeout",
        r"    waiting in: a multiprocessing pool",
    )
    assert _blocks(section, "leaked process") == []
    result.stdout.fnmatch_lines(
        ["mpcheck: 6 processes started by tests, 2 leaked, 0 unreaped, 2 hung, 4 ended by mpcheck"]
    )
