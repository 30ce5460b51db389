"""Named resources made in plain spawn and forkserver children, outside the fixtures, are seen.

The child is a plain ``multiprocessing.Process``: it reports its registrations to the session's
resource log because the plugin prepared it as it started (see ``watch/childsetup.py``).
"""

from __future__ import annotations

import pytest

from tests.conftest import FAST_ARGS

PLAIN_CHILD = """
import multiprocessing
from multiprocessing import shared_memory

import pytest


def make_segment(path):
    segment = shared_memory.SharedMemory(create=True, size=64)
    segment.close()  # never unlinked
    with open(path, "w") as out:
        out.write(segment.name)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_child_forgets_unlink(method, tmp_path):
    child = multiprocessing.get_context(method).Process(
        target=make_segment, args=(str(tmp_path / "name"),)
    )
    child.start()
    child.join()
    assert child.exitcode == 0
    with open(f"name-{method}", "w") as out:
        out.write((tmp_path / "name").read_text())
"""


def test_segment_made_in_a_plain_spawned_child(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain=PLAIN_CHILD)
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=90)
    result.assert_outcomes(passed=2, errors=2)
    for method in ("spawn", "forkserver"):
        name = (pytester.path / f"name-{method}").read_text()
        result.stdout.fnmatch_lines(
            [
                f"*ERROR at teardown of test_child_forgets_unlink[[]{method}[]]*",
                f"leaked shared memory segment '/{name}': never unlinked",
                "    made at:    test_plain.py:8 by process *",
                "    freed by:   mpcheck (unlinked, and taken off the tracker's list)",
            ]
        )
    assert "leaked shared_memory objects" not in result.stderr.str()
