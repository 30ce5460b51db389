"""What the process watch reports, on the seed article's own examples.

The article's lock example starts three processes and never joins them: under pytest-mpcheck the
test fails with a report that names each process and the line that started it, and the processes
are ended. The fixed version joins them and passes. A shared memory segment that is never
unlinked is a leak too. The buggy code runs in an inner pytest session so that this file itself
passes; run ``pytest examples -rP`` to see the reports.
"""

from __future__ import annotations

import multiprocessing

import pytest

ARTICLE_LOCK_EXAMPLE = """
from multiprocessing import Process, Lock
lck = Lock()

def func_print(item):
    lck.acquire()
    try:
        for i in range(5):
            print(item)
    finally:
        lck.release()

def test_article_lock_example():
    items = ['Hi', 'Hello', 'Bye']
    for item in items:
        p = Process(target=func_print, args=(item,))
        p.start()
"""

ARTICLE_POOL_KEPT_AT_MODULE_LEVEL = """
from multiprocessing import Pool

_pool = None

def square(n):
    return n**2

def get_pool():
    global _pool
    if _pool is None:
        _pool = Pool(processes=3)
    return _pool

def test_article_pool_example():
    print(get_pool().map(square, [1, 5, 9]))

def test_the_next_test_still_uses_it():
    assert get_pool().map(square, [2, 3]) == [4, 9]
"""


def test_the_article_lock_example_leaks_its_processes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_article=ARTICLE_LOCK_EXAMPLE)
    result = pytester.runpytest_subprocess("--mp-kill-grace=0.5", timeout=60)
    print(result.stdout.str())
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: test_article.py::test_article_lock_example left * behind*",
            "* process * 'Process-3': *",
            "    started at: test_article.py:16 by multiprocessing.Process.start",
            "How to fix: wait for every process the test starts before it ends: Process.join()*",
        ]
    )


def test_a_pool_kept_across_tests_is_blamed_on_the_first(pytester: pytest.Pytester) -> None:
    # A pool created lazily and kept in a global, never closed: its workers outlive the test
    # that created it, which fails. The pool is still held, and the next test uses it: it is
    # handed to the session, not killed under that test, and ended when the session ends.
    # (A pool that is only a local variable is terminated when it is garbage collected at the
    # end of the test, so it is no leak.)
    pytester.makepyfile(test_article=ARTICLE_POOL_KEPT_AT_MODULE_LEVEL)
    result = pytester.runpytest_subprocess("--mp-kill-grace=0.5", timeout=60)
    print(result.stdout.str())
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: test_article.py::test_article_pool_example left 3 processes behind*",
            "leaked process * 'ForkPoolWorker-1': still running*",
            "    started at: test_article.py:11 by multiprocessing.Process.start",
            "    kept running: still held by a live multiprocessing.pool.Pool, which later tests "
            "may use; handed to the session, and ended when the session ends",
            "*A process meant to outlive one test belongs in a fixture of module or session scope*",
            "mpcheck: 3 processes that tests left behind were still running at the end of the "
            "session, and ended:",
            "    process * 'ForkPoolWorker-1' of test_article.py::test_article_pool_example: "
            "terminate() of its multiprocessing Pool (called by mpcheck)",
        ]
    )


lock = multiprocessing.Lock()


def func_print(item: str, lck: multiprocessing.synchronize.Lock) -> None:
    with lck:
        for _ in range(5):
            print(item)


def test_the_article_lock_example_fixed() -> None:
    # The fix: pass the lock to the children and join them before the test ends.
    procs = [
        multiprocessing.Process(target=func_print, args=(item, lock))
        for item in ("Hi", "Hello", "Bye")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]


SHARED_MEMORY_NEVER_UNLINKED = """
from multiprocessing import Process, shared_memory

def fill(name):
    segment = shared_memory.SharedMemory(name=name)
    segment.buf[:5] = b"hello"
    segment.close()

def test_children_fill_a_segment():
    segment = shared_memory.SharedMemory(create=True, size=64)
    p = Process(target=fill, args=(segment.name,))
    p.start()
    p.join()
    assert bytes(segment.buf[:5]) == b"hello"
    segment.close()  # but never segment.unlink(): the segment outlives the test
"""


def test_a_shared_memory_segment_never_unlinked(pytester: pytest.Pytester) -> None:
    # Without the plugin the resource tracker frees it when the session ends, with a warning that
    # names no test; with it, the test that made it fails and it is freed at once.
    pytester.makepyfile(test_segment=SHARED_MEMORY_NEVER_UNLINKED)
    result = pytester.runpytest_subprocess(timeout=60)
    print(result.stdout.str())
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: test_segment.py::test_children_fill_a_segment left 1 named resource behind*",
            "leaked shared memory segment '/psm_*': never unlinked",
            "    made at:    test_segment.py:9 by the test process",
            "    freed by:   mpcheck (unlinked, and taken off the tracker's list)",
            "How to fix: Call unlink() on a SharedMemory once no process needs it any more*",
        ]
    )
