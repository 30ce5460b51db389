"""Queues that a child fed and that a signal then ended: no longer to be trusted (session side).

The ``multiprocessing`` documentation's programming guidelines: terminating a process "is liable
to cause any shared resources (locks, semaphores, pipes and queues) currently being used by the
process to become broken or unavailable to other processes", and "if a process is killed while it
is trying to read or write a pipe/queue, the data in the queue is likely to become corrupted".

A ``Queue``'s ``put()`` only appends to a buffer of the putting process; the queue's feeder thread,
which the first ``put()`` starts, pickles each item and writes it to the queue's pipe, holding the
queue's write lock. A process ended from outside stops that thread wherever it is: what it had
not written yet is lost (and a ``JoinableQueue`` still counts it unfinished), a message it was
writing is left half-written, and the write lock may stay held.

How the plugin finds it, with no cost per ``put()``:

- the pytest process notes where each ``Queue`` (and ``JoinableQueue``) is made, by a wrapper of
  ``Queue.__init__``, under :func:`~pytest_mpcheck.watch.childsetup.queue_key` (from the
  semaphore of its read lock), which every process that shares the queue knows the same, under
  every start method;
- each prepared child notes in the session's feeder log, once per queue, that it started the
  queue's feeder thread (:func:`pytest_mpcheck.watch.childsetup.watch_feeders`; a fork child
  inherits the wrapper from the pytest process, where it notes nothing);
- after each test, the ends of the children are read (:attr:`ProcessWatch.gone`): one that fed a
  queue that the test process made and that died of a signal which the plugin did not send is a
  :class:`~pytest_mpcheck.findings.TerminatedFeeder`.

A ``SimpleQueue`` has no feeder thread: its ``put()`` writes into the pipe before it returns, so a
child ended after its ``put()`` returned took nothing with it. Only a signal during a ``put()``
harms it, which only a mark on every ``put()`` could tell: it is not watched.
"""

from __future__ import annotations

import contextlib
import functools
import linecache
import os
import re
import sys
import weakref
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_mpcheck._os import callsite, procfs
from pytest_mpcheck.findings import ChildDeath, TerminatedFeeder
from pytest_mpcheck.watch.childsetup import queue_key, watch_feeders_of_forks
from pytest_mpcheck.watch.origins import StartRecord

#: ``name = <...>.Queue(`` at the start of a line: a single target (a name or an attribute), then
#: a call of ``Queue`` or ``JoinableQueue`` through dotted names and simple calls, such as
#: ``multiprocessing.get_context("spawn").Queue(``. Any other form names no variable.
_ASSIGNED = re.compile(
    r"\s*(?P<name>[A-Za-z_][\w.]*)\s*(?::[^=]*)?=\s*"
    r"(?:[A-Za-z_]\w*(?:\([^()]*\))?\.)*(?:Joinable)?Queue\("
)


@dataclass
class QueueMade:
    """Where the test process made a queue."""

    kind: str
    """Its class: ``Queue``, ``JoinableQueue`` (or a subclass's name)."""
    site: str | None
    """``file:line`` of the user's code that made it."""
    reference: weakref.ref[Any]
    """The queue, while it lives (see :meth:`QueueWatch.forget_collected`)."""


class QueueWatch:
    """The queues the test process makes, and which children fed them; see the module
    docstring."""

    def __init__(self, rootdir: Path) -> None:
        self._root = str(rootdir)
        self._root_prefix = self._root.rstrip(os.sep) + os.sep
        self.made: dict[str, QueueMade] = {}
        """The queues made in this process, by :func:`queue_key`."""
        self._collected: list[str] = []
        """Keys of queues collected since the last :meth:`forget_collected`."""
        self._undo: Callable[[], None] | None = None

    # -- the queues made ----------------------------------------------------------------------

    def install(self, feeder_log: str | None = None) -> None:
        """Note each ``Queue`` (``JoinableQueue``) made from now on, and where; and make each
        child forked from now on note in ``feeder_log`` the queues it feeds.

        Each run wraps what it finds, as the resource watch does: an in-process run inside a
        test wraps the outer run's wrapper. Should someone else have wrapped it after us when we
        undo, theirs stays and ours only passes the call on.
        """
        import multiprocessing.queues

        cls = multiprocessing.queues.Queue
        original: Callable[..., None] = cls.__init__
        active = True
        note = self._note

        @functools.wraps(original)
        def __init__(queue: Any, *args: Any, **kwargs: Any) -> None:
            original(queue, *args, **kwargs)
            if active:
                with contextlib.suppress(Exception):  # the queue is made whatever befalls us
                    note(queue, sys._getframe(1))

        def undo() -> None:
            nonlocal active
            active = False
            if cls.__init__ is __init__:
                setattr(cls, "__init__", original)  # noqa: B010

        setattr(cls, "__init__", __init__)  # noqa: B010
        undo_feeders = None if feeder_log is None else watch_feeders_of_forks(feeder_log)

        def undo_all() -> None:
            undo()
            if undo_feeders is not None:
                undo_feeders()

        self._undo = undo_all

    def uninstall(self) -> None:
        """Stop noting queues, and forget them."""
        if self._undo is not None:
            self._undo()
            self._undo = None
        self.made.clear()

    def _note(self, queue: Any, frame: Any) -> None:
        key = queue_key(queue)
        if key is None:
            return
        site = callsite.user_site(frame, self._root_prefix)
        collected = self._collected
        self.made[key] = QueueMade(
            type(queue).__name__, site, weakref.ref(queue, lambda _: collected.append(key))
        )

    def collected_any(self) -> bool:
        """Whether a queue was collected since the last :meth:`forget_collected`."""
        return bool(self._collected)

    def forget_collected(self) -> None:
        """Forget the queues collected since the last call. Called after a test's ends were
        read: a queue that a test made and dropped is still named in that test's report."""
        collected = self._collected[:]  # in place: the callbacks of live queues append to it
        del self._collected[: len(collected)]
        for key in collected:
            made = self.made.get(key)
            if made is not None and made.reference() is None:
                del self.made[key]

    # -- the children that fed them -----------------------------------------------------------

    def note_feeders(
        self, lines: Iterable[tuple[int, int | None, str]], children: Iterable[StartRecord]
    ) -> None:
        """Take in the feeder log's ``(pid, start, key)`` lines, each noted on the record of
        the child that wrote it (:attr:`StartRecord.fed_queues`): of ``children`` (the test
        process's own, not a grandchild), and of queues that this process made."""
        records: dict[int, list[StartRecord]] = {}
        for record in children:
            records.setdefault(record.pid, []).append(record)
        for pid, start, key in lines:
            if key not in self.made:
                continue
            writer = _writer_of(records.get(pid, ()), start)
            if writer is not None and key not in writer.fed_queues:
                writer.fed_queues += (key,)

    def ended(
        self, gone: Iterable[tuple[StartRecord, int | None]], ended_by_mpcheck: Collection[int]
    ) -> list[TerminatedFeeder]:
        """The children among ``gone`` (with their exit status) that fed a queue and died of a
        signal that the plugin did not send (``ended_by_mpcheck``): each queue it fed. Every
        child of ``gone`` is forgotten."""
        found = []
        for record, status in gone:
            keys = record.fed_queues
            if not keys or status is None or status >= 0 or record.is_among(ended_by_mpcheck):
                continue
            for key in keys:
                made = self.made.get(key)
                if made is None:
                    continue
                found.append(
                    TerminatedFeeder(
                        queue_key=key,
                        queue_kind=made.kind,
                        queue_site=made.site,
                        queue_name=self._variable(made.site),
                        child=ChildDeath(
                            pid=record.pid,
                            name=record.name,
                            started_at=record.site,
                            started_by=record.started_by,
                            owner=record.owner,
                            signal=-status,
                        ),
                    )
                )
        return found

    def _variable(self, site: str | None) -> str | None:
        """The name the queue was assigned to on the line that made it, when that line is a
        plain assignment of the call (``queue = ctx.Queue()``); else ``None``."""
        if site is None:
            return None
        path, _, line = site.rpartition(":")
        if not line.isdigit():
            return None
        filename = path if os.path.isabs(path) else os.path.join(self._root, path)
        match = _ASSIGNED.match(linecache.getline(filename, int(line)))
        return match["name"] if match else None


def _writer_of(records: Iterable[StartRecord], start: int | None) -> StartRecord | None:
    """Which of ``records`` (of one pid) wrote a feeder line, from the start the line gives: the
    one that started then. A record whose start is not known (a child that ended before its test
    did, its create time never read) stands for the process that had the pid first; the start of
    any later one given that pid was read when it took the pid (see :meth:`OriginRecorder.note`).
    """
    unknown = None
    for record in records:
        ticks = procfs.ticks_of(record.create_time)
        if ticks is None:
            unknown = record
        elif start is None or ticks == start:
            return record
    return unknown
