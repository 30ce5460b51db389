"""What would hold pytest's exit: children that no test or fixture started and never joined, and
queue feeder threads that write to a pipe nobody reads.

A ``conftest.py`` at the rootdir is imported before the plugin begins to watch. A non-daemonic
``multiprocessing`` child that it starts there, and that nobody joins, is waited for as Python
exits (each multiprocessing family joins its children at exit, with no timeout): pytest then
never ends, and neither does the CI job that runs it. No test or fixture can be blamed for such a
child, and the user's own code may still stop it at the end (``pytest_unconfigure``, an
``atexit`` function): it is looked at as Python exits, after those and before multiprocessing
joins its children, and only then, if it still runs, ended and reported on standard error.

The same holds for such a child that a hook (``pytest_sessionstart``) or a module, as it was
collected, started and that still runs when the session ends: the session's end hands it to the
guard rather than end it before ``pytest_unconfigure`` (:meth:`ExitGuard.watch_until_exit`). As
Python exits, a child that the guard ends goes with its own children.

The guard's ``atexit`` function is registered before the conftest files are imported, so that it
runs after the functions they register (``atexit`` runs the last registered first), and after
``multiprocessing.util`` registered its own (the plugin imports it), so that it runs before it.
(A child of ``multiprocess`` or ``billiard``, whose exit function the conftest files register,
moves it to the watch's start, so that it runs before that family's.)
It holds pids, create times and names, nothing of the run: an in-process run's guard keeps no
config alive.

A ``multiprocessing`` queue's ``put()`` hands the item to the queue's feeder thread, which writes it
to the queue's pipe. Once the pipe is full (64 KiB on Linux), the thread waits for a reader; with
none left (the test dropped the queue, or its reader ended), it waits for ever, and as Python
exits, multiprocessing joins it, with no timeout, after it has joined its children (the docs'
programming guidelines: "joining processes that use queues"). When the session ends with feeder
threads still running, one ``Finalize`` of the family's own runs right before those joins: a
thread still writing after a short wait is not waited for (its data could be read by nobody), and
is reported on standard error with where its queue's first ``put()`` was.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pytest_mpcheck._os import procfs
from pytest_mpcheck.watch.origins import OriginRecorder

#: The families that join their children and their queue feeders at exit: those whose process
#: class the recorder wraps.
FAMILIES = OriginRecorder.PROCESS_FAMILIES

#: How long, in all, the feeder threads still running at exit may take to finish writing.
FEEDER_WAIT = 1.0

#: Where a Finalize runs at exit: after the children are joined and before the queue feeders
#: are (multiprocessing's ``Queue`` joins its feeder thread at exit priority -5).
_BEFORE_FEEDER_JOINS = -4


def families_children() -> list[tuple[str, Any]]:
    """Each imported multiprocessing family, with its set of the children this process started
    and has not joined yet (``multiprocessing.process._children``)."""
    found = []
    for family in FAMILIES:
        children = getattr(sys.modules.get(f"{family}.process"), "_children", None)
        if children is not None:
            found.append((family, children))
    return found


def joined_at_exit(session_pid: int) -> dict[int, tuple[str, str]]:
    """The non-daemonic children that a multiprocessing family started in this process and has
    not joined, by pid, each with its family and its name: at the interpreter's exit, the
    family joins each of them, with no timeout.

    The process objects are only read: asking one whether it is alive would wait for it, and
    take an exit status that its owner may still read.
    """
    found: dict[int, tuple[str, str]] = {}
    for family, children in families_children():
        for process in list(children):
            pid = getattr(getattr(process, "_popen", None), "pid", None)
            if (
                isinstance(pid, int)
                and getattr(process, "_parent_pid", None) == session_pid
                and not getattr(process, "daemon", True)
            ):
                found[pid] = (family, str(getattr(process, "name", "")))
    return found


class ExitGuard:
    """Ends, as Python exits, the never-joined children that no test or fixture started."""

    def __init__(self) -> None:
        self.session_pid = os.getpid()
        self.children_before = frozenset(procfs.children(self.session_pid))
        """The children the pytest process had before the run imported its conftest files: the
        caller's (an in-process run's), or a shell's jobs inherited through ``exec``. Never the
        run's to end."""
        self.grace = 0.0
        self.watched: dict[int, tuple[float, str, str]] = {}
        """The non-daemonic children started after the run began and before the watch did,
        by pid, with their create time, family and name."""

    def install(self) -> None:
        """Register the exit function; do it before the conftest files are imported."""
        atexit.register(self.at_exit)

    def watch_from(self, baseline: frozenset[int], grace: float) -> None:
        """Note the children to look at when Python exits: of the descendants alive when the
        watch began (``baseline``), those that were not children before the run began and that
        a multiprocessing family would join at exit. The exit function stays registered where
        it is until the run's end (:meth:`release_if_idle`): the session's end may hand it more
        (:meth:`watch_until_exit`), which it must still look at after the conftest files'
        ``atexit`` functions."""
        self.grace = grace
        started = baseline - self.children_before
        if started:
            unjoined = joined_at_exit(self.session_pid)
            for pid in started.intersection(unjoined):
                created = procfs.create_time(pid)
                if created is not None:
                    self.watched[pid] = (created, *unjoined[pid])
        if {family for _, family, _ in self.watched.values()} - {"multiprocessing"}:
            self._run_before_other_families()

    def _run_before_other_families(self) -> None:
        # Another family (multiprocess, billiard), imported by the conftest files, joins its
        # children in an exit function registered after this one, which runs first: this one
        # must then run before it, at the cost of running before the functions that those
        # files registered too.
        atexit.unregister(self.at_exit)
        atexit.register(self.at_exit)

    def release_if_idle(self) -> None:
        """At the run's end: with nothing to look at, the exit function goes (an in-process
        run's guard is not kept until the process exits)."""
        if not self.watched:
            atexit.unregister(self.at_exit)

    def watch_until_exit(self, pid: int, created: float, family: str, name: str) -> None:
        """Look at ``pid`` too as Python exits: a child that no test or fixture started (a hook,
        a module as it was collected), still running at the session's end, that the code which
        started it may still stop (``pytest_unconfigure``, an ``atexit`` function)."""
        self.watched[pid] = (created, family, name)
        if family != "multiprocessing":
            self._run_before_other_families()

    def still_running(self) -> dict[int, tuple[float, str, str]]:
        """Of the watched children, those still running and still unjoined: what would hold the
        exit. Each with its create time, family and name."""
        if not self.watched or os.getpid() != self.session_pid:
            return {}
        unjoined = joined_at_exit(self.session_pid)
        return {
            pid: watched
            for pid, watched in self.watched.items()
            if pid in unjoined
            and procfs.is_same_process(pid, watched[0])
            and not procfs.is_zombie(pid)
        }

    def at_exit(self) -> None:
        """End what would hold the exit, and say so on standard error. Never raises: this runs
        after pytest has set its exit status, which an error here must not change."""
        try:
            self._end_what_holds_the_exit()
        except Exception:
            from pytest_mpcheck.errors import internal_error

            internal_error("ending what would hold pytest's exit")

    def _end_what_holds_the_exit(self) -> None:
        running = self.still_running()
        if not running:
            return
        from pytest_mpcheck import report
        from pytest_mpcheck.watch.process_watch import describe
        from pytest_mpcheck.watch.terminate import Leftover, end_processes

        infos = []
        for pid, (_, family, name) in sorted(running.items(), key=lambda item: item[1][0]):
            info = describe(pid, "")
            if info is None:
                continue
            info.name = name or info.name
            info.started_by = f"{family}.Process.start"
            infos.append(info)
        # Their own children (a server's workers) go with them: nothing would end them after
        # pytest, and they were left running with their parent at the session's end.
        below = {
            pid: parent for root in running for pid, parent in procfs.descendants(root).items()
        }
        for pid in sorted(below):
            info = describe(pid, "")
            if info is None or info.is_zombie:
                continue
            info.started_by = f"process {below[pid]}"
            infos.append(info)
        if not infos:
            return
        # As at pytest-timeout's os._exit: nothing is reaped, so that multiprocessing's join,
        # which runs next, still reads each child's exit status.
        outcome = end_processes(
            [Leftover(info.pid, info.create_time) for info in infos],
            self.session_pid,
            self.grace,
            exiting=True,
        )
        _write(report.format_ended_at_exit([(info, outcome.get(info.pid, "")) for info in infos]))


def _write(text: str) -> None:
    stream = sys.__stderr__
    if stream is None:
        return
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass  # standard error is closed: nobody would read it


@dataclass
class FeederNote:
    """A queue feeder thread still running when the session ended, as the report names it."""

    thread: weakref.ref[threading.Thread]
    site: str | None
    """Where it was started: the first ``put()`` of its queue."""
    owner: str | None
    """The test or fixture that ran that ``put()``."""


def _feeder_joins(util: Any) -> Iterator[tuple[Any, threading.Thread]]:
    """The exit joins of queue feeder threads that a family's ``util`` module will make, each
    with its thread, while that thread runs (in this process: a fork child ignores them)."""
    registry = getattr(util, "_finalizer_registry", None)
    if not isinstance(registry, dict):
        return
    for finalizer in list(registry.values()):
        callback = getattr(finalizer, "_callback", None)
        if getattr(callback, "__name__", None) != "_finalize_join":
            continue
        if getattr(finalizer, "_pid", None) != os.getpid():
            continue
        args = getattr(finalizer, "_args", None) or ()
        thread = args[0]() if args and isinstance(args[0], weakref.ref) else None
        if isinstance(thread, threading.Thread) and thread.is_alive():
            yield finalizer, thread


def _waiting_items(thread: threading.Thread, queues: Any) -> int | None:
    """How many items a feeder thread has still to write after the one it writes: those in its
    buffer (the thread's first argument) but the sentinel that a dropped queue adds."""
    buffer = getattr(thread, "_args", (None,))[0]
    if not isinstance(buffer, Iterable):
        return None
    sentinel = getattr(queues, "_sentinel", None)
    return sum(1 for item in list(buffer) if item is not sentinel)


def guard_feeders(
    thread_start: Callable[[threading.Thread], tuple[str | None, str | None]],
) -> None:
    """At the session's end: if queue feeder threads still run, have each family check them
    right before it joins them at exit (see the module docstring). ``thread_start`` tells where
    and by whom a thread was started (:meth:`OriginRecorder.thread_start`)."""
    for family in FAMILIES:
        util = sys.modules.get(f"{family}.util")
        notes = {
            id(thread): FeederNote(weakref.ref(thread), *thread_start(thread))
            for _, thread in _feeder_joins(util)
        }
        if util is not None and notes:
            util.Finalize(
                None, _defuse_feeders, args=(family, notes), exitpriority=_BEFORE_FEEDER_JOINS
            )


def _defuse_feeders(family: str, notes: dict[int, FeederNote]) -> None:
    """At exit, before ``family`` joins its queue feeder threads: let them finish writing for a
    short while; those still writing then are not waited for, and are reported (``notes``: what
    the session's end knew of them, by thread id). Never raises."""
    try:
        stuck = []
        deadline = time.monotonic() + FEEDER_WAIT
        for finalizer, thread in list(_feeder_joins(sys.modules.get(f"{family}.util"))):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                finalizer.cancel()
                stuck.append(thread)
        if not stuck:
            return
        from pytest_mpcheck import report

        queues = sys.modules.get(f"{family}.queues")
        lines = []
        for thread in stuck:
            note = notes.get(id(thread))
            if note is not None and note.thread() is not thread:
                note = None  # another thread had that id
            lines.append(
                report.describe_feeder(
                    thread.name,
                    note.site if note is not None else None,
                    note.owner if note is not None else None,
                    _waiting_items(thread, queues),
                )
            )
        _write(report.format_feeders_at_exit(lines))
    except Exception:
        from pytest_mpcheck.errors import internal_error

        internal_error("looking at the queue feeders that would hold pytest's exit")
