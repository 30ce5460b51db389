"""A pool broken by a dead worker, and a child that crashed.

The kernel's OOM killer ends a process with SIGKILL, at once: a ``Pool`` whose worker it killed
waits for that worker's result for ever, and a ``ProcessPoolExecutor`` is broken
(``BrokenProcessPool``). A child that crashes in C code (a segmentation fault, an abort) ends the
same way, silently. The report of the test that started them says which child died, of which
signal and what that usually means, which task a pool's worker was running, and, for a crash,
the child's Python traceback (the plugin has faulthandler write it to the child's standard
error, which pytest captures). Found in plain code, no fixture, under every start method. The
original code runs in an inner pytest session, so that this file passes; run
``pytest examples -rP`` to see the report.
"""

from __future__ import annotations

import pytest

DEAD_WORKERS = """
import ctypes
import multiprocessing
import os
import signal


def resize(image_id, size):
    if image_id == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would, on the largest image
    return image_id, size


def decode(data):
    return ctypes.string_at(0)  # a bug in an extension: a NULL pointer read


def test_resize_all():
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        result = pool.starmap_async(resize, [(n, 512) for n in range(6)], chunksize=1)
        assert len(result.get(timeout=3)) == 6  # the killed worker's result never comes


def test_decode():
    child = multiprocessing.get_context("fork").Process(target=decode, args=(b"...",))
    child.start()
    child.join()
    assert child.exitcode == 0
"""


def test_dead_workers_are_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_images=DEAD_WORKERS)
    result = pytester.runpytest_subprocess(timeout=120)
    print(result.stdout.str())
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_resize_all _*",
            "E * multiprocessing.context.TimeoutError",
            "*- Captured mpcheck teardown -*",
            "mpcheck: test_images.py::test_resize_all: child processes that died of a signal",
            "",
            "'SpawnPoolWorker-*' (pid *): died of SIGKILL: sent by kill(), or by the kernel's OOM "
            "killer when memory ran out",
            "    started at: test_images.py:18 by multiprocessing.Process.start",
            "    running:    resize(3, 512) (a chunk of a starmap), defined at test_images.py:7",
            "    traceback:  none: SIGKILL ends a process at once, before it can write one",
            "*_ test_decode _*",
            "*- Captured mpcheck teardown -*",
            "'ForkProcess-*' (pid *): died of SIGSEGV: a segmentation fault (an invalid memory "
            "access, in C code or an extension)",
            "    started at: test_images.py:25 by multiprocessing.Process.start",
            "    traceback:  Segmentation fault, as the child wrote it to standard error:",
            "      Thread 0x* (the thread that crashed), most recent call last:",
            '        File "*test_images.py", line 14, in decode',
            "          return ctypes.string_at(0)  # a bug in an extension: a NULL pointer read",
        ]
    )
