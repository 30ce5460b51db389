"""The plugin never signals a pid that now belongs to another process."""

from __future__ import annotations

import os
import signal
import sys

import psutil
import pytest

from tests.conftest import wait_until

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"

#: Every test here asks the kernel for given pids: one at a time (see the fixture).
pytestmark = pytest.mark.usefixtures("choosing_pids")


def _can_choose_pids() -> bool:
    return sys.platform.startswith("linux") and os.access(NS_LAST_PID, os.W_OK)


@pytest.mark.skipif(not _can_choose_pids(), reason="needs a writable " + NS_LAST_PID + " (root)")
def test_reused_pid_is_not_signalled(pytester: pytest.Pytester) -> None:
    # Between finding the leak and ending it, the leaked child dies and its pid is handed to an
    # unrelated process (the kernel is asked for that pid through ns_last_pid). The plugin must
    # see that the create time changed and leave the newcomer alone.
    pytester.makeini("[pytest]\nmp_ignore = sleep 60\n")  # the newcomer is nobody's leak
    pytester.makeconftest(
        f"""
        import os, signal, subprocess

        def pytest_mpcheck_ignore_process(config, item, process):
            os.kill(process.pid, signal.SIGKILL)
            os.waitpid(process.pid, 0)
            for attempt in range(50):
                with open({NS_LAST_PID!r}, "w") as f:
                    f.write(str(process.pid - 1))
                newcomer = subprocess.Popen(["sleep", "60"], start_new_session=True)
                if newcomer.pid == process.pid:
                    open("newcomer", "w").write(str(newcomer.pid))
                    break
                newcomer.kill()
                newcomer.wait()
            return None
        """
    )
    pytester.makepyfile(
        test_reuse="""
        import subprocess

        def test_leaks():
            subprocess.Popen(["sleep", "61"])
        """
    )
    result = pytester.runpytest_subprocess("--mp-kill-grace=0.2", timeout=60)
    newcomer_file = pytester.path / "newcomer"
    if not newcomer_file.exists():
        pytest.skip("another process took the pid first 50 times in a row")
    newcomer = int(newcomer_file.read_text())
    try:
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(
            [
                f"leaked process {newcomer} 'sleep': still running*",
                "    command:    sleep 61",
                "    ended by:   not signalled: the pid now belongs to another process",
            ]
        )
        # The newcomer outlived the inner pytest: it was never signalled.
        assert psutil.Process(newcomer).cmdline() == ["sleep", "60"]
    finally:
        os.kill(newcomer, signal.SIGKILL)
        wait_until(lambda: not psutil.pid_exists(newcomer), timeout=5)


PID_USED_TWICE = f"""
import ctypes
import multiprocessing
import os
import signal
import time


def crash():
    ctypes.string_at(0)


def test_a_pid_used_twice():
    context = multiprocessing.get_context("fork")
    first = context.Process(target=crash, name="crasher")
    first.start()
    first.join()
    for attempt in range(50):  # the kernel is asked for the same pid again
        with open({NS_LAST_PID!r}, "w") as f:
            f.write(str(first.pid - 1))
        second = context.Process(target=int, name="second")
        second.start()
        second.join()
        if second.pid == first.pid:
            break
    open("reused", "w").write(str(second.pid == first.pid))
    assert first.exitcode == 0  # the test's own check fails: it is the report that is tested


def killed(n):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_s_pid_used_twice():
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as first:
        dead, worker = first.apply(os.getpid), first._pool[0]
        first.apply_async(killed, (3,))
        deadline = time.monotonic() + 30
        # Told apart by the object, not the pid: the new worker may get the same pid (this
        # suite's other tests ask the kernel for pids too).
        while any(w is worker for w in first._pool) and time.monotonic() < deadline:
            time.sleep(0.02)  # the pool reaps it and starts another
    for attempt in range(50):  # the kernel is asked for the dead worker's pid again
        with open({NS_LAST_PID!r}, "w") as f:
            f.write(str(dead - 1))
        with context.Pool(1) as second:
            if second._pool[0].pid == dead:
                # Its task note is the dead one's no more.
                assert second.apply_async(abs, (-5,)).get(timeout=30) == 5
                break
    open("reused-worker", "w").write(str(second._pool[0].pid == dead))
    assert not "the report is tested"


def put_then_die(queue):
    queue.put("first")
    time.sleep(0.3)  # the feeder thread has written it
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_feeder_s_pid_used_twice():
    context = multiprocessing.get_context("fork")
    killed_feeder_queue = context.Queue()
    later_feeder_queue = context.Queue()
    first = context.Process(target=put_then_die, args=(killed_feeder_queue,), name="killed")
    first.start()
    assert killed_feeder_queue.get(timeout=30) == "first"
    first.join()
    for attempt in range(50):  # the kernel is asked for the killed feeder's pid again
        with open({NS_LAST_PID!r}, "w") as f:
            f.write(str(first.pid - 1))
        second = context.Process(target=later_feeder_queue.put, args=("later",), name="later")
        second.start()
        assert later_feeder_queue.get(timeout=30) == "later"
        second.join()
        if second.pid == first.pid:
            break
    open("reused-feeder", "w").write(str(second.pid == first.pid))
"""


@pytest.mark.skipif(not _can_choose_pids(), reason="needs a writable " + NS_LAST_PID + " (root)")
def test_an_end_is_told_when_the_pid_was_handed_again_within_the_test(
    pytester: pytest.Pytester,
) -> None:
    # A child crashes and is reaped; a later child of the same test gets its pid (pid_max is
    # 32768 on many machines: a busy one goes through all pids in minutes). The first child's
    # start record must not be lost to the second's: its death is still told.
    # The same for a pool's worker: the task it was running when it died is told, not that of
    # the later worker that got its pid (their task notes were once named by pid alone).
    # And for a queue's feeder: the queue that a later child given the pid fed (and left
    # sound) is not taken for one that the killed child fed (the feeder log named pids alone).
    pytester.makepyfile(test_twice=PID_USED_TWICE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(failed=2, passed=1)
    if (pytester.path / "reused").read_text() != "True":
        pytest.skip("another process took the pid first 50 times in a row")
    result.stdout.fnmatch_lines(
        [
            "*- Captured mpcheck teardown -*",
            "mpcheck: test_twice.py::test_a_pid_used_twice: child processes that died of a signal",
            "",
            "'crasher' (pid *): died of SIGSEGV: *",
        ]
    )
    if (pytester.path / "reused-worker").read_text() != "True":
        pytest.skip("another process took the worker's pid first 50 times in a row")
    result.stdout.fnmatch_lines(
        [
            "mpcheck: test_twice.py::test_a_worker_s_pid_used_twice: child processes that died "
            "of a signal",
            "",
            "'ForkPoolWorker-*' (pid *): died of SIGKILL: *",
            "    started at: test_twice.py:* by multiprocessing.Process.start",
            "    running:    killed(3), defined at test_twice.py:*",
        ]
    )
    if (pytester.path / "reused-feeder").read_text() != "True":
        pytest.skip("another process took the feeder's pid first 50 times in a row")
    result.stdout.fnmatch_lines(
        [
            "*MpCheckWarning: mpcheck: test_twice.py::test_a_feeder_s_pid_used_twice: a "
            "multiprocessing queue can no longer be trusted: *",
            "  Queue 'killed_feeder_queue' made at test_twice.py:*: 'killed' (pid *) put to it, "
            "then was ended by SIGKILL *",
        ]
    )
    result.stdout.no_fnmatch_line("*later_feeder_queue*")


#: A child crashes and is reaped; a second child asks the kernel for its pid for a child of its
#: own (which the plugin never noted), and says whether it got it.
GRANDCHILD_HELPERS = f"""
import ctypes
import multiprocessing
import os
import time


def crash():
    ctypes.string_at(0)


def parent_of_newcomer(wanted, said):
    # Asks the kernel for the crasher's pid for a child of its own, which the plugin never noted.
    for attempt in range(50):
        with open({NS_LAST_PID!r}, "w") as f:
            f.write(str(wanted - 1))
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        if pid == wanted:
            break
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    said.put(pid == wanted)
    time.sleep(60)


def hand_the_crasher_s_pid_to_a_grandchild(daemon=False):
    context = multiprocessing.get_context("fork")
    first = context.Process(target=crash, name="crasher")
    first.start()
    first.join()
    said = context.Queue()
    second = context.Process(
        target=parent_of_newcomer, args=(first.pid, said), name="second", daemon=daemon
    )
    second.start()
    open("reused", "w").write(str(first.pid) if said.get(timeout=30) else "")
"""

PID_TO_A_GRANDCHILD = (
    GRANDCHILD_HELPERS
    + """

def test_a_pid_handed_to_a_grandchild():
    hand_the_crasher_s_pid_to_a_grandchild()
"""
)


@pytest.mark.skipif(not _can_choose_pids(), reason="needs a writable " + NS_LAST_PID + " (root)")
def test_a_pid_handed_to_a_grandchild_is_not_taken_for_the_child_it_named(
    pytester: pytest.Pytester,
) -> None:
    # A child crashes and is reaped; its pid goes to a grandchild, which the plugin did not note
    # (a child's own fork). The crasher's start record must not be taken for the grandchild's:
    # the crasher's death is told, and the grandchild is reported as what it is.
    pytester.makepyfile(test_grandchild=PID_TO_A_GRANDCHILD)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mp-kill-grace=0.5", timeout=90
    )
    pid = (pytester.path / "reused").read_text()
    if not pid:
        pytest.skip("another process took the pid first 50 times in a row")
    result.assert_outcomes(passed=1, errors=1)
    crasher_line = PID_TO_A_GRANDCHILD.lstrip("\n").splitlines().index("    first.start()") + 1
    # Leftovers are listed by pid, and pids wrap around: one block at a time.
    result.stdout.fnmatch_lines(
        [
            f"leaked process {pid} 'python*': still running*",
            "    command:    (a fork of the pytest process) *",
            "    started by: a child process (parent pid *), not by the test process",
        ]
    )
    result.stdout.fnmatch_lines(["leaked process * 'second': still running*"])
    result.stdout.fnmatch_lines(
        [
            "*- Captured mpcheck teardown -*",
            "mpcheck: test_grandchild.py::test_a_pid_handed_to_a_grandchild: child processes that"
            " died of a signal",
            "",
            f"'crasher' (pid {pid}): died of SIGSEGV: *",
            f"    started at: test_grandchild.py:{crasher_line} by multiprocessing.Process.start",
        ]
    )
    result.stdout.no_fnmatch_line(f"leaked process {pid} 'crasher'*")


@pytest.mark.skipif(not _can_choose_pids(), reason="needs a writable " + NS_LAST_PID + " (root)")
def test_a_pid_handed_to_a_grandchild_before_a_timeout_is_not_taken_for_the_child(
    pytester: pytest.Pytester,
) -> None:
    # As above, then the test hangs until pytest-timeout ends it: the children that mpcheck
    # reports and ends for the timeout are read with the same care, so the grandchild that has
    # the crasher's pid is not named after the crasher.
    hangs = PID_TO_A_GRANDCHILD + "    time.sleep(60)\n"
    pytester.makepyfile(test_grandchild=hangs)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--mp-kill-grace=0.5",
        "--timeout=8",
        "--timeout-method=signal",
        timeout=90,
    )
    pid = (pytester.path / "reused").read_text()
    if not pid:
        pytest.skip("another process took the pid first 50 times in a row")
    result.stdout.fnmatch_lines(
        [
            "mpcheck: test_grandchild.py::test_a_pid_handed_to_a_grandchild: pytest-timeout "
            "(8s, signal method): * child processes of the test still running; their stacks, "
            "then ended",
        ]
    )
    result.stdout.fnmatch_lines([f"hung process {pid} 'python*': hung, *"])
    result.stdout.no_fnmatch_line(f"hung process {pid} 'crasher'*")


#: The same hand-over, made after the last test's look: a hook that runs before the plugin's at the
#: end of the session. Only the session's own look then sees the grandchild.
PID_TO_A_GRANDCHILD_AT_SESSION_END = (
    GRANDCHILD_HELPERS
    + """

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    # Daemonic: a hook's non-daemonic child is left to the hook's own code until Python exits
    # (test_do_no_harm's server); a daemonic one is ended at the session's end.
    hand_the_crasher_s_pid_to_a_grandchild(daemon=True)
"""
)


@pytest.mark.skipif(not _can_choose_pids(), reason="needs a writable " + NS_LAST_PID + " (root)")
def test_a_pid_handed_to_a_grandchild_before_the_session_ends_is_not_taken_for_the_child(
    pytester: pytest.Pytester,
) -> None:
    # As above, once the tests are over: what the session's end reports and ends is read with
    # the same care, so the grandchild that has the crasher's pid is not named after it.
    pytester.makeconftest(PID_TO_A_GRANDCHILD_AT_SESSION_END)
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mp-kill-grace=0.5", timeout=90
    )
    pid = (pytester.path / "reused").read_text()
    if not pid:
        pytest.skip("another process took the pid first 50 times in a row")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*2 processes still running at the end of the session, that no test or fixture was "
            "blamed for:",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"leaked process {pid} 'python*': still running*",
            "    command:    (a fork of the pytest process) *",
            "    started by: a child process (parent pid *), not by the test process",
        ]
    )
    result.stdout.fnmatch_lines(["leaked process * 'second': still running*"])
    result.stdout.no_fnmatch_line(f"*process {pid} 'crasher'*")
