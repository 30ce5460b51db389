"""A lambda as the target of a process: fine under fork, an explained error under spawn.

Under spawn and forkserver each child starts afresh and gets its target and arguments by pickle,
which stores a function as its module and name; a lambda, or a helper defined inside the test,
has no such name. The fixtures say so at the call, with the object, where it was defined, the
start method and the fix, instead of pickle's "Can't pickle local object". The original code runs
in an inner pytest session, so that this file passes; run ``pytest examples -rP`` to see the
report.
"""

from __future__ import annotations

import pytest

LAMBDA_TARGET = """
import pytest


@pytest.mark.mp_start_methods("fork", "spawn", "forkserver")
def test_square_in_a_child(mp_spawn, mp_pool):
    square = lambda x: x * x
    assert mp_spawn(square, args=(3,)).result == 9
"""


def test_unpicklable_target_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_square=LAMBDA_TARGET)
    result = pytester.runpytest_subprocess("--tb=short", timeout=120)
    print(result.stdout.str())
    # fork: nothing is pickled, the child inherits the lambda; spawn and forkserver: refused.
    result.assert_outcomes(passed=1, failed=2)
    for method in ("spawn", "forkserver"):
        result.stdout.fnmatch_lines(
            [
                f"*_ test_square_in_a_child[[]{method}[]] _*",
                "test_square.py:7: in test_square_in_a_child",
                "*",
                "E   AttributeError: mp_spawn: the target, the lambda defined at "
                "test_square.py:6, cannot be pickled, and the "
                f"'{method}' start method sends it to the child by pickling it.",
                "E   Why: spawn and forkserver start each child afresh and send it the target, "
                "its arguments and a pool's initializer by pickling them (fork does not pickle: "
                "the child inherits them). A lambda, or a function or class defined inside "
                "another function, cannot be pickled: pickle stores a function as its module "
                "and name, for the child to import, and this one has no name at module level.",
                "E   How to fix: define it at module level in test_square.py and pass that.",
            ]
        )
