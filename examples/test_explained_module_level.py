"""Module-level ``multiprocessing`` objects in plain code under spawn: each child has its own.

A counter and its lock made at module level look shared, and are under fork. Under spawn (the
default on macOS and Windows, and forkserver on Linux from Python 3.14) each child imports the
module again and makes its own: the children's increments never reach the test. The plugin finds
it in each plain child as it starts, with no fixture, and warns with the objects, the start
method and the fix. The original code runs in an inner pytest session, so that this file passes;
run ``pytest examples -rP`` to see the report.
"""

from __future__ import annotations

import pytest

COUNTER = """
import multiprocessing

LOCK = multiprocessing.Lock()
TOTAL = multiprocessing.Value("i", 0)


def add(n):
    for _ in range(n):
        with LOCK:
            TOTAL.value += 1


def test_two_workers_count():
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=add, args=(100,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert TOTAL.value == 200
"""


def test_module_level_objects_are_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_counter=COUNTER)
    result = pytester.runpytest_subprocess(timeout=120)
    print(result.stdout.str())
    result.assert_outcomes(failed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "E       assert 0 == 200",
            "*MpCheckWarning: mpcheck: test_counter.py::test_two_workers_count: a child started "
            "by spawn or forkserver made a module-level object again, which is not shared:",
            "    children *, *: lock not shared: the module-level Lock 'LOCK' of test_counter.py "
            "is not the test's lock in this child: under the 'spawn' start method the child "
            "imported 'test_counter' again, which made a new Lock*",
            "    children *, *: Value not shared: the module-level Value 'TOTAL' of "
            "test_counter.py is not the test's Value in this child: *",
            "      How to fix: create the Value in the test and pass it to each child as an "
            "argument, e.g. Process(target=..., args=(TOTAL, ...)); for a Pool, pass it with "
            "initializer=..., initargs=(TOTAL,).",
        ]
    )
