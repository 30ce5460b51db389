"""``--mp-report``: the path is checked when the run starts; a write that still fails at the end
is one line, and pytest's own summary and exit status are kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PASSES = "def test_nothing():\n    pass\n"

# The runs that stop at a usage error run in-process (tests/test_options.py says why); the one that
# needs a mount namespace, and the one whose summary line is checked, in a process of their own.


def usage_error(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An in-process run of a passing test with ``args``, which stops at a usage error."""
    pytester.makepyfile(PASSES)
    result = pytester.runpytest_inprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    return result


def test_report_path_is_a_directory(pytester: pytest.Pytester) -> None:
    pytester.mkdir("out")
    result = usage_error(pytester, "--mp-report=out")
    result.stderr.fnmatch_lines(
        [
            "ERROR: --mp-report: 'out' is a directory. Give the path of a JSON file in a "
            "directory that pytest can write to, such as 'out/mpcheck.json'",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_report_parent_is_a_file(pytester: pytest.Pytester) -> None:
    pytester.makefile(".txt", afile="not a directory")
    pytester.makeini("[pytest]\nmp_report = afile.txt/sub/report.json\n")
    result = usage_error(pytester)
    result.stderr.fnmatch_lines(
        [
            "ERROR: ini value mp_report: 'afile.txt/sub/report.json' cannot be created: "
            "'*/afile.txt' is not a directory. Give the path of a JSON file in a directory "
            "that pytest can write to",
        ]
    )


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs procfs")
def test_report_where_no_file_can_be_made(pytester: pytest.Pytester) -> None:
    # /proc lets root pass every permission check, and makes no file: the check makes one.
    result = usage_error(pytester, "--mp-report=/proc/mpcheck-report.json")
    result.stderr.fnmatch_lines(
        [
            "ERROR: --mp-report: '/proc/mpcheck-report.json' cannot be created: *. Give the path "
            "of a JSON file in a directory that pytest can write to",
        ]
    )


def test_report_in_a_read_only_directory(pytester: pytest.Pytester) -> None:
    # chmod does not stop root: a read-only tmpfs does, in a private mount namespace.
    pytester.mkdir("ro")
    pytester.makepyfile(PASSES)
    pytest_command = f"{sys.executable} -m pytest -p no:cacheprovider --mp-report=ro/new/r.json"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o ro mpcheck ro"],
        cwd=pytester.path,
        capture_output=True,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip("needs root and unshare -m to mount a read-only tmpfs")
    result = pytester.run(
        "unshare",
        "-m",
        "sh",
        "-c",
        f"mount -t tmpfs -o ro mpcheck ro && exec {pytest_command}",
        timeout=60,
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --mp-report: 'ro/new/r.json' cannot be created: the directory '*/ro' is "
            "not writable (to create '*/ro/new' in it). Give the path of a JSON file in a "
            "directory that pytest can write to",
        ]
    )


def test_report_that_cannot_be_written_at_the_end(pytester: pytest.Pytester) -> None:
    # The path was fine when the run started; a test then put a file where its directory was.
    pytester.makepyfile(
        """
        import shutil

        def test_breaks_the_report_path():
            shutil.rmtree("out", ignore_errors=True)
            with open("out", "w") as file:
                file.write("in the way")

        def test_fails():
            assert False
        """
    )
    # In a process of its own: in-process, pytest adds a warning that its module pytest_mpcheck
    # cannot be rewritten, and the last line a user reads would not be the one they see.
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--mp-report=out/r.json", timeout=60
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: the JSON report (--mp-report) was not written to out/r.json: "
            "out is not a directory",
            "*short test summary info*",
            "FAILED *::test_fails - assert*",
            "*= 1 failed, 1 passed in *",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
