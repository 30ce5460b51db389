"""Bad arguments to ``mp_spawn``, ``mp_pool`` and ``mp_executor`` are refused at the call.

The exception types are those of ``multiprocessing.Process``, ``multiprocessing.pool.Pool`` and
``concurrent.futures.ProcessPoolExecutor``; the message names the argument, what was given and
what is accepted, and the traceback ends at the test's line.
"""

from __future__ import annotations

import pytest

CALLS = {
    "spawn_target": "mp_spawn(42)",
    "spawn_name": "mp_spawn(work, name=123)",
    "spawn_daemon": 'mp_spawn(work, daemon="yes")',
    "spawn_args": "mp_spawn(work, args=5)",
    "spawn_kwargs": "mp_spawn(work, kwargs=[1])",
    "pool_negative": "mp_pool(processes=-1)",
    "pool_str": 'mp_pool(processes="2")',
    "pool_initializer": "mp_pool(initializer=3)",
    "pool_maxtasks": "mp_pool(maxtasksperchild=0)",
    "executor_workers": "mp_executor(max_workers=0)",
    "executor_initializer": 'mp_executor(initializer="setup")',
    "executor_initargs": "mp_executor(initargs=None)",
}

MESSAGES = [
    "TypeError: mp_spawn: target must be a callable or None; got 42 (int)",
    "TypeError: mp_spawn: name must be a str or None; got 123 (int)",
    "TypeError: mp_spawn: daemon must be True, False or None; got 'yes' (str)",
    "TypeError: mp_spawn: args must be a tuple (or other iterable) of arguments; got 5 (int)",
    "TypeError: mp_spawn: kwargs must be a dict of keyword arguments (str keys) or None; "
    "got [[]1] (list)",  # [[] is fnmatch for a literal [
    "ValueError: mp_pool: processes must be a whole number of at least 1, or None (one per "
    "CPU); got -1",
    "TypeError: mp_pool: processes must be a whole number of at least 1, or None (one per "
    "CPU); got '2' (str)",
    "TypeError: mp_pool: initializer must be a callable or None; got 3 (int)",
    "ValueError: mp_pool: maxtasksperchild must be a whole number of at least 1, or None "
    "(workers live as long as the pool); got 0",
    "ValueError: mp_executor: max_workers must be a whole number of at least 1, or None (one "
    "per CPU); got 0",
    "TypeError: mp_executor: initializer must be a callable or None; got 'setup' (str)",
    "TypeError: mp_executor: initargs must be a tuple (or other iterable) of arguments; got "
    "None (NoneType)",
]


def test_bad_arguments_are_refused_at_the_call(pytester: pytest.Pytester) -> None:
    tests = "\n".join(
        f"def test_{name}(mp_spawn, mp_pool, mp_executor):\n    {call}\n"
        for name, call in CALLS.items()
    )
    pytester.makepyfile(test_bad="def work():\n    return 1\n\n" + tests)
    # No process is started: the run is in this process, where pytest warns that it cannot
    # rewrite the asserts of pytest_mpcheck, imported long before (that warning is let be).
    result = pytester.runpytest_inprocess(
        "--tb=line", "-p", "no:randomly", "-W", "ignore::pytest.PytestAssertRewriteWarning"
    )
    result.assert_outcomes(failed=len(CALLS))  # at the call: no teardown error
    # --tb=line names the place of the error: the test's own line, not the plugin's.
    result.stdout.fnmatch_lines([f"*/test_bad.py:*: {message}" for message in MESSAGES])
    result.stdout.fnmatch_lines(["mpcheck: 0 processes started by tests, 0 leaked, *"])
    result.stdout.no_fnmatch_line("*pytest_mpcheck*")
