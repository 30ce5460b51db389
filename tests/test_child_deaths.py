"""A child that dies of a signal is told in its test's report: which, of which signal.

Only a report section: the outcome stays the test's own (here the tests fail because they check
the exit codes themselves). Real crashes (a NULL read through ctypes) and a real SIGKILL.
"""

from __future__ import annotations

import pytest

from tests.conftest import FAST_ARGS

DEATHS = """
import ctypes
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor


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


def test_terminated_is_no_news():
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    child.start()
    child.terminate()
    child.join()
    assert child.exitcode == 0
"""


def test_deaths_by_signal_are_told(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_deaths=DEATHS)
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=120)
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "*_ test_spawned_child_crashes _*",
            "*- Captured mpcheck teardown -*",
            "mpcheck: test_deaths.py::test_spawned_child_crashes: child processes that died of a "
            "signal",
            "",
            "'crasher' (pid *): died of SIGSEGV: a segmentation fault (an invalid memory access, "
            "in C code or an extension)",
            "    started at: test_deaths.py:15 by multiprocessing.Process.start",
            "    traceback:  a crash's Python traceback goes to standard error where faulthandler "
            "is on (pytest turns it on in its forks; PYTHONFAULTHANDLER=1 for spawned children)",
            "*_ test_forked_child_crashes _*",
            "*- Captured mpcheck teardown -*",
            "'forked' (pid *): died of SIGSEGV: *",
            "    started at: test_deaths.py:22 by multiprocessing.Process.start",
            "    traceback:  *",
            "*_ test_a_worker_killed_breaks_the_executor _*",
            "*BrokenProcessPool*",
            "*- Captured mpcheck teardown -*",
            "'ForkServerProcess-*' (pid *): died of SIGKILL: sent by kill(), or by the kernel's "
            "OOM killer when memory ran out",
            "    started at: test_deaths.py:30 by multiprocessing.Process.start",
            "*_ test_terminated_is_no_news _*",
        ]
    )
    text = result.stdout.str()
    terminated = text[text.index("_ test_terminated_is_no_news _") :]
    assert "Captured mpcheck teardown" not in terminated
