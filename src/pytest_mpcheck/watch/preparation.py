"""Every child the pytest process starts is prepared before the user's code runs (session side).

A fork child runs the at-fork callback, a spawn or forkserver child unpickles
:class:`~pytest_mpcheck.watch.childsetup.ChildSetup` with its process object (put there by the
wrapper of ``Process.start``, see :mod:`pytest_mpcheck.watch.origins`). Either way it answers
the stack signal by writing the stacks of all its threads to the session's stack file. That
covers ``Process`` of every context, the workers of ``Pool`` and ``ProcessPoolExecutor``, and
``os.fork``; a program that a child runs with ``exec`` (a ``subprocess``) is a program of its own,
read with py-spy where it is installed.

A spawn or forkserver child also reports the named resources it makes, and the module-level
``multiprocessing`` objects it made again, to the session's logs; every prepared child says
which ``Queue`` it began to feed (see :mod:`pytest_mpcheck.watch.childsetup`). No child keeps a
descriptor of the plugin's open.

What it costs a child: a ``sigaction``. The signal is a real-time one that is
only sent when a report needs the child's stack, after the test, to a process that the watch found
left over and checked is still that child (see :mod:`pytest_mpcheck._os.stacks`).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import threading
from collections.abc import Callable
from typing import Any

from pytest_mpcheck._os import atfork, procfs, scratch, sharedmap
from pytest_mpcheck._os.stackfile import stack_path
from pytest_mpcheck.watch import tasknotes
from pytest_mpcheck.watch.childsetup import ChildSetup, prepare

#: The session's message log: what prepared children say of themselves (see
#: :mod:`pytest_mpcheck.watch.childsetup`).
MESSAGES_NAME = "messages.log"

#: The session's feeder log: which queue each prepared child began to feed (see
#: :func:`pytest_mpcheck.watch.childsetup.watch_feeders`).
FEEDERS_NAME = "feeders.log"


class ChildPreparation:
    """The session's stack file and message log, and what prepares each new child."""

    def __init__(self) -> None:
        self.directory: str | None = None
        self._stack_path: str | None = None
        self._resource_log: str | None = None
        self._messages: str | None = None
        self._messages_read = 0
        self._forking: dict[int, tuple[Any, Any]] = {}
        """The queues of the pool or executor worker that each thread is forking."""
        self._feeders: str | None = None
        self._feeders_read = 0
        self._workers_prepared = False
        """Whether a pool's or executor's worker was prepared: only those write task notes."""

    @property
    def stack_path(self) -> str | None:
        """The session's stack file, where prepared children write their stacks."""
        return self._stack_path

    @property
    def feeder_log(self) -> str | None:
        """The session's feeder log, where prepared children note the queues they feed."""
        return self._feeders

    @property
    def installed(self) -> bool:
        """Whether children started now are prepared."""
        return self._stack_path is not None

    def install(self, resource_log: str | None) -> None:
        """Create the stack file and the message log; children started from now on are
        prepared (and report their named resources to ``resource_log``)."""
        self.directory = scratch.make_directory("stacks")
        self._stack_path = stack_path(self.directory)
        self._messages = os.path.join(self.directory, MESSAGES_NAME)
        self._feeders = os.path.join(self.directory, FEEDERS_NAME)
        # The children open them: creating a file costs more than opening one.
        for path in (self._stack_path, self._messages, self._feeders):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
        self._resource_log = resource_log
        atfork.register(self._after_fork_in_child)
        # The workers of a Pool or an executor map their task notes: forked ones inherit mmap's
        # lookup ready (see tasknotes).
        sharedmap.warm_up(tasknotes.NOTE_SIZE)

    def setup_for(self, process: Any, queues: tuple[Any, Any] | None) -> ChildSetup | None:
        """What to put in ``process`` (a spawn or forkserver one) before it starts; ``queues``:
        its task queues when it is a pool's or executor's worker (see
        :func:`tasknotes.worker_queues`)."""
        if self._stack_path is None:
            return None
        method = getattr(process, "_start_method", None)
        if method is None:  # multiprocessing.Process: the default context's method
            with contextlib.suppress(Exception):
                method = multiprocessing.get_start_method(allow_none=True)
        if queues is not None:
            self._workers_prepared = True
        # A child of mp_spawn checks its module-level objects itself, with mp_spawn's fix and as
        # the test's mode says (fixtures/spawn.py): told there, not twice.
        target = None if hasattr(process, "_mp_spec") else getattr(process, "_target", None)
        return ChildSetup(
            self._stack_path,
            self._resource_log,
            self._messages,
            target,
            method,
            queues,
            self._feeders,
        )

    def fork_setup(self, queues: tuple[Any, Any] | None) -> Callable[[], None] | None:
        """Before a process starts by fork: when it is a pool's or executor's worker (``queues``,
        its task queues, see :func:`tasknotes.worker_queues`), its at-fork callback (in the
        child, in the thread that forks) makes it note its tasks."""
        if self._stack_path is None or queues is None:
            return None
        self._workers_prepared = True
        ident = threading.get_ident()
        self._forking[ident] = queues

        def started() -> None:
            self._forking.pop(ident, None)

        return started

    def _after_fork_in_child(self) -> None:
        # Every fork child runs this: only a pool's or executor's worker has queues to note.
        path = self._stack_path
        if path is None:
            return
        forking = self._forking
        queues = None
        if forking:
            queues = forking.get(threading.get_ident())
            forking.clear()
        # The feeders: the wrapper the session put in place is inherited (see queues).
        prepare(path, queues=queues)

    def forget(self, pid: int, create_time: float | None, read: bool = False) -> str | None:
        """The process ``pid`` that started at ``create_time`` is gone: remove its task note, if
        it was a pool's or executor's worker. With ``read``: first say what it was running (see
        :mod:`pytest_mpcheck.watch.tasknotes`); ``None`` when it was no such worker."""
        # Called for every child that ends: nothing to do until a worker was prepared.
        if self.directory is None or not self._workers_prepared:
            return None
        start = procfs.ticks_of(create_time)
        if start is None:
            return None
        note = tasknotes.read_note(self.directory, pid, start) if read else None
        tasknotes.forget_note(self.directory, pid, start)
        return None if note is None else tasknotes.describe(note)

    def read_messages(self) -> list[tuple[int, str]]:
        """What children wrote to the message log since the last call: ``(pid, message)``."""
        if self._messages is None:
            return []
        lines, self._messages_read = scratch.read_new_lines(self._messages, self._messages_read)
        found = []
        for pid, text in _by_pid(lines):
            with contextlib.suppress(ValueError):
                found.append((pid, str(json.loads(text))))
        return found

    def read_feeders(self) -> list[tuple[int, int | None, str]]:
        """What children wrote to the feeder log since the last call: ``(pid, start, queue
        key)``, ``start`` the child's start in clock ticks since boot (``None`` if unknown)."""
        if self._feeders is None:
            return []
        lines, self._feeders_read = scratch.read_new_lines(self._feeders, self._feeders_read)
        found = []
        for pid, text in _by_pid(lines):
            start, _, key = text.partition("\t")
            if key:
                found.append((pid, int(start) if start.isdigit() else None, key))
        return found

    def uninstall(self) -> None:
        """Stop preparing children and remove the files (children still alive keep theirs
        open)."""
        atfork.unregister(self._after_fork_in_child)
        self._stack_path = self._messages = self._feeders = None
        if self.directory is not None:
            with contextlib.suppress(OSError):
                scratch.remove_directory(self.directory)
            self.directory = None


def _by_pid(lines: list[str]) -> list[tuple[int, str]]:
    """The ``pid<TAB>text`` lines of a log that prepared children append to, as ``(pid, text)``;
    a line without a pid or a text is left out."""
    found = []
    for line in lines:
        pid, _, text = line.partition("\t")
        if pid.isdigit() and text:
            found.append((int(pid), text))
    return found
