"""Benchmark of the checked locks: ``python benchmarks/bench_locks.py``.

1. Uncontended: one process, an acquire+release pair of a checked ``mp_locks`` lock against a plain
   ``multiprocessing.Lock``, in one run, as a ratio (target at most 6, aim 3).
2. Contended: three processes take one checked lock in turn; the contention figures that the
   checker reports, and the time per pair.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from typing import Any

from pytest_mpcheck.lockcheck import LockChecker

PAIRS = 200_000
ROUNDS = 5
CONTENDED_PAIRS = 2_000


def _plain_pairs(lock: Any, pairs: int) -> float:
    acquire, release = lock.acquire, lock.release
    start = time.perf_counter()
    for _ in range(pairs):
        acquire()
        release()
    return (time.perf_counter() - start) / pairs


def _with_pairs(lock: Any, pairs: int) -> float:
    start = time.perf_counter()
    for _ in range(pairs):
        with lock:
            pass
    return (time.perf_counter() - start) / pairs


def uncontended(method: str) -> None:
    """Print the cost of a pair, plain and checked, and the ratio (best of ``ROUNDS``)."""
    context = multiprocessing.get_context(method)
    checker = LockChecker(context)
    plain = context.Lock()
    checked = checker.Lock("bench")
    try:
        results: dict[str, list[float]] = {"plain": [], "checked": [], "plain_with": [], "with": []}
        for _ in range(ROUNDS):
            results["plain"].append(_plain_pairs(plain, PAIRS))
            results["checked"].append(_plain_pairs(checked, PAIRS))
            results["plain_with"].append(_with_pairs(plain, PAIRS))
            results["with"].append(_with_pairs(checked, PAIRS))
        best = {name: min(values) for name, values in results.items()}
        print(
            f"uncontended acquire()+release() ({method}): plain {best['plain'] * 1e9:.0f} ns, "
            f"checked {best['checked'] * 1e9:.0f} ns, ratio {best['checked'] / best['plain']:.2f}"
        )
        print(
            f"uncontended `with lock:` ({method}): plain {best['plain_with'] * 1e9:.0f} ns, "
            f"checked {best['with'] * 1e9:.0f} ns, "
            f"ratio {best['with'] / best['plain_with']:.2f}"
        )
    finally:
        shutil.rmtree(checker.directory, ignore_errors=True)


def _contend(lock: Any, pairs: int) -> None:
    for _ in range(pairs):
        with lock:
            pass


def contended(method: str) -> None:
    """Three processes take one checked lock ``CONTENDED_PAIRS`` times each."""
    context: Any = multiprocessing.get_context(method)
    checker = LockChecker(context)
    lock = checker.Lock("contended")
    try:
        workers = [
            context.Process(target=_contend, args=(lock, CONTENDED_PAIRS), name=f"worker-{n}")
            for n in range(3)
        ]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        elapsed = time.perf_counter() - start
        stats = checker.stats("contended")
        findings = checker.findings()
        print(
            f"three processes contending ({method}): {stats.acquisitions} acquisitions in "
            f"{elapsed:.2f} s (with process start), {stats.contended} contended "
            f"({stats.contended / max(1, stats.acquisitions):.0%}), wait total "
            f"{stats.total_wait * 1e3:.1f} ms, max {stats.max_wait * 1e3:.2f} ms, hold max "
            f"{stats.max_hold * 1e3:.3f} ms, findings: {len(findings)}"
        )
        for process, counts in stats.by_process.items():
            print(
                f"    {process}: {counts.acquisitions} acquisitions, {counts.contended} "
                f"contended, wait max {counts.max_wait * 1e3:.2f} ms"
            )
    finally:
        shutil.rmtree(checker.directory, ignore_errors=True)


def main() -> None:
    """Run both benchmarks."""
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    uncontended("spawn")
    contended("fork")
    contended("spawn")


if __name__ == "__main__":
    main()
