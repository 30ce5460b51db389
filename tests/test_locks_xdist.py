"""Under pytest-xdist the controller adds up the lock figures and findings of every worker."""

from __future__ import annotations

import json

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


def nested(first, second):
    with first:
        with second:
            pass


def test_inversion(mp_locks, mp_spawn):
    a, b = mp_locks.Lock("a"), mp_locks.Lock("b")
    mp_spawn(nested, args=(a, b)).join()
    mp_spawn(nested, args=(b, a)).join()
"""


def test_controller_lists_contended_locks_of_workers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_contended=CONTENDED)
    result = pytester.runpytest_subprocess("-n", "2", "--mp-report=report.json", timeout=120)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["mpcheck: most contended locks:"])
    result.stdout.fnmatch_lines_random(
        [
            "  'first' in test_contended.py::test_contended[[]first[]]: 1 of 2 acquisitions "
            "waited, wait total * ms max * ms",
            "  'second' in test_contended.py::test_contended[[]second[]]: 1 of 2 acquisitions "
            "waited, wait total * ms max * ms",
        ]
    )
    # The JSON report has every lock's figures and the lock findings of the workers.
    locks = json.loads((pytester.path / "report.json").read_text())["locks"]
    contended = sorted((row["lock"], row["contended"]) for row in locks["contention"])
    assert contended == [("a", 0), ("b", 0), ("first", 1), ("second", 1)]
    assert [(f["nodeid"], f["kind"], f["lock"]) for f in locks["findings"]] == [
        ("test_contended.py::test_inversion", "lock-order inversion", "a")
    ]
