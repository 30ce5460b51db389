"""Reports escape the control characters of what a process says of itself, and cut huge command
lines; the JSON report keeps them whole."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FAST_ARGS
from tests.test_watch import teardown_error

#: Two leaked processes whose command lines are hard to show, one module each, for one inner run.
COMMAND_LINES = {
    "test_forge": """
        import subprocess, sys

        KEPT = []

        def test_leaks_control_characters():
            argv = [sys.executable, "-c", "import time; time.sleep(60)",
                    "\\x1b[2J\\x1b[Hcleared", "one\\n::error::forged\\x08back\\x9b31m"]
            KEPT.append(subprocess.Popen(argv))
        """,
    "test_huge": """
        import subprocess, sys

        KEPT = []

        def test_leaks_a_huge_command_line():
            argv = [sys.executable, "-c", "import time; time.sleep(60)"] + ["x" * 99] * 1000
            KEPT.append(subprocess.Popen(argv))
        """,
}


def test_escapes_in_a_command_line_and_a_huge_one_cut(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(**COMMAND_LINES)
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-report=report.json", timeout=60)
    result.assert_outcomes(passed=2, errors=2)
    findings = json.loads((pytester.path / "report.json").read_text())["findings"]

    # Escapes in a command line cannot forge log lines.
    result.stdout.fnmatch_lines(
        [
            "    command:    * -c import time; time.sleep(60) "
            r"\x1b[[]2J\x1b[[]Hcleared one\n::error::forged\x08back\x9b31m",
        ]
    )
    text = result.stdout.str()
    for control in ("\x1b", "\x08", "\x9b"):
        assert control not in text
    assert not any(line.startswith("::error::") for line in result.stdout.lines)
    # the test's own finding (a global keeps the Popen: the session ends it, and says so again)
    finding = next(
        f for f in findings if f["nodeid"] == "test_forge.py::test_leaks_control_characters"
    )
    assert finding["process"]["cmdline"].endswith(
        "\x1b[2J\x1b[Hcleared one\n::error::forged\x08back\x9b31m"
    )

    # A huge command line is cut.
    whole = next(
        f for f in findings if f["nodeid"] == "test_huge.py::test_leaks_a_huge_command_line"
    )["process"]
    assert len(whole["cmdline"]) > 100_000
    assert whole["cmdline"].endswith(" " + "x" * 99)
    # the report's line (with CI=true pytest repeats the whole message in its short summary)
    section = teardown_error(result, "test_leaks_a_huge_command_line").lines
    command = next(line for line in section if line.startswith("    command:"))
    cut = len(whole["cmdline"]) - 1000
    assert command == (
        f"    command:    {whole['cmdline'][:1000]}... [{cut} more characters cut; "
        "the JSON report (--mp-report) has them all]"
    )


def test_printable() -> None:
    from pytest_mpcheck.safetext import printable

    assert printable("a\x1b[31mb\nc\td\x7f\x85\u202e") == r"a\x1b[31mb\nc\td\x7f\x85\u202e"
    assert printable("one\n\x1btwo", lines=True) == "one\n\\x1btwo"
    assert printable("é ü 漢字") == "é ü 漢字"
    assert printable("abcdef", limit=4) == (
        "abcd... [2 more characters cut; the JSON report (--mp-report) has them all]"
    )
    assert printable("abcd", limit=4) == "abcd"
