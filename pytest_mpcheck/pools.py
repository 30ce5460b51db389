"""``mp_pool`` and ``mp_executor``: pools and executors of the test's start method.

Their workers are prepared like every child of the fixtures (death signal, stacks on request,
output through the log). At teardown each pool is closed and joined, each executor shut down,
within the join timeout; one that does not finish fails the test with the stack of each busy
worker, which is then ended. A task that raised and whose result nobody fetched fails the test.

Pools and executors run threads of their own in the pytest process; that comes with them (the
plugin itself starts none).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing.pool
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures.process import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mpcheck import arguments, bootstrap, procfs
from pytest_mpcheck.hangs import Suspect, format_hung, join_advice

if TYPE_CHECKING:
    from pytest_mpcheck.testrun import MpTest

_LIBRARY_PARTS = ("/multiprocessing/", "/concurrent/futures/", "/threading.py", "/queue.py")


def _describe_call(func: Callable[..., Any], args: Sequence[Any]) -> str:
    name = getattr(func, "__qualname__", None) or repr(func)
    shown = ", ".join(repr(a) for a in args)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{name}({shown})"


@dataclass
class _Task:
    """A submitted task whose result the test may or may not fetch."""

    call: str
    handled: bool = False
    """Its result or exception was asked for, or an error callback takes its errors."""


def _remote_text(error: BaseException) -> str:
    cause = error.__cause__
    text = str(cause).strip().strip('"').strip() if cause is not None else ""
    if text:
        return text
    return f"{type(error).__qualname__}: {error}"


class TrackedPool(multiprocessing.pool.Pool):
    """A ``multiprocessing.pool.Pool`` that remembers its asynchronous tasks (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._mp_tasks: list[tuple[multiprocessing.pool.ApplyResult[Any], _Task]] = []
        super().__init__(*args, **kwargs)

    @staticmethod
    def Process(ctx: Any, *args: Any, **kwds: Any) -> Any:
        """A worker process, marked with the thread that starts it (see ``bootstrap``)."""
        process = ctx.Process(*args, **kwds)
        bootstrap.mark_starter(process)
        return process

    def _mp_track(
        self, result: Any, func: Callable[..., Any], args: Sequence[Any], error_callback: Any
    ) -> Any:
        task = _Task(_describe_call(func, args), handled=error_callback is not None)
        get, successful = result.get, result.successful

        def tracked_get(timeout: float | None = None) -> Any:
            task.handled = True
            return get(timeout)

        def tracked_successful() -> bool:
            task.handled = True
            return bool(successful())

        result.get = tracked_get
        result.successful = tracked_successful
        self._mp_tasks.append((result, task))
        return result

    def apply_async(  # type: ignore[override]
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> Any:
        """As ``Pool.apply_async``; an error nobody fetches is reported at teardown."""
        args = tuple(args)
        result = super().apply_async(func, args, kwds or {}, callback, error_callback)
        return self._mp_track(result, func, args, error_callback)

    def map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> Any:
        """As ``Pool.map_async``; an error nobody fetches is reported at teardown."""
        result = super().map_async(func, iterable, chunksize, callback, error_callback)
        return self._mp_track(result, func, ("...",), error_callback)

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> Any:
        """As ``Pool.starmap_async``; an error nobody fetches is reported at teardown."""
        result = super().starmap_async(func, iterable, chunksize, callback, error_callback)
        return self._mp_track(result, func, ("...",), error_callback)

    def _mp_unfetched_errors(self) -> list[str]:
        found = []
        for result, task in self._mp_tasks:
            if task.handled or not result.ready():
                continue
            try:
                result.get(0)
            except BaseException as error:
                found.append(
                    f"pool task {task.call} raised, and its result was never fetched:\n"
                    f"{_remote_text(error)}"
                )
        return found

    def _mp_workers(self) -> list[Any]:
        return list(getattr(self, "_pool", []))

    def _mp_busy(self) -> bool:
        return bool(getattr(self, "_cache", {}))


class _MarkingContext:
    """A multiprocessing context whose processes are marked with the thread that starts them.

    An executor's manager thread starts replacement workers (``max_tasks_per_child``): see
    :func:`pytest_mpcheck.bootstrap.mark_starter`.
    """

    def __init__(self, context: Any) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def Process(self, *args: Any, **kwargs: Any) -> Any:
        process = self._context.Process(*args, **kwargs)
        bootstrap.mark_starter(process)
        return process


class TrackedExecutor(ProcessPoolExecutor):
    """A ``ProcessPoolExecutor`` that remembers its futures (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._mp_futures: list[tuple[concurrent.futures.Future[Any], _Task]] = []
        super().__init__(*args, **kwargs)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """As ``ProcessPoolExecutor.submit``; an error nobody fetches is reported at teardown."""
        future = super().submit(fn, *args, **kwargs)
        task = _Task(_describe_call(getattr(fn, "func", fn), args))
        result, exception = future.result, future.exception

        def tracked_result(timeout: float | None = None) -> Any:
            task.handled = True
            return result(timeout)

        def tracked_exception(timeout: float | None = None) -> BaseException | None:
            task.handled = True
            return exception(timeout)

        future.result = tracked_result  # type: ignore[method-assign]
        future.exception = tracked_exception  # type: ignore[method-assign]
        self._mp_futures.append((future, task))
        return future

    def _mp_unfetched_errors(self) -> list[str]:
        found = []
        for future, task in self._mp_futures:
            if task.handled or not future.done() or future.cancelled():
                continue
            error = future.exception(0)
            if error is not None:
                found.append(
                    f"executor task {task.call} raised, and its result was never fetched:\n"
                    f"{_remote_text(error)}"
                )
        return found


def _is_busy(stack: str | None) -> bool:
    """Whether a worker's stack shows user code (not the worker loop waiting for a task)."""
    if stack is None:
        return True
    for line in stack.splitlines():
        line = line.strip()
        if (
            line.startswith('File "')
            and not any(part in line for part in _LIBRARY_PARTS)
            and "/pytest_mpcheck/" not in line
        ):
            return True
    return False


def _idle(pool: TrackedPool) -> Callable[[], bool]:
    return lambda: not pool._mp_busy()


def _workers_gone(pool: TrackedPool) -> Callable[[], bool]:
    return lambda: not any(worker.is_alive() for worker in pool._mp_workers())


def _all_ended(workers: Sequence[Any]) -> Callable[[], bool]:
    return lambda: not any(worker.is_alive() for worker in workers)


def _wait(until: Callable[[], bool], deadline: float) -> bool:
    pause = 0.002
    while not until():
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.05)
    return True


def _fail_busy(
    test: MpTest,
    workers: Sequence[Any],
    what: str,
    pending: Sequence[str],
    before: Callable[[], None],
) -> None:
    """Diagnose the busy workers of a pool that did not finish, end them, fail the test."""
    __tracebackhide__ = True
    from pytest_mpcheck import stacks

    alive = [w for w in workers if w.pid is not None and procfs.state(w.pid) not in (None, "Z")]
    read = stacks.stacks_of(test.workdir, [w.pid for w in alive], pyspy=False)
    busy = [w for w in alive if _is_busy(read[w.pid].text)] or alive
    findings = test.end_hung(
        [Suspect(w.pid, w) for w in busy],
        f"a worker of {what} still busy after the join timeout",
    )
    before()
    tasks = "".join(f"\n    {call}" for call in pending[:10])
    headline = (
        f"mpcheck: {test.item.nodeid}: {what} did not finish within the join timeout "
        f"({test.join_timeout:g}s): {len(busy)} busy worker{'s' if len(busy) != 1 else ''}"
        + (f"; unfinished tasks:{tasks}" if tasks else "")
    )
    pytest.fail(format_hung(headline, findings, join_advice(test.join_timeout)), pytrace=False)


class PoolFactory:
    """The ``mp_pool`` fixture: makes pools of the test's start method, closes them at teardown."""

    def __init__(self, test: MpTest) -> None:
        self._test = test
        self.pools: list[TrackedPool] = []

    def __call__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
    ) -> TrackedPool:
        """A ``multiprocessing.pool.Pool`` of the test's context."""
        __tracebackhide__ = True
        arguments.positive_int_or_none("mp_pool", "processes", processes, "one per CPU")
        arguments.callable_or_none("mp_pool", "initializer", initializer)
        arguments.iterable("mp_pool", "initargs", initargs)
        arguments.positive_int_or_none(
            "mp_pool", "maxtasksperchild", maxtasksperchild, "workers live as long as the pool"
        )
        pool = TrackedPool(
            processes,
            bootstrap.pool_worker_init,
            (self._test.spec, initializer, tuple(initargs)),
            maxtasksperchild,
            context=self._test.context,
        )
        self.pools.append(pool)
        return pool

    def finish(self) -> None:
        """Close and join every pool within the join timeout; report what went wrong."""
        __tracebackhide__ = True
        test = self._test
        problems: list[str] = []
        for pool in self.pools:
            deadline = time.monotonic() + test.join_timeout
            with contextlib.suppress(ValueError):  # already terminated by the test
                pool.close()
            finished = _wait(_idle(pool), deadline) and _wait(_workers_gone(pool), deadline)
            if not finished:
                pending = [task.call for result, task in pool._mp_tasks if not result.ready()]
                _fail_busy(test, pool._mp_workers(), "a pool", pending, pool.terminate)
            pool.join()
            problems.extend(pool._mp_unfetched_errors())
        if problems:
            pytest.fail(
                f"mpcheck: {test.item.nodeid}: an error of a task was lost\n\n"
                + "\n\n".join(problems),
                pytrace=False,
            )


class ExecutorFactory:
    """The ``mp_executor`` fixture: ``ProcessPoolExecutor``s of the test's start method."""

    def __init__(self, test: MpTest) -> None:
        self._test = test
        self.executors: list[TrackedExecutor] = []

    def __call__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_child: int | None = None,
    ) -> TrackedExecutor:
        """A ``concurrent.futures.ProcessPoolExecutor`` of the test's context."""
        __tracebackhide__ = True
        arguments.positive_int_or_none("mp_executor", "max_workers", max_workers, "one per CPU")
        arguments.callable_or_none("mp_executor", "initializer", initializer)
        arguments.iterable("mp_executor", "initargs", initargs)
        arguments.positive_int_or_none(
            "mp_executor",
            "max_tasks_per_child",
            max_tasks_per_child,
            "workers live as long as the executor",
        )
        extra: dict[str, Any] = {}
        if max_tasks_per_child is not None:
            if sys.version_info < (3, 11):
                pytest.fail("mp_executor: max_tasks_per_child needs Python 3.11", pytrace=False)
            extra["max_tasks_per_child"] = max_tasks_per_child
        executor = TrackedExecutor(
            max_workers,
            mp_context=_MarkingContext(self._test.context),
            initializer=bootstrap.pool_worker_init,
            initargs=(self._test.spec, initializer, tuple(initargs)),
            **extra,
        )
        self.executors.append(executor)
        return executor

    def finish(self) -> None:
        """Shut every executor down within the join timeout; report what went wrong."""
        __tracebackhide__ = True
        test = self._test
        problems: list[str] = []
        for executor in self.executors:
            deadline = time.monotonic() + test.join_timeout
            # shutdown() drops its references to the workers and the manager thread: keep them.
            workers = list((getattr(executor, "_processes", None) or {}).values())
            manager: threading.Thread | None = getattr(executor, "_executor_manager_thread", None)
            executor.shutdown(wait=False)
            futures = [future for future, _ in executor._mp_futures]
            concurrent.futures.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
            finished = all(future.done() for future in futures)
            if finished and manager is not None:
                manager.join(max(0.0, deadline - time.monotonic()))
                finished = not manager.is_alive()
            if finished:
                finished = _wait(_all_ended(workers), deadline)
            if not finished:
                pending = [task.call for future, task in executor._mp_futures if not future.done()]

                def after(manager: threading.Thread | None = manager) -> None:
                    if manager is not None:
                        manager.join(5.0)  # the workers are gone: the manager notices at once

                _fail_busy(test, workers, "an executor", pending, after)
            problems.extend(executor._mp_unfetched_errors())
        if problems:
            pytest.fail(
                f"mpcheck: {test.item.nodeid}: an error of a task was lost\n\n"
                + "\n\n".join(problems),
                pytrace=False,
            )
