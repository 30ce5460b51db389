"""Whose processes end by themselves: the holders that the settle window need not wait for."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys

from pytest_mpcheck.watch.ownership import Holder


def test_an_open_pool_keeps_its_workers_a_closed_one_does_not() -> None:
    pool = multiprocessing.get_context("fork").Pool(1)
    try:
        assert Holder(pool).keeps_its_processes()
        pool.close()
        assert not Holder(pool).keeps_its_processes()
    finally:
        pool.terminate()
        pool.join()
    assert not Holder(pool).keeps_its_processes()


def test_an_open_executor_keeps_its_workers_a_shut_down_one_does_not() -> None:
    executor = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("fork")
    )
    try:
        assert executor.submit(int, "3").result(timeout=60) == 3
        assert Holder(executor).keeps_its_processes()
    finally:
        executor.shutdown()
    assert not Holder(executor).keeps_its_processes()


def test_other_holders_may_let_their_processes_end() -> None:
    # A module's global, a running thread, any other object: a process they hold may be
    # exiting (joined in the test's last line, or told to stop), so the window is waited.
    process = multiprocessing.get_context("fork").Process(target=int)
    assert not Holder(sys.modules[__name__]).keeps_its_processes()
    assert not Holder(process).keeps_its_processes()
    assert not Holder([process]).keeps_its_processes()
