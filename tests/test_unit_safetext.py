"""Text from a process made safe for a report: escapes shown, huge text cut with a note."""

from __future__ import annotations

from pytest_mpcheck.safetext import COMMAND_LIMIT, printable


def test_plain_text_is_unchanged() -> None:
    assert (
        printable("python -m pytest -k 'a and b' é ü 中") == "python -m pytest -k 'a and b' é ü 中"
    )


def test_control_characters_are_shown_escaped() -> None:
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("line\n::error::forged") == "line\\n::error::forged"
    assert printable("hidden\rshown\ttab") == "hidden\\rshown\\ttab"
    assert printable("del\x7f c1\x9b nul\x00") == "del\\x7f c1\\x9b nul\\x00"


def test_unicode_that_breaks_or_reorders_lines_is_escaped() -> None:
    assert printable("a\u2028b\u2029c") == "a\\u2028b\\u2029c"
    assert printable("\u202eevil\u2066x\u2069") == "\\u202eevil\\u2066x\\u2069"


def test_lines_keeps_newlines_and_escapes_the_rest() -> None:
    assert printable("one\ntwo\r\x1b", lines=True) == "one\ntwo\\r\\x1b"


def test_a_long_text_is_cut_with_a_note() -> None:
    text = "x" * (COMMAND_LIMIT + 25)
    assert printable(text, limit=COMMAND_LIMIT) == (
        "x" * COMMAND_LIMIT
        + "... [25 more characters cut; the JSON report (--mp-report) has them all]"
    )
    assert printable("short", limit=5) == "short"
    # The limit counts characters before escaping; an escape is never cut in half.
    assert printable("\x1b" * 3, limit=2) == (
        "\\x1b\\x1b... [1 more characters cut; the JSON report (--mp-report) has them all]"
    )
