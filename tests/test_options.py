"""Options, ini values and markers: what is accepted, and clear errors for the rest.

The inner runs that start no process run in this process (``runpytest_inprocess``): each run's
plugin state is its own (tests/test_run_state.py), and an interpreter start is most of the cost
of a run that only parses options.
"""

from __future__ import annotations

import pytest

#: What each duration accepts: the message says it, whatever was wrong.
AT_LEAST_0 = "Give a finite number of seconds greater than or equal to 0, such as 0.5"
MORE_THAN_0 = "Give a finite number of seconds greater than 0, such as 0.5"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--mp-check=maybe"],
            "ERROR: 'maybe' is not a valid mp-check mode. Valid modes: fail, warn, off",
        ),
        (
            ["--mp-settle=-1"],
            f"ERROR: --mp-settle: '-1' is negative. {AT_LEAST_0}",
        ),
        (
            ["--mp-kill-grace=abc"],
            f"ERROR: --mp-kill-grace: 'abc' is not a number of seconds. {AT_LEAST_0}",
        ),
        (
            ["--mp-join-timeout=0"],
            f"ERROR: --mp-join-timeout: '0' is not greater than 0. {MORE_THAN_0}",
        ),
        (
            ["--mp-join-timeout=inf"],
            f"ERROR: --mp-join-timeout: 'inf' is infinite. {MORE_THAN_0}",
        ),
        (
            ["--mp-start-methods=fork,threads"],
            "ERROR: --mp-start-methods: 'threads' is not a start method of this platform. "
            "Available: fork, spawn, forkserver",
        ),
    ],
)
def test_bad_option_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_inprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    result.stderr.no_fnmatch_line("*Traceback*")


def test_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmp_check = sometimes\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: ini value mp_check: 'sometimes' is not a valid mp-check mode. Valid modes: *"]
    )


@pytest.mark.skipif(
    int(pytest.__version__.split(".")[0]) < 9, reason="pytest 9 reads TOML values by their type"
)
@pytest.mark.parametrize("table", ["tool.pytest", "tool.pytest.ini_options"])
def test_toml_numbers_and_lists_are_accepted(pytester: pytest.Pytester, table: str) -> None:
    # Under pytest 9 an untyped ini value is text: a TOML number or list was a usage error in
    # its own table, and a deprecation warning (an error under -W error) in ini_options.
    pytester.makepyprojecttoml(
        f"""
        [{table}]
        mp_settle = 0.5
        mp_kill_grace = 2
        mp_join_timeout = 7
        mp_start_methods = ["fork", "spawn"]
        """
    )
    pytester.makepyfile("def test_method(mp_start_method):\n    pass\n")
    result = pytester.runpytest_inprocess("-W", "error", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: process watch fail, settle 0.5s, kill grace 2s;*",
            "*::test_method[[]fork[]] PASSED*",
            "*::test_method[[]spawn[]] PASSED*",
        ]
    )


def test_command_line_wins_over_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmp_check = off\nmp_settle = 0.1\nmp_kill_grace = 0.4\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_inprocess("--mp-check=warn")
    result.stdout.fnmatch_lines(["mpcheck: process watch warn, settle 0.1s, kill grace 0.4s;*"])


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--markers")
    result.stdout.fnmatch_lines(
        [
            '@pytest.mark.mp_check(mode): "warn" or "off" for this test only*',
            "@pytest.mark.mp_start_methods(*methods): *",
            "@pytest.mark.mp_join_timeout(seconds): *",
        ]
    )


def test_options_are_documented_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--help")
    result.stdout.fnmatch_lines(
        [
            "multiprocessing checks (pytest-mpcheck):",
            "  --mp-check=MP_CHECK*",
            "*--mp-report=PATH*",
            "*mp_ignore (linelist):*",
        ]
    )


def test_bad_marker_arguments_fail_that_test_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.mp_check("maybe")
        def test_bad_mode():
            pass

        @pytest.mark.mp_check()
        def test_no_mode():
            pass

        @pytest.mark.mp_join_timeout(-2)
        def test_bad_timeout():
            pass

        @pytest.mark.mp_check(mode="warn")
        def test_mode_by_name():
            pass

        def test_fine():
            pass
        """
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=2, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*test_bad_marker_arguments_fail_that_test_only.py::test_bad_mode: "
            "@pytest.mark.mp_check: 'maybe' is not a valid mp-check mode. Valid modes: fail, "
            "warn, off",
            "*test_no_mode: @pytest.mark.mp_check takes one mode, "
            '"fail", "warn" or "off"; got args=() kwargs={}',
            f"*test_bad_timeout: @pytest.mark.mp_join_timeout: -2 is negative. {MORE_THAN_0}",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import subprocess

        def test_leaks_unchecked():
            p = subprocess.Popen(["sleep", "0.2"])
            open("pid", "w").write(str(p.pid))
            p.wait()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:mpcheck", timeout=60)
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("mpcheck:*")
