"""The seed article's ``Pool`` examples, as tests, with the ``mp_pool`` fixture.

The pool is closed and joined by the fixture at the end of the test (within the join timeout);
an exception of a task whose result nobody fetched would fail the test instead of being lost.
"""

from __future__ import annotations

import pytest

from pytest_mpcheck import PoolFactory


def square(n: int) -> int:
    return n**2


def test_pool_map(mp_pool: PoolFactory) -> None:
    numbers = [1, 5, 9]
    pool = mp_pool(processes=3)
    assert pool.map(square, numbers) == [1, 25, 81]


def test_apply_async(mp_pool: PoolFactory) -> None:
    pool = mp_pool(processes=3)
    res = pool.apply_async(square, (10,))
    assert res.get(timeout=30) == 100


def test_task_error_is_raised_by_get(mp_pool: PoolFactory) -> None:
    pool = mp_pool(processes=1)
    res = pool.apply_async(square, ("ten",))
    # get() raises the worker's exception; having fetched it, the test has dealt with it.
    with pytest.raises(TypeError, match="unsupported operand"):
        res.get(timeout=30)
