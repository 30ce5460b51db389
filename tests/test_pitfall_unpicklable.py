"""A target, argument or initializer that cannot be pickled is named at the call, with the fix.

Under spawn and forkserver the fixtures' children get their target, arguments and a pool's
initializer by pickle; a lambda or a function defined inside the test cannot be pickled. The
error is raised at the test's line, of the type ``multiprocessing`` raises, and says which
object, where it was defined, under which start method, why and how to fix it. Under fork
nothing is pickled, and the same code runs.
"""

from __future__ import annotations

import pytest

from tests.sections import section

UNPICKLABLE = """
import functools
import threading


def work(value=None):
    return 1


def test_lambda_target(mp_spawn):
    assert mp_spawn(lambda: 1).result == 1


def test_local_function_in_args(mp_spawn):
    def helper():
        return 2

    assert mp_spawn(work, args=(functools.partial(helper),)).result == 1


def test_local_pool_initializer(mp_pool):
    def setup():
        pass

    with mp_pool(1, initializer=setup) as pool:
        assert pool.apply(work) == 1


def test_local_executor_initializer(mp_executor):
    def setup():
        pass

    with mp_executor(1, initializer=setup) as executor:
        assert executor.submit(work).result() == 1


def test_thread_lock_in_kwargs(mp_spawn):
    assert mp_spawn(work, kwargs={"value": threading.Lock()}).result == 1


def test_start_later(mp_spawn):
    process = mp_spawn(lambda: 1, start=False)
    process.start()
    process.join()
"""

WHY = (
    "E   Why: spawn and forkserver start each child afresh and send it the target, its "
    "arguments and a pool's initializer by pickling them (fork does not pickle: the child "
    "inherits them)."
)


#: Every method in one inner run (one pytest start instead of three).
ALL_METHODS = "--mp-start-methods=fork,spawn,forkserver"


def test_unpicklable_is_explained_at_the_call(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_pickle=UNPICKLABLE)
    result = pytester.runpytest_subprocess(
        ALL_METHODS, "-p", "no:randomly", "--tb=short", timeout=120
    )
    # fork: nothing is pickled, the same code runs (the 6 passed); spawn and forkserver: each of
    # the 6 fails at the call, with no teardown error (the sections below are theirs).
    result.assert_outcomes(passed=6, failed=6 * 2)
    function_why = (
        f"{WHY} A lambda, or a function or class defined inside another function, cannot be "
        "pickled: pickle stores a function as its module and name, for the child to import, "
        "and this one has no name at module level."
    )
    fix = "E   How to fix: define it at module level in test_pickle.py and pass that."
    for method in ("spawn", "forkserver"):
        sent = f"and the {method!r} start method sends it to the child by pickling it."
        expected = {
            "test_lambda_target": [
                "test_pickle.py:10: in test_lambda_target",
                "E   AttributeError: mp_spawn: the target, the lambda defined at "
                f"test_pickle.py:10, cannot be pickled, {sent}",
                function_why,
                fix,
            ],
            "test_local_function_in_args": [
                "test_pickle.py:17: in test_local_function_in_args",
                "E   AttributeError: mp_spawn: args[[]0[]] holds the function helper() defined "
                f"inside test_local_function_in_args() at test_pickle.py:14, which cannot be "
                f"pickled, {sent}",
                function_why,
                fix,
            ],
            "test_local_pool_initializer": [
                "test_pickle.py:24: in test_local_pool_initializer",
                "E   AttributeError: mp_pool: the initializer, the function setup() defined "
                f"inside test_local_pool_initializer() at test_pickle.py:21, cannot be pickled, "
                f"{sent}",
                function_why,
                fix,
            ],
            "test_local_executor_initializer": [
                "test_pickle.py:32: in test_local_executor_initializer",
                "E   AttributeError: mp_executor: the initializer, the function setup() defined "
                "inside test_local_executor_initializer() at test_pickle.py:29, cannot be "
                f"pickled, {sent}",
                function_why,
                fix,
            ],
            "test_thread_lock_in_kwargs": [
                "test_pickle.py:37: in test_thread_lock_in_kwargs",
                "E   TypeError: mp_spawn: kwargs[[]'value'[]], <unlocked _thread.lock object at "
                f"*> (lock), cannot be pickled, {sent}",
                f"{WHY} pickle says: cannot pickle '_thread.lock' object",
                "E   How to fix: pass something that can be pickled, or make the object in the "
                "child (in the target, or in a pool's initializer).",
            ],
            "test_start_later": [
                "test_pickle.py:42: in test_start_later",
                "E   AttributeError: mp_spawn: the target, the lambda defined at "
                f"test_pickle.py:41, cannot be pickled, {sent}",
            ],
        }
        for test, lines in expected.items():
            section(result, f"{test}[{method}]").fnmatch_lines(lines)
    result.stdout.no_fnmatch_line("*pytest_mpcheck*")
    result.stdout.no_fnmatch_line("*multiprocessing/*")


TASKS = """
def work(value=None):
    return 1


def fails(value):
    raise AttributeError("the task's own error")


def test_pool_map(mp_pool):
    def local(value):
        return value

    with mp_pool(1) as pool:
        pool.map(local, [1])


def test_pool_apply_async(mp_pool):
    with mp_pool(1) as pool:
        pool.apply_async(work, (lambda: 1,)).get()


def test_executor_submit(mp_executor):
    def local(value):
        return value

    with mp_executor(1) as executor:
        executor.submit(local, 1).result()


def test_own_error_is_kept(mp_pool):
    with mp_pool(1) as pool:
        pool.map(fails, [1])
"""


def test_unpicklable_task_is_explained_where_it_is_read(pytester: pytest.Pytester) -> None:
    # A task is pickled under every start method: the result's get() or result() explains it.
    pytester.makepyfile(test_tasks=TASKS)
    result = pytester.runpytest_subprocess(
        ALL_METHODS, "-p", "no:randomly", "--tb=short", timeout=120
    )
    result.assert_outcomes(failed=4 * 3)
    why = (
        "E   Why: a pool or an executor sends each task (its function and arguments) to a worker "
        "by pickling it, under every start method. A lambda, or a function or class defined "
        "inside another function, cannot be pickled: pickle stores a function as its module and "
        "name, for the child to import, and this one has no name at module level."
    )
    fix = "E   How to fix: define it at module level in test_tasks.py and pass that."
    expected = {
        "test_pool_map": [
            "test_tasks.py:14: in test_pool_map",
            "E   AttributeError: mp_pool: the task's function, the function local() defined "
            "inside test_pool_map() at test_tasks.py:10, cannot be pickled, and the pool sends "
            "it to a worker by pickling it.",
            why,
            fix,
        ],
        "test_pool_apply_async": [
            "test_tasks.py:19: in test_pool_apply_async",
            "E   AttributeError: mp_pool: args[[]0[]], the lambda defined at test_tasks.py:19, "
            "cannot be pickled, and the pool sends it to a worker by pickling it.",
            why,
            fix,
        ],
        "test_executor_submit": [
            "test_tasks.py:27: in test_executor_submit",
            "E   AttributeError: mp_executor: the task's function, the function local() defined "
            "inside test_executor_submit() at test_tasks.py:23, cannot be pickled, and the "
            "executor sends it to a worker by pickling it.",
            why,
            fix,
        ],
        "test_own_error_is_kept": [
            "*test_own_error_is_kept*",
            "E   AttributeError: the task's own error",
        ],
    }
    for method in ("fork", "spawn", "forkserver"):
        for test, lines in expected.items():
            section(result, f"{test}[{method}]").fnmatch_lines(lines)
    result.stdout.no_fnmatch_line("*pytest_mpcheck*")
