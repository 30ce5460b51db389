"""Benchmark of ``mp_spawn``: ``python benchmarks/bench_spawn.py``.

Per start method, the time of a start+join of a process from ``mp_spawn`` against a plain
``multiprocessing`` process of the same context, in one pytest run with the plugin active (so the
plain process pays for the process watch too), as a ratio of medians. Target: at most 1.2.

The extra work of a tracked child: it sets its death signal, registers its stack dump, opens the
output log, and at its end writes its result file; the parent reads nothing until asked.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.context import BaseContext
from pathlib import Path

import pytest

from pytest_mpcheck.fixtures.spawn import Spawner

ROUNDS = {"fork": 150, "forkserver": 40, "spawn": 12}


def noop() -> None:
    """The target: nothing, so that only the cost of a process is measured."""


def _time(start_and_join: Callable[[], None]) -> float:
    began = time.perf_counter()
    start_and_join()
    return time.perf_counter() - began


def test_spawn_overhead(mp_spawn: Spawner, mp_context: BaseContext, mp_start_method: str) -> None:
    """Alternate plain and tracked processes; print the medians and their ratio."""

    def plain() -> None:
        process = mp_context.Process(target=noop)  # type: ignore[attr-defined]
        process.start()
        process.join()

    def tracked() -> None:
        mp_spawn(noop).join()

    plain()  # warm up: the forkserver and the resource tracker start once
    tracked()
    plain_times, tracked_times = [], []
    for _ in range(ROUNDS[mp_start_method]):
        plain_times.append(_time(plain))
        tracked_times.append(_time(tracked))
    plain_median = statistics.median(plain_times)
    tracked_median = statistics.median(tracked_times)
    print(
        f"\n{mp_start_method:>10}: plain Process {plain_median * 1e3:7.2f} ms, "
        f"mp_spawn {tracked_median * 1e3:7.2f} ms, ratio {tracked_median / plain_median:.2f} "
        f"({ROUNDS[mp_start_method]} rounds, start+join, medians)"
    )


if __name__ == "__main__":
    sys.exit(
        pytest.main(
            [
                str(Path(__file__).resolve()),
                "-q",
                "-s",
                "-p",
                "no:cacheprovider",
                "--mp-start-methods=fork,forkserver,spawn",
            ]
        )
    )
