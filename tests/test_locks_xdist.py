"""Under pytest-xdist the controller's summary lists the most contended locks of every worker."""

from __future__ import annotations

import pytest

pytest.importorskip("xdist")

CONTENDED = """\
import time

import pytest


def take(lock):
    with lock:
        pass


@pytest.mark.parametrize("name", ["first", "second"])
def test_contended(mp_locks, mp_spawn, name):
    lock = mp_locks.Lock(name)
    with lock:
        child = mp_spawn(take, args=(lock,), name="waiter")
        deadline = time.monotonic() + 30
        while not mp_locks.waiting(name) and time.monotonic() < deadline:
            time.sleep(0.002)
    child.join()
    mp_locks.assert_contended(name)
"""


def test_controller_lists_contended_locks_of_workers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_contended=CONTENDED)
    result = pytester.runpytest_subprocess("-n", "2", timeout=120)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["mpcheck: most contended locks:"])
    result.stdout.fnmatch_lines_random(
        [
            "  'first' in test_contended.py::test_contended[[]first[]]: 1 of 2 acquisitions "
            "waited, wait total * ms max * ms",
            "  'second' in test_contended.py::test_contended[[]second[]]: 1 of 2 acquisitions "
            "waited, wait total * ms max * ms",
        ]
    )
