"""The start-method matrix: ids, the option, the ini value, the marker, and bad input.

The inner runs that start no process run in this process (``runpytest_inprocess``): each run's
plugin state is its own (tests/test_run_state.py), and an interpreter start is most of the cost
of a run that starts no child.
"""

from __future__ import annotations

import multiprocessing

import pytest

from tests.conftest import STRICT_ARGS

FAST = (*STRICT_ARGS, "-v")

#: As :data:`FAST`, for a run in this process: pytest warns there that it cannot rewrite the
#: asserts of pytest_mpcheck, which this process imported long before (the only warning let be).
IN_PROCESS = (*FAST, "-W", "ignore::pytest.PytestAssertRewriteWarning")

# The children's target lives in a module that does not import pytest: a spawned child (and a
# child of the forkserver) imports the module of its target, and pytest would cost it ~0.2s.
DOUBLING = """
def double(n):
    return 2 * n
"""

MATRIX = """
import multiprocessing

import pytest

from doubling import double


def test_context(mp_context, mp_start_method):
    assert mp_context.get_start_method() == mp_start_method


def test_without_fixture():
    pass


@pytest.mark.mp_start_methods("spawn")
def test_marked(mp_start_method):
    assert mp_start_method == "spawn"


@pytest.mark.parametrize("x", [1, 2])
def test_parametrized(mp_context, x):
    pass


def test_every_fixture_follows(mp_spawn, mp_pool, mp_executor, mp_start_method):
    assert mp_spawn(double, (2,)).result == 4
    assert mp_pool(1)._ctx.get_start_method() == mp_start_method
    assert mp_executor(1).submit(double, 3).result(timeout=30) == 6
"""


def test_option_runs_each_test_once_per_method(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_matrix=MATRIX, doubling=DOUBLING)
    result = pytester.runpytest_subprocess(
        "--mp-start-methods=fork,spawn,forkserver", *FAST, timeout=60
    )
    result.assert_outcomes(passed=3 + 1 + 1 + 6 + 3)
    result.stdout.fnmatch_lines_random(
        [
            "test_matrix.py::test_context[[]fork[]] PASSED*",
            "test_matrix.py::test_context[[]spawn[]] PASSED*",
            "test_matrix.py::test_context[[]forkserver[]] PASSED*",
            "test_matrix.py::test_without_fixture PASSED*",
            "test_matrix.py::test_marked[[]spawn[]] PASSED*",
            "test_matrix.py::test_parametrized[[]fork-1[]] PASSED*",
            "test_matrix.py::test_parametrized[[]forkserver-2[]] PASSED*",
            "test_matrix.py::test_every_fixture_follows[[]forkserver[]] PASSED*",
        ]
    )
    result.stdout.no_fnmatch_line("*test_marked[[]fork*")


def test_ini_value(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmp_start_methods = forkserver spawn\n")
    pytester.makepyfile(test_matrix=MATRIX, doubling=DOUBLING)
    result = pytester.runpytest_inprocess(*IN_PROCESS, "-k", "context")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "test_matrix.py::test_context[[]forkserver[]] PASSED*",
            "test_matrix.py::test_context[[]spawn[]] PASSED*",
        ]
    )


def test_default_is_the_platforms_method_and_ids_unchanged(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_default=f"""
        def test_context(mp_context, mp_start_method):
            assert mp_start_method == {multiprocessing.get_start_method()!r}
            assert mp_context.get_start_method() == mp_start_method
        """
    )
    result = pytester.runpytest_inprocess(*IN_PROCESS)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_default.py::test_context PASSED*"])


AVAILABLE = ", ".join(multiprocessing.get_all_start_methods())


def test_unknown_method_in_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_matrix=MATRIX, doubling=DOUBLING)
    result = pytester.runpytest_inprocess("--mp-start-methods=fork,threads")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --mp-start-methods: 'threads' is not a start method of this platform. "
            f"Available: {AVAILABLE}"
        ]
    )


def test_unknown_method_in_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmp_start_methods = spawn, vfork\n")
    pytester.makepyfile(test_matrix=MATRIX, doubling=DOUBLING)
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: ini value mp_start_methods: --mp-start-methods: 'vfork' is not a start "
            f"method of this platform. Available: {AVAILABLE}"
        ]
    )


def test_bad_markers_fail_only_their_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_markers="""
        import pytest

        @pytest.mark.mp_start_methods("spawn", "threads")
        def test_unknown(mp_context):
            pass

        @pytest.mark.mp_start_methods(1)
        def test_not_a_name(mp_context):
            pass

        @pytest.mark.mp_start_methods()
        def test_empty(mp_spawn):
            pass

        @pytest.mark.mp_join_timeout(-1)
        def test_bad_join_timeout(mp_spawn):
            pass

        @pytest.mark.parametrize("mp_start_method", ["bogus", 3], indirect=True)
        def test_bad_parameter(mp_context):
            pass

        def test_fine(mp_context):
            pass
        """
    )
    result = pytester.runpytest_inprocess(*IN_PROCESS)
    result.assert_outcomes(passed=1, errors=6)
    result.stdout.fnmatch_lines_random(
        [
            "test_markers.py::test_bad_parameter[[]bogus[]]: parametrized mp_start_method: "
            f"'bogus' is not a start method of this platform. Available: {AVAILABLE}",
            "test_markers.py::test_bad_parameter[[]3[]]: parametrized mp_start_method: 3 is not "
            f"the name of a start method. Available: {AVAILABLE}",
            "test_markers.py::test_unknown: @pytest.mark.mp_start_methods: 'threads' "
            f"is not a start method of this platform. Available: {AVAILABLE}",
            "test_markers.py::test_not_a_name: @pytest.mark.mp_start_methods takes the "
            'names of start methods, e.g. mp_start_methods("fork", "spawn"); got args=(1,) '
            f"kwargs={{}}. Available: {AVAILABLE}",
            "test_markers.py::test_empty: @pytest.mark.mp_start_methods takes the "
            f"names of start methods, *. Available: {AVAILABLE}",
            "test_markers.py::test_bad_join_timeout: @pytest.mark.mp_join_timeout: "
            "-1 is negative. Give a finite number of seconds greater than 0, such as 0.5",
        ]
    )
    result.stdout.no_fnmatch_line("*pytest_mpcheck/*")  # no traceback through the plugin


def test_join_timeout_from_ini_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmp_join_timeout = 0.5\n")
    pytester.makepyfile(
        test_join="""
        import time

        import pytest

        def hang():
            time.sleep(60)

        def test_ini(mp_spawn):
            mp_spawn(hang).join()

        @pytest.mark.mp_join_timeout(0.7)
        def test_marker(mp_spawn):
            mp_spawn(hang).join()
        """
    )
    result = pytester.runpytest_subprocess(*FAST, timeout=60)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*mpcheck: 'Process-1' (pid *) did not finish: join() waited 0.5s (the join timeout)",
            "*mpcheck: 'Process-1' (pid *) did not finish: join() waited 0.7s (the join timeout)",
        ]
    )
