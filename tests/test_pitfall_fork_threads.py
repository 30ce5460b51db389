"""A fork of the pytest process while other threads run is named: which threads, started where.

The child of such a fork has only the thread that forked: a lock another thread held then stays
locked in it for ever. One ``MpCheckWarning`` per test lists every fork, the threads alive at it,
where each was started and by which test or fixture, and the fix. A warning in every mode (Python
itself only warns), none with ``--mp-check=off`` or ``mp_check("off")``; nothing else changes.
"""

from __future__ import annotations

import sys

import pytest

#: Python 3.12 and later warn of a fork with threads too (a DeprecationWarning, once per fork):
#: left out of the inner runs, so that the counts are the plugin's own on every version.
WITHOUT_PYTHONS_OWN = ("-W", "ignore:This process:DeprecationWarning")

# The target of the children lives in a module that does not import pytest: a spawned child (and
# a child of the forkserver) imports the module of its target, and pytest would cost it ~0.2s.
WORKERS = """
def work():
    pass
"""

FORK_WITH_THREADS = """
import os
import threading

import pytest

from workers import work


def fork_and_wait():
    pid = os.fork()  # the fork
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


@pytest.fixture(scope="module")
def poller():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="poller", daemon=True)
    thread.start()  # the poller
    yield
    stop.set()
    thread.join()


def test_threads_started_after_the_fork(mp_spawn):
    mp_spawn(work).join()
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    fork_and_wait()


def test_mp_spawn_with_a_thread(mp_spawn):
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="waiter")
    thread.start()  # the waiter
    for _ in range(2):
        mp_spawn(work).join()  # the forks
    stop.set()
    thread.join()


def test_os_fork_with_a_fixture_thread(poller):
    fork_and_wait()
"""


def line_of(text: str, source: str = FORK_WITH_THREADS) -> int:
    """The line of the inner file (``source``) that ends with the comment ``text``."""
    lines = source.strip("\n").splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.endswith(f"# {text}"))


FIX = (
    "  How to fix: start the processes before the threads (or join the threads before forking), "
    "or use the spawn or forkserver start method (multiprocessing.get_context('spawn'), or "
    "--mp-start-methods=spawn,forkserver for the mp_* fixtures)."
)


def headline(test: str) -> str:
    return (
        f"  *: MpCheckWarning: mpcheck: test_forks.py::{test}: forked while other threads "
        "were running. The child is a copy of this process with only the thread that forked: "
        "a lock that another thread held at that moment (of logging, of a queue, of I/O) stays "
        "locked in the child for ever, and the child deadlocks when it takes it."
    )


#: A test of the inner module marked off: its fork with a thread alive is not reported.
MARKED_OFF = """

@pytest.mark.mp_check("off")
def test_marked_off(poller):
    fork_and_wait()
"""


def run_forks(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_forks=FORK_WITH_THREADS + MARKED_OFF, workers=WORKERS)
    return pytester.runpytest_subprocess(
        *args, "-p", "no:randomly", *WITHOUT_PYTHONS_OWN, timeout=120
    )


def expected_warnings() -> list[str]:
    """The two warnings of the inner module when the fixtures run under fork, in their order."""
    return [
        headline("test_mp_spawn_with_a_thread[[]fork[]]"),
        f"    fork at test_forks.py:{line_of('the forks')} (multiprocessing.Process.start, "
        "2 times); threads alive:",
        f"      'waiter': started at test_forks.py:{line_of('the waiter')} by this test",
        FIX,
        headline("test_os_fork_with_a_fixture_thread"),
        f"    fork at test_forks.py:{line_of('the fork')} (os.fork, once); threads alive:",
        f"      'poller', daemon: started at test_forks.py:{line_of('the poller')} by "
        "module-scoped fixture 'poller'",
        FIX,
    ]


# Under fork mp_spawn forks the pytest process (a warning), under spawn and forkserver it does not;
# os.fork warns whatever the method of the fixtures. The methods share one inner run. The mode
# decides only whether the forks are reported ("off" or not, run.end_test); which start is a fork
# with threads does not depend on it: warn mode runs under fork, where both warnings are.
@pytest.mark.parametrize(
    ("mode", "methods"),
    [("fail", ("fork", "spawn", "forkserver")), ("warn", ("fork",))],
    ids=["fail-every-method", "warn-fork"],
)
def test_fork_with_threads_is_a_warning(
    pytester: pytest.Pytester, mode: str, methods: tuple[str, ...]
) -> None:
    result = run_forks(pytester, f"--mp-start-methods={','.join(methods)}", f"--mp-check={mode}")
    # 2 tests under each method, the os.fork test and the test marked off.
    result.assert_outcomes(passed=2 * len(methods) + 2, warnings=2)
    result.stdout.fnmatch_lines(expected_warnings())
    result.stdout.no_fnmatch_line("*test_threads_started_after_the_fork*")
    result.stdout.no_fnmatch_line("*test_mp_spawn_with_a_thread[[]spawn[]]*")
    result.stdout.no_fnmatch_line("*test_mp_spawn_with_a_thread[[]forkserver[]]*")
    result.stdout.no_fnmatch_line("*test_marked_off*")  # mp_check("off"): not reported


def test_no_warning_when_the_check_is_off(pytester: pytest.Pytester) -> None:
    # (A test marked mp_check("off") is checked in test_fork_with_threads_is_a_warning.)
    result = run_forks(pytester, "--mp-start-methods=fork", "--mp-check=off")
    result.assert_outcomes(passed=4)
    result.stdout.no_fnmatch_line("*MpCheckWarning*")


def test_only_an_error_filter_naming_the_plugin_escalates(pytester: pytest.Pytester) -> None:
    result = run_forks(pytester, "--mp-start-methods=fork", "-W", "error")
    result.assert_outcomes(passed=4, warnings=2)
    result.stdout.fnmatch_lines(expected_warnings())
    result = run_forks(
        pytester, "--mp-start-methods=fork", "-W", "error::pytest_mpcheck.MpCheckWarning"
    )
    # The tests passed, the warnings are errors: their text, with no traceback of the plugin's.
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(
        [
            "MpCheckWarning: mpcheck: "
            "test_forks.py::test_mp_spawn_with_a_thread[[]fork[]]: forked while other threads *",
            "MpCheckWarning: mpcheck: "
            "test_forks.py::test_os_fork_with_a_fixture_thread: forked while other threads *",
        ]
    )
    result.stdout.no_fnmatch_line("*pytest_mpcheck*.py:*")
    result.stdout.fnmatch_lines(
        [
            "ERROR test_forks.py::test_mp_spawn_with_a_thread[[]fork[]] - *",
            "ERROR test_forks.py::test_os_fork_with_a_fixture_thread - *",
        ]
    )


@pytest.mark.skipif(
    sys.version_info < (3, 12), reason="Python warns of a fork with threads from 3.12"
)
def test_pythons_own_warning_keeps_its_place(pytester: pytest.Pytester) -> None:
    # Python's DeprecationWarning names the frame that called os.fork: multiprocessing's
    # popen_fork for a Process, the test's module for os.fork. The plugin wraps os.fork: the
    # warning must still name those (in the summary, and for a filter that names the module).
    pytester.makepyfile(test_forks=FORK_WITH_THREADS + MARKED_OFF, workers=WORKERS)
    result = pytester.runpytest_subprocess(
        "--mp-start-methods=fork",
        "-p",
        "no:randomly",
        "-W",
        "always::DeprecationWarning",
        "-W",
        "ignore::DeprecationWarning:multiprocessing.popen_fork",
        timeout=120,
    )
    # Python's warnings of the two os.fork calls with the poller alive name the test module's
    # line; those of Process.start (the waiter alive) name popen_fork and are filtered out.
    # Their number is not asserted: Python counts the threads the kernel still lists, and a
    # thread just joined (test_threads_started_after_the_fork) may be one of them for a moment.
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "test_forks.py::test_os_fork_with_a_fixture_thread",
            "test_forks.py::test_marked_off",
            f"  */test_forks.py:{line_of('the fork')}: DeprecationWarning: This process *",
        ]
    )
    result.stdout.fnmatch_lines(expected_warnings())  # the plugin's own two
    # Without the plugin's care, every one of Python's warnings would name its wrapper.
    result.stdout.no_fnmatch_line("*pytest_mpcheck*")
    result.stdout.no_fnmatch_line("*popen_fork*")


BARE_THREAD_FORK = """
import _thread
import os
import time


def test_fork_with_no_python_caller():
    _thread.start_new_thread(os.fork, ())  # no Python frame calls os.fork
    deadline = time.monotonic() + 10
    pid = 0
    while not pid and time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # not forked yet
            pass
        time.sleep(0.01)
    assert pid and os.waitstatus_to_exitcode(status) == 0
"""


POOL_THREAD_FORKS = """
import multiprocessing


def square(n):
    return n * n


def test_pool_replaces_its_workers():
    context = multiprocessing.get_context("fork")
    with context.Pool(2, maxtasksperchild=1) as pool:  # the pool
        assert pool.map(square, range(4), chunksize=1) == [0, 1, 4, 9]
"""


def test_forks_that_no_user_code_calls(pytester: pytest.Pytester) -> None:
    # The wrapper of os.fork looks at its caller's frame (for the place of Python's warning, for
    # the threads alive): a thread that C code started on os.fork itself has none.
    pytester.makepyfile(test_bare=BARE_THREAD_FORK, test_pool=POOL_THREAD_FORKS)
    result = pytester.runpytest_subprocess(
        "-W",
        "error::pytest.PytestUnhandledThreadExceptionWarning",
        *WITHOUT_PYTHONS_OWN,
        timeout=60,
    )
    result.assert_outcomes(passed=2, warnings=1)
    # A pool's worker handler replaces each worker that ends, with the pool's other threads
    # alive: the warning names that thread and the line that started it (the pool's).
    pool_line = line_of("the pool", POOL_THREAD_FORKS)
    result.stdout.fnmatch_lines(
        [
            "  *: MpCheckWarning: mpcheck: test_pool.py::test_pool_replaces_its_workers: forked "
            "while other threads were running. *",
            "    fork in thread 'Thread-* (_handle_workers)', started at "
            f"test_pool.py:{pool_line} (multiprocessing.Process.start, * times); "
            "threads alive:",
            "      'MainThread' (the main thread)",
            f"      'Thread-* (_handle_tasks)', daemon: started at test_pool.py:{pool_line} "
            "by this test",
        ]
    )
    result.stdout.no_fnmatch_line("*an unknown place*")
