"""Benchmark of the checked locks: ``python benchmarks/bench_locks.py``.

1. Uncontended: one process, an acquire+release pair of a checked ``mp_locks`` lock against a plain
   ``multiprocessing.Lock``, in one run, as a ratio (target at most 6, aim 3).
2. Contended: three processes take one checked lock in turn; the contention figures that the
   checker reports, and the time per pair.

The first line says which hot path the checked lock uses: the C extension, or pure Python (not
built, or ``PYTEST_MPCHECK_PURE_PYTHON=1``).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from typing import Any

from pytest_mpcheck.locks import checked as locks
from pytest_mpcheck.locks.checker import LockChecker

PAIRS = 200_000
ROUNDS = 5
CONTENDED_PAIRS = 20_000


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


def _attribute_pairs(lock: Any, pairs: int) -> float:
    start = time.perf_counter()
    for _ in range(pairs):
        lock.acquire()
        lock.release()
    return (time.perf_counter() - start) / pairs


def uncontended(method: str) -> None:
    """Print the cost of a pair, plain and checked, and the ratio (best of ``ROUNDS``)."""
    context = multiprocessing.get_context(method)
    checker = LockChecker(context)
    plain = context.Lock()
    checked = checker.Lock("bench")
    try:
        results: dict[str, list[float]] = {}
        for _ in range(ROUNDS):
            for name, measure, lock in (
                ("plain", _plain_pairs, plain),
                ("checked", _plain_pairs, checked),
                ("plain_attr", _attribute_pairs, plain),
                ("attr", _attribute_pairs, checked),
                ("plain_with", _with_pairs, plain),
                ("with", _with_pairs, checked),
            ):
                results.setdefault(name, []).append(measure(lock, PAIRS))
        best = {name: min(values) for name, values in results.items()}
        print(
            f"uncontended acquire()+release(), bound methods ({method}): plain "
            f"{best['plain'] * 1e9:.0f} ns, checked {best['checked'] * 1e9:.0f} ns, "
            f"ratio {best['checked'] / best['plain']:.2f}"
        )
        print(
            f"uncontended lock.acquire(); lock.release() ({method}): plain "
            f"{best['plain_attr'] * 1e9:.0f} ns, checked {best['attr'] * 1e9:.0f} ns, "
            f"ratio {best['attr'] / best['plain_attr']:.2f}"
        )
        print(
            f"uncontended `with lock:` ({method}): plain {best['plain_with'] * 1e9:.0f} ns, "
            f"checked {best['with'] * 1e9:.0f} ns, "
            f"ratio {best['with'] / best['plain_with']:.2f}"
        )
    finally:
        shutil.rmtree(checker.directory, ignore_errors=True)


def _contend(lock: Any, barrier: Any, pairs: int) -> float:
    barrier.wait(60)  # all three start together, so that they really contend
    for _ in range(pairs):
        with lock:
            pass
    return time.perf_counter()


def _three_processes(context: Any, lock: Any) -> float:
    """Wall time from the common start of three contending processes until all have ended."""
    barrier = context.Barrier(4)
    workers = [
        context.Process(target=_contend, args=(lock, barrier, CONTENDED_PAIRS), name=f"worker-{n}")
        for n in range(3)
    ]
    for worker in workers:
        worker.start()
    barrier.wait(60)
    start = time.perf_counter()
    for worker in workers:
        worker.join(60)
    return time.perf_counter() - start


def contended(method: str) -> None:
    """Three processes take one checked lock ``CONTENDED_PAIRS`` times each."""
    context: Any = multiprocessing.get_context(method)
    checker = LockChecker(context)
    lock = checker.Lock("contended")
    try:
        plain_wall = _three_processes(context, context.Lock())
        checked_wall = _three_processes(context, lock)
        stats = checker.stats("contended")
        findings = checker.findings()
        holds = checker.holds("contended")
        elapsed = (max(h.end or h.start for h in holds) - min(h.start for h in holds)) / 1e9
        print(
            f"three processes contending ({method}): {stats.acquisitions} acquisitions in "
            f"{elapsed * 1e3:.1f} ms ({elapsed / stats.acquisitions * 1e9:.0f} ns a pair), "
            f"{stats.contended} contended "
            f"({stats.contended / max(1, stats.acquisitions):.0%}), wait total "
            f"{stats.total_wait * 1e3:.1f} ms, max {stats.max_wait * 1e3:.2f} ms, hold max "
            f"{stats.max_hold * 1e3:.3f} ms, findings: {len(findings)}; wall time of the run: "
            f"plain lock {plain_wall * 1e3:.1f} ms, checked {checked_wall * 1e3:.1f} ms"
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
    hot_path = "C (_lockrec)" if locks.ACCELERATED else "pure Python"
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, lock hot path: {hot_path}")
    uncontended("spawn")
    contended("fork")
    contended("spawn")


if __name__ == "__main__":
    main()
