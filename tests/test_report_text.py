"""Reports escape the control characters of what a process says of itself, and cut huge command
lines; the JSON report keeps them whole."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FAST_ARGS


def test_escapes_in_a_command_line_cannot_forge_log_lines(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_forge="""
        import subprocess, sys

        KEPT = []

        def test_leaks():
            argv = [sys.executable, "-c", "import time; time.sleep(60)",
                    "\\x1b[2J\\x1b[Hcleared", "one\\n::error::forged\\x08back\\x9b31m"]
            KEPT.append(subprocess.Popen(argv))
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-report=report.json", timeout=60)
    result.assert_outcomes(passed=1, errors=1)
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
    document = json.loads((pytester.path / "report.json").read_text())
    # the test's own finding (a global keeps the Popen: the session ends it, and says so again)
    finding = document["findings"][0]
    assert finding["process"]["cmdline"].endswith(
        "\x1b[2J\x1b[Hcleared one\n::error::forged\x08back\x9b31m"
    )


def test_a_huge_command_line_is_cut(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_huge="""
        import subprocess, sys

        KEPT = []

        def test_leaks():
            argv = [sys.executable, "-c", "import time; time.sleep(60)"] + ["x" * 99] * 1000
            KEPT.append(subprocess.Popen(argv))
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-report=report.json", timeout=60)
    result.assert_outcomes(passed=1, errors=1)
    whole = json.loads((pytester.path / "report.json").read_text())["findings"][0]["process"]
    assert len(whole["cmdline"]) > 100_000
    assert whole["cmdline"].endswith(" " + "x" * 99)
    # the report's line (with CI=true pytest repeats the whole message in its short summary)
    command = next(line for line in result.stdout.lines if line.startswith("    command:"))
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
