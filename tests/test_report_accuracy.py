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
        r"    waiting in: sleeping \(time\.sleep\) \[kernel: .*\]",
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
            "mpcheck: * started by tests, 0 leaked, 0 unreaped, 1 hung, 1 ended by mpcheck",
        ]
    )
    assert "unreaped process" not in result.stdout.str()
