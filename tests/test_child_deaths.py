"""A child that dies of a signal is told in its test's report: which, of which signal.

Only a report section: the outcome stays the test's own (here the tests fail because they check
the exit codes themselves). Real crashes (a NULL read through ctypes) and a real SIGKILL.
"""

from __future__ import annotations

import pytest

from pytest_mpcheck import report
from pytest_mpcheck.findings import ChildDeath
from tests.conftest import FAST_ARGS

DEATHS = """
import ctypes
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
import pytest


def crash():
    ctypes.string_at(0)  # the crash


def test_spawned_child_crashes():
    child = multiprocessing.get_context("spawn").Process(target=crash, name="crasher")
    child.start()
    child.join()
    assert child.exitcode == 0


def test_forked_child_crashes():
    child = multiprocessing.get_context("fork").Process(target=crash, name="forked")
    child.start()
    child.join()
    assert child.exitcode == 0


def test_a_worker_killed_breaks_the_executor():
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(1, mp_context=context) as executor:
        assert executor.submit(abs, -1).result() == 1
        future = executor.submit(time.sleep, 30)
        for pid in list(executor._processes):
            os.kill(pid, signal.SIGKILL)
        future.result()


def oom(value, note=""):
    if value == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
    return value


def until_replaced(pool, pid):  # by the object: a new worker may be given the same pid
    old, deadline = [w for w in pool._pool if w.pid == pid], time.monotonic() + 60
    while any(w is o for w in pool._pool for o in old) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_pool_worker_killed_hangs_the_pool():
    with multiprocessing.get_context("fork").Pool(1) as pool:
        worker = pool.apply(os.getpid)
        pending = pool.apply_async(oom, (3,), {"note": "x" * 300})
        until_replaced(pool, worker)
        pending.get(timeout=1)


def test_a_spawned_pool_worker_killed_in_a_map():
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        worker = pool.apply(os.getpid)
        pending = pool.map_async(oom, range(6), chunksize=2)
        until_replaced(pool, worker)
        pending.get(timeout=1)


def test_a_forked_executor_worker_killed():
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=context) as executor:
        executor.submit(oom, 3, "y" * 100_000).result()


def test_a_forkserver_executor_worker_killed_in_a_map():
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(1, mp_context=context) as executor:
        list(executor.map(oom, [1, 3], chunksize=2))


def test_two_children_crash():
    context = multiprocessing.get_context("forkserver")
    children = [context.Process(target=crash, name=f"crasher-{n}") for n in range(2)]
    for child in children:  # one after the other: crash reports written at once interleave
        child.start()
        child.join()
    assert [child.exitcode for child in children] == [0, 0]


def test_terminated_is_no_news():
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    child.start()
    child.terminate()
    child.join()
    assert child.exitcode == 0


def stubborn():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(30)


@pytest.mark.mp_join_timeout(1)
def test_killed_by_mpcheck_is_no_news(mp_spawn):
    # Hung: mpcheck ends it, with SIGKILL since it ignores SIGTERM; the hang report says so,
    # and no section blames its SIGKILL on kill() or the OOM killer.
    mp_spawn(stubborn).join()


def exits(code):
    os._exit(code)


def test_a_worker_exits_with_an_error():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as executor:
        executor.submit(exits, 3).result()
"""


def test_deaths_by_signal_are_told(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_deaths=DEATHS)
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=120)
    result.assert_outcomes(failed=11)
    result.stdout.fnmatch_lines(
        [
            "*_ test_spawned_child_crashes _*",
            "*- Captured mpcheck teardown -*",
            "mpcheck: test_deaths.py::test_spawned_child_crashes: child processes that died of a "
            "signal",
            "",
            "'crasher' (pid *): died of SIGSEGV: a segmentation fault (an invalid memory access, "
            "in C code or an extension)",
            "    started at: test_deaths.py:16 by multiprocessing.Process.start",
            # The crash's traceback, which the plugin had faulthandler write to the child's
            # standard error (a spawn child has none of its own), read back from the capture.
            "    traceback:  Segmentation fault, as the child wrote it to standard error:",
            "      Thread 0x* (the thread that crashed), most recent call last:",
            '        File "*test_deaths.py", line 11, in crash',
            "          ctypes.string_at(0)  # the crash",
            "*_ test_forked_child_crashes _*",
            "*- Captured mpcheck teardown -*",
            "'forked' (pid *): died of SIGSEGV: *",
            "    started at: test_deaths.py:23 by multiprocessing.Process.start",
            "    traceback:  Segmentation fault, as the child wrote it to standard error:",
            "      Thread 0x* (the thread that crashed), most recent call last:",
            '        File "*test_deaths.py", line 11, in crash',
            "*_ test_a_worker_killed_breaks_the_executor _*",
            "*BrokenProcessPool*",
            "*- Captured mpcheck teardown -*",
            "'ForkServerProcess-*' (pid *): died of SIGKILL: sent by kill(), or by the kernel's "
            "OOM killer when memory ran out",
            "    started at: test_deaths.py:31 by multiprocessing.Process.start",
            "*_ test_a_pool_worker_killed_hangs_the_pool _*",
            "E * multiprocessing.context.TimeoutError",
            "*- Captured mpcheck teardown -*",
            "'ForkPoolWorker-*' (pid *): died of SIGKILL: sent by kill(), or by the kernel's OOM "
            "killer when memory ran out",
            "    started at: test_deaths.py:51 by multiprocessing.Process.start",
            "    running:    oom(3, note='xxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxx'), defined at "
            "test_deaths.py:38",
            "    traceback:  none: SIGKILL ends a process at once, before it can write one",
            "*_ test_a_spawned_pool_worker_killed_in_a_map _*",
            "E * multiprocessing.context.TimeoutError",
            "*- Captured mpcheck teardown -*",
            "'SpawnPoolWorker-*' (pid *): died of SIGKILL: *",
            "    started at: test_deaths.py:59 by multiprocessing.Process.start",
            "    running:    oom(2), oom(3) (a chunk of a map), defined at test_deaths.py:38",
            "*_ test_a_forked_executor_worker_killed _*",
            "E *.BrokenProcessPool: *",
            "*- Captured mpcheck teardown -*",
            "'ForkProcess-*' (pid *): died of SIGKILL: *",
            "    started at: test_deaths.py:69 by multiprocessing.Process.start",
            "    running:    oom(...) (arguments not shown: the task's pickle, 100* bytes, is "
            "longer than the 64 KiB kept), defined at test_deaths.py:38",
            "*_ test_a_forkserver_executor_worker_killed_in_a_map _*",
            "E *.BrokenProcessPool: *",
            "*- Captured mpcheck teardown -*",
            "'ForkServerProcess-*' (pid *): died of SIGKILL: *",
            "    started at: test_deaths.py:75 by multiprocessing.Process.start",
            "    running:    oom(1), oom(3) (a chunk of an executor's map), defined at "
            "test_deaths.py:38",
            "*_ test_two_children_crash _*",
            "*- Captured mpcheck teardown -*",
            "'crasher-0' (pid *): died of SIGSEGV: *",
            "'crasher-1' (pid *): died of SIGSEGV: *",
            "Python tracebacks that crashed children wrote to standard error (2; a crash report "
            "does not say which process wrote it):",
            "  Segmentation fault:",
            "    Thread 0x* (the thread that crashed), most recent call last:",
            '      File "*test_deaths.py", line 11, in crash',
            "  Segmentation fault:",
            '      File "*test_deaths.py", line 11, in crash',
            "*_ test_terminated_is_no_news _*",
        ]
    )
    # A worker that exited with an error broke its executor as a signal would have.
    exits = DEATHS.lstrip("\n").splitlines().index("def exits(code):") + 1
    result.stdout.fnmatch_lines(
        [
            "*_ test_a_worker_exits_with_an_error _*",
            "E *.BrokenProcessPool: *",
            "*- Captured mpcheck teardown -*",
            "mpcheck: test_deaths.py::test_a_worker_exits_with_an_error: workers of pools or "
            "executors that exited with an error",
            "",
            "'ForkProcess-*' (pid *): exited with status 3: a worker exits with 0 when its pool "
            "or executor is done with it; this one left on its own *",
            f"    started at: test_deaths.py:{exits + 6} by multiprocessing.Process.start",
            f"    running:    exits(3), defined at test_deaths.py:{exits}",
        ]
    )
    # The captured crash reports are the children's: not one is left in the pytest process's
    # terminal output outside the tests' reports (pytest's faulthandler would write there).
    assert result.stderr.str().count("Fatal Python error") == 0
    text = result.stdout.str()
    terminated = text[
        text.index("_ test_terminated_is_no_news _") : text.index(
            "_ test_a_worker_exits_with_an_error _"
        )
    ]
    assert "Captured mpcheck teardown" not in terminated
    assert "    ended by:   SIGKILL (it ignored SIGTERM; killed by mpcheck)" in terminated


def test_where_a_crash_report_went_when_none_was_captured() -> None:
    # Pure logic: the section's line for a crash whose report is not in the capture, with
    # pytest capturing the children's standard error (fd) and without (sys, or -s).
    death = ChildDeath(
        pid=7, name="crasher", started_at="t.py:3", started_by="os.fork", owner="t.py::x", signal=11
    )
    captured = report.format_deaths("t.py::x", [death], [], captured=True)
    assert captured.splitlines()[-1] == (
        "    traceback:  none in the test's captured standard error (the child's standard error "
        "went elsewhere, or it died before Python ran)"
    )
    uncaptured = report.format_deaths("t.py::x", [death], [], captured=False)
    assert uncaptured.splitlines()[-1] == (
        "    traceback:  written to standard error (faulthandler), which pytest does not capture "
        "here: --capture=fd puts it in this report"
    )
