"""The report sections of an inner run, one test at a time.

An inner run under several start methods reports ``test_x[fork]``, ``test_x[spawn]`` and
``test_x[forkserver]`` one after the other. Matching the lines of one of them in the whole output
could take a line from the next test's section when its own lacks it; :func:`section` gives the
lines of one section only, from its heading to the next one.
"""

from __future__ import annotations

import re

import pytest

#: A heading of pytest's report: ``____ test_x[spawn] ____`` (a failure) or
#: ``____ ERROR at teardown of test_x[spawn] ____``.
_HEADING = re.compile(r"^_+ (?P<title>[^_ ].*) _+$")  # not the "_ _ _" between entries


def section(result: pytest.RunResult, title: str) -> pytest.LineMatcher:
    """The lines of the section headed ``title`` (its heading first), up to the next heading.

    ``title`` is the whole title of the heading, e.g. ``test_x[spawn]`` or
    ``ERROR at teardown of test_x[spawn]``. Fails when there is not exactly one such section.
    """
    lines = result.outlines
    starts = [
        n
        for n, line in enumerate(lines)
        if (heading := _HEADING.match(line)) and heading["title"] == title
    ]
    assert len(starts) == 1, f"{len(starts)} sections headed {title!r} in:\n{result.stdout.str()}"
    start = starts[0]
    end = start + 1
    while end < len(lines) and not (_HEADING.match(lines[end]) or lines[end].startswith("=")):
        end += 1
    return pytest.LineMatcher(lines[start:end])
