"""Module-level multiprocessing objects made again in plain spawn and forkserver children.

No fixture: plain ``multiprocessing.Process`` children, which the plugin prepared as they
started, check themselves before their target runs. A warning, as Python itself would give one;
nothing under fork, where the objects are inherited and shared.
"""

from __future__ import annotations

import pytest

from tests.conftest import FAST_ARGS

MODULE_LEVEL = """
import multiprocessing

import pytest

LOCK = multiprocessing.Lock()
EVENTS = multiprocessing.Queue()
UNUSED = multiprocessing.Event()  # the target never reads it: not reported


def work():
    with LOCK:
        EVENTS.put("done")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_two_workers(method):
    context = multiprocessing.get_context(method)
    workers = [context.Process(target=work) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
"""


def test_module_level_objects_in_plain_children_are_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_module=MODULE_LEVEL)
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=120)
    result.assert_outcomes(passed=3, warnings=2)
    for method in ("spawn", "forkserver"):
        result.stdout.fnmatch_lines(
            [
                f"test_module.py::test_two_workers[[]{method}[]]",
                f"*MpCheckWarning: mpcheck: test_module.py::test_two_workers[[]{method}[]]: a "
                "child started by spawn or forkserver made a module-level object again, which is "
                "not shared:",
                "    children *, *: Queue not shared: the module-level Queue 'EVENTS' of "
                "test_module.py is not the test's Queue in this child: under the "
                f"'{method}' start method the child imported 'test_module' again, which made a "
                "new Queue; what one process puts in it, the others never see.",
                "      How to fix: create the Queue in the test and pass it to each child as an "
                "argument, e.g. Process(target=..., args=(EVENTS, ...)); for a Pool, pass it with "
                "initializer=..., initargs=(EVENTS,).",
                "    children *, *: lock not shared: the module-level Lock 'LOCK' of "
                "test_module.py is not the test's lock in this child: *",
            ]
        )
    text = result.stdout.str()
    assert "test_two_workers[fork]: a child" not in text
    assert "UNUSED" not in text
