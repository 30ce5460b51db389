"""Ending leftovers safely: SIGTERM, a grace period, SIGKILL, then reaping.

A pid is signalled only while it is still the process that was found (same pid, same create time)
and still a descendant of the pytest process: the plugin never signals a process it does not own.
Every wait is bounded. Children that a ``multiprocessing.Process`` or ``subprocess.Popen`` object
owns are reaped through that object, so its own bookkeeping (``exitcode``, ``returncode``,
``multiprocessing.active_children()``) stays right.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing.process
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Container, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from pytest_mpcheck._os import procfs
from pytest_mpcheck._os.poll import poll_until

if TYPE_CHECKING:
    import multiprocessing.pool

#: How long to wait for processes to die after SIGKILL (they cannot refuse; this bounds a D state).
KILL_WAIT = 5.0
#: The same, when pytest exits right after (:func:`end_processes`'s ``exiting``): SIGKILL is
#: certain, and a process in D state dies when it leaves it, with or without pytest.
EXIT_KILL_WAIT = 0.5


#: How a pool worker ended when its ``Pool`` was terminated for it.
POOL_TERMINATED = "Pool.terminate()"

#: How :func:`end_processes` says that it ended a process itself (a signal, or its pool).
SENT_BY_MPCHECK = frozenset({"SIGTERM", "SIGKILL", POOL_TERMINATED})


@dataclass
class Leftover:
    """A process to end, as it was when it was found."""

    pid: int
    create_time: float
    handle: Any = None
    """The owning ``multiprocessing.Process`` or ``subprocess.Popen``, when known and alive."""


def _is_pool_worker_candidate(leftover: Leftover) -> bool:
    """A live leftover that may be a ``Pool``'s worker: named so, or with no handle to tell."""
    handle = leftover.handle
    if handle is not None and not (
        isinstance(handle, multiprocessing.process.BaseProcess)
        # Pool names its workers "ForkPoolWorker-1", "SpawnPoolWorker-2", ...
        and "PoolWorker-" in handle.name
    ):
        return False
    return procfs.state(leftover.pid) not in (None, "Z")


def _pools_listing(pids: set[int]) -> list[tuple[multiprocessing.pool.Pool, set[int]]]:
    """The live ``Pool`` objects whose workers have these pids, with those pids."""
    pool_module = sys.modules.get("multiprocessing.pool")
    if pool_module is None:
        return []  # never imported: no Pool was made (importing it here would cost every run)
    found = []
    for candidate in gc.get_objects():
        if isinstance(candidate, pool_module.Pool):
            workers = getattr(candidate, "_pool", None) or ()
            listed = {getattr(worker, "pid", None) for worker in workers} & pids
            if listed:
                found.append((candidate, {pid for pid in listed if pid is not None}))
    return found


def _terminate_pools(leftovers: list[Leftover], timeout: float) -> set[int]:
    """Stop leaked pool workers through their pool; the pids it ended.

    Killing a ``Pool``'s worker directly can leave the pool's shared queue lock held for ever
    (an idle worker waits for tasks holding it), and the pool's own ``terminate()``, which runs at
    interpreter exit, would then hang. The pool ends its workers without that risk. The pools are
    found by the pids their worker lists hold (one walk of the heap, only when a possible worker
    is left), so that a worker whose start was not recorded, and has no handle, is found too.
    """
    candidates = {item.pid for item in leftovers if _is_pool_worker_candidate(item)}
    ended: set[int] = set()
    for pool, pids in _pools_listing(candidates) if candidates else []:
        if _terminate_within(pool, timeout):
            ended |= pids
    return ended


def _terminate_within(pool: multiprocessing.pool.Pool, timeout: float) -> bool:
    """``pool.terminate()``, bounded; whether it finished in time.

    It can wait for ever: a worker killed while it waited for a task (the OOM killer's SIGKILL,
    a test's ``os.kill``) never released the task queue's lock, which ``terminate()`` takes. It
    runs in a daemon thread; if it does not finish, its workers are ended by signals like any
    other leftover, and the thread stays blocked on that lock until the interpreter exits (a
    daemon thread does not hold the exit).
    """
    finished = threading.Event()

    def terminate() -> None:
        with contextlib.suppress(Exception):
            pool.terminate()
            finished.set()

    thread = threading.Thread(target=terminate, name="mpcheck: Pool.terminate()", daemon=True)
    thread.pytest_mpcheck_own = True  # type: ignore[attr-defined]  # not the tests' (forkthreads)
    thread.start()
    thread.join(timeout)
    return finished.is_set()


def _reap_through_handle(handle: Any) -> bool:
    """Let the owning object wait for its process; ``True`` once it has ended."""
    try:
        if hasattr(handle, "poll"):  # subprocess.Popen
            return handle.poll() is not None
        return handle.exitcode is not None  # multiprocessing.Process polls with WNOHANG
    except Exception:
        return False


#: The methods of ``subprocess.Popen`` that wait for its process while holding its wait lock.
_POPEN_WAITS = frozenset(
    getattr(getattr(subprocess.Popen, name, None), "__code__", None)
    for name in ("_wait", "_internal_poll", "_try_wait")
) - {None}


def reap_interrupted_waits(handles: Iterable[Any]) -> None:
    """Reap the ended processes of the ``Popen`` objects whose ``wait()`` a signal interrupted
    in this thread, when the handler will not return to it (it raises).

    Such a ``wait()`` holds the ``Popen``'s wait lock, so its ``poll()`` answers "running"
    without looking, and the ``wait()`` never resumes: the process that was ended would stay a
    zombie. While no other thread is inside the ``Popen``'s waits, the lock is the interrupted
    frame's, and nobody else will reap it: it is reaped here, and its status given to the
    ``Popen`` (``returncode``). A process still running is left alone.
    """
    me = threading.get_ident()
    for handle in handles:
        lock = getattr(handle, "_waitpid_lock", None)
        if lock is None or handle.returncode is not None or not lock.locked():
            continue
        if any(_in_popen_wait(f) for ident, f in sys._current_frames().items() if ident != me):
            continue  # another thread waits for it, and reaps it
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(handle.pid, os.WNOHANG)
            if pid == handle.pid:
                handle.returncode = os.waitstatus_to_exitcode(status)


def _in_popen_wait(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code in _POPEN_WAITS:
            return True
        frame = frame.f_back
    return False


def _has_ended(leftover: Leftover, session_pid: int, reap: bool = True) -> bool:
    """Whether the process is gone, reaping it when it is our own zombie (with ``reap``)."""
    import psutil  # imported on first use: it takes 10 ms, and most runs never need it

    if leftover.handle is not None and _reap_through_handle(leftover.handle):
        return True
    state = procfs.state(leftover.pid)
    if state is None or not procfs.is_same_process(leftover.pid, leftover.create_time):
        return True
    if not procfs.is_zombie(leftover.pid):
        return False
    if not reap:
        return True
    try:
        parent = psutil.Process(leftover.pid).ppid()
    except psutil.Error:
        return True
    if parent == session_pid:
        if leftover.handle is not None:
            # It died between the handle's poll above and now: let the handle reap it, or its
            # Process/Popen would wait for ever for a status we took (ECHILD reads as running).
            _reap_through_handle(leftover.handle)
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(leftover.pid, os.WNOHANG)
    # A zombie of another parent is dead; its parent (or we, once it is orphaned) reaps it.
    return True


def _signal(leftover: Leftover, signum: int, ours: Container[int]) -> str | None:
    """Send ``signum`` if the pid is still ours (among ``ours``, the descendants of the session
    read once for a round of signals, and still the process that started at its create time);
    a reason when it was not sent."""
    import psutil  # imported on first use: it takes 10 ms, and most runs never need it

    if leftover.pid not in ours:
        return "not signalled: no longer a descendant of this pytest process"
    try:
        process = psutil.Process(leftover.pid)
        if not procfs.is_same_process(leftover.pid, leftover.create_time):
            return "not signalled: the pid now belongs to another process"
        # psutil checks again, right before the kill, that the pid was not reused since the
        # Process object was made.
        process.send_signal(signum)
    except psutil.NoSuchProcess:
        return "exited by itself"
    except psutil.AccessDenied:
        return "not signalled: permission denied"
    return None


def _wait(
    pending: list[Leftover], session_pid: int, timeout: float, reap: bool = True
) -> list[Leftover]:
    """Wait until the processes end or ``timeout`` passes; those still running."""

    def ended() -> bool:
        nonlocal pending
        pending = [item for item in pending if not _has_ended(item, session_pid, reap)]
        return not pending

    poll_until(ended, timeout)
    return pending


def end_processes(
    leftovers: Iterable[Leftover], session_pid: int, grace: float, *, exiting: bool = False
) -> dict[int, str]:
    """End the leftovers; how each ended: SIGTERM, SIGKILL, reaped, or why it was not signalled.

    ``exiting``: the pytest process ends right after (pytest-timeout's ``os._exit``), and this
    runs in another thread than the one running the test. Nothing then needs the pools' or
    the process objects' bookkeeping, which that other thread may be using: no pool is asked
    to ``terminate()`` (it joins the pool's threads, and may wait for a lock a killed worker
    held), nothing is reaped (a zombie goes with its parent), and the wait after SIGKILL,
    which cannot be refused, is short.
    """
    leftovers = list(leftovers)
    # A pool ends its workers in well under a second; four kill graces, at least 2 s, are ample.
    by_pool = set() if exiting else _terminate_pools(leftovers, max(2.0, 4 * grace))
    reap = not exiting
    outcome: dict[int, str] = {}
    to_term: list[Leftover] = []
    # One walk of the process tree per round, not one per process: hundreds of leftovers made
    # it quadratic (800 leaked children took 17 s to end).
    ours = procfs.descendants(session_pid)
    for leftover in leftovers:
        if leftover.pid in by_pool and _has_ended(leftover, session_pid):
            outcome[leftover.pid] = POOL_TERMINATED
            continue
        if procfs.is_zombie(leftover.pid):
            _has_ended(leftover, session_pid, reap)
            outcome[leftover.pid] = "reaped" if reap else "exited by itself"
            continue
        reason = _signal(leftover, signal.SIGTERM, ours)
        if reason is None:
            outcome[leftover.pid] = "SIGTERM"
            to_term.append(leftover)
        else:
            outcome[leftover.pid] = reason
    still_running = _wait(to_term, session_pid, grace, reap)
    ours = procfs.descendants(session_pid) if still_running else {}
    for leftover in still_running:
        reason = _signal(leftover, signal.SIGKILL, ours)
        outcome[leftover.pid] = "SIGKILL" if reason is None else reason
    kill_wait = EXIT_KILL_WAIT if exiting else KILL_WAIT
    for leftover in _wait(still_running, session_pid, kill_wait, reap):
        outcome[leftover.pid] = "still running after SIGKILL (uninterruptible?)"
    return outcome
