"""Races between the watch's look at the process tree and a thread that forks meanwhile.

A pool's worker-handler thread forks replacement workers at any moment, also while the watch
reads the tree after a test. These tests put a real fork exactly inside that read.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_mpcheck._os import procfs
from pytest_mpcheck.settings import Settings
from pytest_mpcheck.watch import process_watch
from pytest_mpcheck.watch.origins import OriginRecorder


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[OriginRecorder]:
    recorder = OriginRecorder(tmp_path)
    recorder.install()
    yield recorder
    recorder.uninstall()


def test_a_fork_made_while_the_tree_is_read_keeps_its_start_record(
    recorder: OriginRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = process_watch.ProcessWatch(Settings(), recorder)
    started: list[multiprocessing.process.BaseProcess] = []
    read_tree = procfs.descendants

    def read_then_fork(pid: int) -> dict[int, int]:
        tree = read_tree(pid)
        if not started:  # another thread's fork, just after the tree was read
            child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
            child.start()
            started.append(child)
        return tree

    monkeypatch.setattr(procfs, "descendants", read_then_fork)
    try:
        watch.baseline()
        (child,) = started
        assert child.pid in recorder.records
        # The look missed the child: the next baseline must look again, not reuse it, and the
        # records of the processes gone must not take the child's with them.
        assert child.pid in watch.baseline().pids
        watch._last_tree = None
        watch.baseline()
        watch._forget_gone()
        assert child.pid in recorder.records
    finally:
        for child in started:
            child.kill()
            child.join(10)


def test_a_fork_made_while_the_ended_are_sorted_out_keeps_its_start_record(
    recorder: OriginRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After each test the watch drops the records of the processes that ended, by a look at
    # the tree: a process forked and noted just after that look is not in it, and is no ended
    # one (its record lost, it was later reported as "started by: unknown").
    watch = process_watch.ProcessWatch(Settings(), recorder)
    fork = multiprocessing.get_context("fork")
    earlier = fork.Process(target=time.sleep, args=(30,))
    earlier.start()  # a record to sort out: the look is taken
    started: list[multiprocessing.process.BaseProcess] = [earlier]
    read_tree = procfs.descendants

    def read_then_fork(pid: int) -> dict[int, int]:
        tree = read_tree(pid)
        if len(started) == 1:  # another thread's fork, just after the tree was read
            child = fork.Process(target=time.sleep, args=(30,))
            child.start()
            started.append(child)
        return tree

    try:
        watch._last_tree = None
        monkeypatch.setattr(procfs, "descendants", read_then_fork)
        watch._forget_gone()
        monkeypatch.undo()
        later = started[1]
        assert later.pid in recorder.records
        assert earlier.pid in recorder.records
        assert watch.take_gone() == []
    finally:
        for child in started:
            child.kill()
            child.join(10)


#: Tests that each leave an open pool whose workers end after one task: after the test, its
#: worker-handler thread starts a new worker whenever one ends.
OPEN_POOLS = """
import multiprocessing

OPEN = []

def test_leaves_an_open_pool_{n}():
    pool = multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1)
    assert pool.map(abs, range(-3, 0), chunksize=1) == [3, 2, 1]
    OPEN.append(pool)
"""


def test_an_open_pool_between_two_workers_is_still_a_leak(pytester: pytest.Pytester) -> None:
    # When the test ends, its pool's last worker may be exiting (its one task done) and the
    # next not started yet: a look at that moment finds no process. The watch gives a thread of
    # the test that starts processes the settle window to start its next one, and the test
    # fails every time, not now and then. (A generous window: the machine may be loaded.)
    pytester.makepyfile(**{f"test_open_{n}": OPEN_POOLS.format(n=n) for n in range(3)})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--mp-settle=1", timeout=120)
    result.assert_outcomes(passed=3, errors=3)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: test_open_0.py::test_leaves_an_open_pool_0 left 1 process behind*",
            "leaked process * 'ForkPoolWorker-*': still running*",
        ]
    )
