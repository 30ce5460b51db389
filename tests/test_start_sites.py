"""A start site in a library's code also names the test line that led to it.

In a project whose rootdir holds the library too (pebble's own suite: its pool starts its workers
in ``pebble/common/process.py``), the library's line alone does not say which test line to look
at. Real processes, started by a small library of the inner project: directly, and from a thread
of its own, as a pool's worker handler does.
"""

from __future__ import annotations

import pytest

from tests.conftest import FAST_ARGS

LIBRARY = """
import multiprocessing
import threading
import time


def start_worker(event):
    process = multiprocessing.get_context("fork").Process(target=event.wait, name="worker")
    process.start()  # the library's line
    return process


class Pool:
    def __init__(self, event):
        self.event = event
        self.thread = threading.Thread(target=self._manage, daemon=True)
        self.thread.start()

    def _manage(self):
        self.worker = start_worker(self.event)
"""

TESTS = """
import multiprocessing

from mylib import pool

EVENT = multiprocessing.get_context("fork").Event()


def test_direct():
    pool.start_worker(EVENT)


def test_from_a_thread_of_the_library():
    manager = pool.Pool(EVENT)
    manager.thread.join(30)
"""


def _line(text: str, marker: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if marker in line)


def test_a_library_start_site_names_the_test_line(pytester: pytest.Pytester) -> None:
    pytester.mkpydir("mylib")
    pytester.path.joinpath("mylib", "pool.py").write_text(LIBRARY)
    pytester.makepyfile(test_sites=TESTS.lstrip("\n"))
    library = _line(LIBRARY, "the library's line")
    direct = _line(TESTS.lstrip("\n"), "pool.start_worker(EVENT)")
    thread = _line(TESTS.lstrip("\n"), "pool.Pool(EVENT)")
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=60)
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_direct*",
            "leaked process * 'worker': *",
            f"    started at: mylib/pool.py:{library} by multiprocessing.Process.start",
            f"    from test:  test_sites.py:{direct}",
            "*ERROR at teardown of test_from_a_thread_of_the_library*",
            "leaked process * 'worker': *",
            f"    started at: mylib/pool.py:{library} by multiprocessing.Process.start",
            f"    from test:  test_sites.py:{thread} (which started the thread that started it)",
        ]
    )
