"""The seed article's lock example in its original form: a module-level ``Lock()``.

Under fork the children inherit the parent's lock, and it works. Under spawn and forkserver each
child imports the module again, which makes a new lock in every child: the three children lock
three different semaphores and exclude nobody. That the output came out in blocks was luck.
The lock checker finds it in every such child, before the target runs, whatever the timing, and
says how to fix it. The original code runs in an inner pytest session, so that this file passes;
run ``pytest examples -rP`` to see the report.
"""

from __future__ import annotations

import pytest

# No pytest import, nor a marker: the start methods are given on the command line. Each child
# under spawn and forkserver imports this module again, and pytest would cost each a tenth of a
# second or more.
ARTICLE_LOCK_EXAMPLE = """
from multiprocessing import Lock

lck = Lock()


def func_print(item):
    lck.acquire()
    try:
        for i in range(5):
            print(item)
    finally:
        lck.release()


def test_article_lock_example(mp_spawn):
    items = ['Hi', 'Hello', 'Bye']
    processes = [mp_spawn(func_print, args=(item,), name=item) for item in items]
    for p in processes:
        p.join()
"""


def test_module_level_lock_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_article=ARTICLE_LOCK_EXAMPLE)
    result = pytester.runpytest_subprocess("--mp-start-methods=fork,spawn,forkserver", timeout=120)
    print(result.stdout.str())
    # fork: the lock is inherited, and shared; spawn and forkserver: one lock per child.
    result.assert_outcomes(passed=3, errors=2)
    for method in ("spawn", "forkserver"):
        result.stdout.fnmatch_lines(
            [
                f"*ERROR at teardown of test_article_lock_example[[]{method}[]]*",
                "'Hi' (pid *):",
                "    lock not shared: the module-level Lock 'lck' of test_article.py is not the "
                f"test's lock in this child: under the '{method}' start method the child "
                "imported 'test_article' again, which made a new Lock*",
                "    How to fix: create the lock in the test and pass it to each child as an "
                "argument, e.g. mp_spawn(target, args=(lck, ...)) (or mp_locks.Lock('lck') to "
                "have it checked); for a Pool, pass it with initializer=..., initargs=(lck,).",
            ]
        )
    result.stdout.no_fnmatch_line("*test_article_lock_example[[]fork[]]*")
