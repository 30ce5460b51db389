"""Warn mode observes: a blanket ``filterwarnings = error`` does not turn its warnings into errors.

Only a filter that names the plugin's category (``error::pytest_mpcheck.MpCheckWarning``)
escalates them, as the README says.
"""

from __future__ import annotations

import pytest

from tests.conftest import FAST_ARGS

LEAKS = """
import subprocess


KEPT = []  # no ResourceWarning of subprocess: the test's only fault is the leak

def test_leaks():
    KEPT.append(subprocess.Popen(["sleep", "60"]))
"""


@pytest.mark.parametrize(
    "blanket",
    [
        pytest.param(("-o", "filterwarnings=error"), id="ini"),
        pytest.param(("-W", "error::pytest.PytestWarning"), id="pytest-warnings"),
    ],
)
def test_blanket_error_filter_keeps_the_outcome(
    pytester: pytest.Pytester, blanket: tuple[str, str]
) -> None:
    pytester.makepyfile(test_warn=LEAKS)
    result = pytester.runpytest_subprocess(*FAST_ARGS, *blanket, "--mp-check=warn", timeout=60)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*= warnings summary =*",
            "test_warn.py:*",
            "*MpCheckWarning: mpcheck: test_warn.py::test_leaks left 1 process behind (1 leaked)",
        ]
    )


def test_filter_naming_the_category_escalates(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        filterwarnings =
            error
            error::pytest_mpcheck.MpCheckWarning
        """
    )
    pytester.makepyfile(test_warn=LEAKS)
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-check=warn", timeout=60)
    result.assert_outcomes(passed=1, errors=1)
    # The error is the warning's text, as mode fail gives its report: no traceback through the
    # plugin's own code, which was still at work when the warning was made an error.
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks*",
            "MpCheckWarning: mpcheck: test_warn.py::test_leaks left 1 process behind (1 leaked)",
        ]
    )
    result.stdout.no_fnmatch_line("*pytest_mpcheck*.py:*")


LOCK_INVERSION = """
def test_inversion(mp_locks):
    a, b = mp_locks.Lock("a"), mp_locks.Lock("b")
    with a, b:
        pass
    with b, a:
        pass
"""


def test_command_line_blanket_filter_keeps_process_and_lock_warnings(
    pytester: pytest.Pytester,
) -> None:
    # The blanket filter of the command line, with a leaked process and a lock finding in one
    # run (an interpreter start is most of the cost of each).
    pytester.makepyfile(test_warn=LEAKS, test_locks=LOCK_INVERSION)
    result = pytester.runpytest_subprocess(
        *FAST_ARGS, "-W", "error", "--mp-check=warn", "-p", "no:randomly", timeout=60
    )
    result.assert_outcomes(passed=2, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*= warnings summary =*",
            "test_warn.py:*",
            "*MpCheckWarning: mpcheck: test_warn.py::test_leaks left 1 process behind (1 leaked)",
        ]
    )
    result.stdout.fnmatch_lines(["*MpCheckWarning: mpcheck: test_locks.py::test_inversion*"])
