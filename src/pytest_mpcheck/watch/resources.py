"""Named semaphores and shared memory that a test made and left behind.

``multiprocessing`` hands every named resource it creates to its resource tracker: a
``SharedMemory`` segment (``shared_memory``), and under spawn and forkserver the semaphore of each
``Lock``, ``Semaphore``, ``Event``... (``semaphore``). Each is unregistered when it is freed:
``SharedMemory.unlink()``, or a lock's finalizer. What is still registered when the session ends,
the tracker frees with a warning on the terminal that names no test ("There appear to be N leaked
shared_memory objects"), long after the test that caused it.

The watch sees these messages where they are sent: it wraps ``ResourceTracker._send`` in the pytest
process, where its forked children inherit the wrapper, and in every spawn or forkserver child
that the pytest process starts (:mod:`pytest_mpcheck.watch.childsetup`, and
:mod:`pytest_mpcheck.fixtures.bootstrap` for the fixtures' children; the child side is
:mod:`pytest_mpcheck.watch.resourcelog`). The pytest process keeps its own registrations in
memory; a child appends one line per message to the session's resource log, which is read after
each test. After the test, what the test registered and nobody unregistered is a leak when it
still exists:

- a shared memory segment that was never unlinked (``close()`` alone does not free it);
- a semaphore registered by a child that is gone: its finalizer never ran (the child was killed, or
  left through ``os._exit``), so its name stays until the tracker's shutdown.

A semaphore of the pytest process itself is not counted: its lock object is still alive (a
finalizer unregisters it as soon as it is collected), and it is freed when pytest exits.

Each leak is reported with where it was registered, and freed (unlinked and unregistered from
the tracker, so that the session ends quietly) when nobody can use it any more. A later test may
attach to a segment by its name: in warn mode nothing is freed while the session runs, and in
fail mode a segment that a live ``SharedMemory`` object of the pytest process still refers to (a
module's global) is kept. Both are handed to the session, which frees them at its end. A child of
a child started by spawn or forkserver (a fresh interpreter that the plugin did not prepare) is
not seen.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker
from types import FrameType
from typing import TYPE_CHECKING, Any

from pytest_mpcheck._os import procfs, scratch
from pytest_mpcheck.findings import ResourceFinding
from pytest_mpcheck.watch.resourcelog import (
    SEMAPHORE,
    SHARED_MEMORY,
    call_site,
    wrap,
    write_log_line,
)

if TYPE_CHECKING:
    from pytest_mpcheck.watch.ownership import Holder


def _exists(kind: str, name: str) -> bool:
    """Whether the resource is still in the file system (Linux: ``/dev/shm``)."""
    base = name.lstrip("/")
    path = f"/dev/shm/sem.{base}" if kind == SEMAPHORE else f"/dev/shm/{base}"
    if not os.path.isdir("/dev/shm"):
        return True  # cannot tell: trust the tracker's view
    return os.path.exists(path)


def _ended(pid: int) -> bool:
    """Whether the process is gone, or a zombie."""
    return procfs.state(pid) in (None, "Z")


@dataclass
class Registration:
    """A resource registered with the tracker and not unregistered yet."""

    kind: str
    name: str
    pid: int
    """The process that registered it."""
    site: str
    """``file:line`` of the code that made it."""
    owner: str
    scope: object | None
    own_tracker: bool = False
    """Registered with a tracker the registering child started for itself (its parent had
    none running when it forked): that tracker frees it, with a warning, when the child ends."""


class ResourceWatch:
    """Follows the registrations of one run; see the module docstring."""

    def __init__(self, owner_of: Callable[[int], tuple[str, object | None]]) -> None:
        self._owner_of = owner_of
        """``pid -> (owner, scope)``: who a process (or, for the pytest process, its current
        work) belongs to."""
        self.live: dict[tuple[str, str], Registration] = {}
        self.handed_over: dict[tuple[str, str], Registration] = {}
        """Leaks that a test reported and left in place, for a later test may still use them:
        freed when the session ends, unless someone frees them before."""
        self.log_path: str | None = None
        self._offset = 0
        self._pid = os.getpid()
        self._send: Callable[..., Any] | None = None
        """The tracker's ``_send`` as it was before :meth:`start` wrapped it."""
        self._unwrap: Callable[[], None] | None = None
        self._reading = threading.RLock()
        self._in_read = False
        """A read is under way in the thread that holds :attr:`_reading`."""

    def start(self) -> None:
        """Wrap the tracker and open the run's resource log."""
        # Children open it to append a line, and close it: none holds a descriptor of the
        # plugin's (a forked child would inherit one the pytest process kept open).
        self.log_path = scratch.make_file("resources", ".log")
        self._pid = os.getpid()
        self._send, self._unwrap = wrap(self._note)

    def _note(self, tracker: Any, op: str, kind: str, name: str, frame: FrameType) -> None:
        if os.getpid() == self._pid:
            # What the children logged came first: a segment a pool's worker made and returned
            # by name, that the test then unlinked, must be seen made before it is unlinked.
            site = call_site(frame) if op == "R" else ""
            with self._reading:
                self.read_log()
                self._event(op, kind, name, site)
        elif self.log_path is not None:  # a forked child: the run reads its lines after the test
            write_log_line(self.log_path, tracker, op, kind, name, frame)

    def stop(self) -> None:
        """Put the tracker's ``_send`` back, close and remove the log."""
        if self._unwrap is not None:
            self._unwrap()
            self._unwrap = None
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)

    def _event(
        self, op: str, kind: str, name: str, site: str, pid: int | None = None, tracker: int = 0
    ) -> None:
        key = (kind, name)
        if op == "U":
            self.live.pop(key, None)
            self.handed_over.pop(key, None)
        elif key not in self.live and key not in self.handed_over:
            # Attaching registers again (before 3.13): the first counts.
            pid = os.getpid() if pid is None else pid
            owner, scope = self._owner_of(pid)
            own = tracker != 0 and tracker != _session_tracker()
            self.live[key] = Registration(kind, name, pid, site, owner, scope, own)

    def read_log(self) -> None:
        """Take in the lines the children appended since the last read.

        Called as a test's teardown ends, while the records of its processes (who owns each) are
        still at hand, and before each registration or unregistration of the pytest process
        itself, so that the two are taken in the order they happened.
        """
        if self.log_path is None:
            return
        # Each line is taken once, in order: another thread's registration waits for a read
        # under way (a few lines of a file); a finalizer that unregisters in the middle of this
        # thread's read (the garbage collector runs it anywhere) does not read again.
        with self._reading:
            if self._in_read:
                return
            self._in_read = True
            try:
                lines, self._offset = scratch.read_new_lines(self.log_path, self._offset)
                for line in lines:
                    parts = line.split("\t")
                    if len(parts) == 6 and parts[1].isdigit() and parts[5].isdigit():
                        op, pid, kind, name, site, tracker = parts
                        self._event(op, kind, name, site, int(pid), int(tracker))
            finally:
                self._in_read = False

    def _leaked(self, registration: Registration) -> bool:
        if registration.own_tracker:
            # Its tracker frees it as the child ends, at a moment that races this look: that the
            # child ended without unregistering it is the leak.
            return _ended(registration.pid)
        if not _exists(registration.kind, registration.name):
            return False  # freed by a process the plugin does not see
        if registration.kind == SEMAPHORE:
            # Only a dead child's semaphore is lost: a live lock object frees its own.
            return registration.pid != self._pid and _ended(registration.pid)
        return True

    def _conclude(self, chosen: Callable[[Registration], bool], free: str) -> list[ResourceFinding]:
        """Report the leaks among the ``chosen`` registrations; ``free`` says which to free:
        :data:`FREE_ALL`, :data:`FREE_UNUSED` or :data:`FREE_NONE`. Those not freed (but by a
        child's own tracker) are handed to the session."""
        self.read_log()
        leaks = [
            (key, registration)
            for key, registration in list(self.live.items())
            if chosen(registration) and self._leaked(registration)
        ]
        holders: dict[str, Holder] = {}
        if free == FREE_UNUSED:
            held = [r.name for _, r in leaks if r.kind == SHARED_MEMORY and not r.own_tracker]
            if held:
                from pytest_mpcheck.watch.ownership import segment_holders  # only for a leak

                holders = segment_holders(held)
        findings = []
        for key, registration in leaks:
            # (a finalizer that segment_holders' collection ran may have unregistered it)
            self.live.pop(key, None)
            holder = holders.get(registration.name) if registration.kind == SHARED_MEMORY else None
            keep = not registration.own_tracker and (free == FREE_NONE or holder is not None)
            if keep:
                self.handed_over[key] = registration
            findings.append(
                self._finding(
                    registration,
                    freed=not registration.own_tracker
                    and not keep
                    and _free(registration.kind, registration.name, self._send),
                    own_tracker=registration.own_tracker,
                    handed_over=keep,
                    held_by=holder.describe() if holder is not None else None,
                )
            )
        return findings

    def _finding(self, registration: Registration, **details: Any) -> ResourceFinding:
        """The finding for a leaked ``registration``; ``details``: how it ended, who holds it."""
        return ResourceFinding(
            kind=registration.kind,
            name=registration.name,
            pid=registration.pid,
            site=registration.site,
            owner=registration.owner,
            by_test_process=registration.pid == self._pid,
            **details,
        )

    def finish_test(self, nodeid: str, end: bool = True) -> list[ResourceFinding]:
        """What the test registered and left behind (call after the process watch ended its
        leftovers: their registrations are final then).

        With ``end`` (mode fail), what nobody in the pytest process holds any more is freed; a
        segment that a live object still refers to is kept. Without (mode warn), nothing is
        freed: a later test may still attach to it by name.
        """
        if not self.live:
            return []  # the common case (the log was read as the teardown ended)
        free = FREE_UNUSED if end else FREE_NONE
        return self._conclude(lambda r: r.owner == nodeid and r.scope is None, free)

    def forget_test(self, nodeid: str) -> None:
        """Stop following what a test registered (its mode is ``off``): it is not checked."""
        for key, registration in list(self.live.items()):
            if registration.owner == nodeid and registration.scope is None:
                del self.live[key]

    def finish_scope(self, scope: object, end: bool = True) -> list[ResourceFinding]:
        """What a wider-scoped fixture registered and left behind, once it is finalized
        (``end`` as for :meth:`finish_test`)."""
        return self._conclude(lambda r: r.scope is scope, FREE_UNUSED if end else FREE_NONE)

    def finish_session(self) -> list[ResourceFinding]:
        """Everything still left at the end of the session, freed in every mode; the leaks that
        tests reported and left in place come last, with ``reported_by`` set."""
        findings = self._conclude(lambda r: True, FREE_ALL)
        handed_over, self.handed_over = self.handed_over, {}
        for registration in handed_over.values():
            if not _exists(registration.kind, registration.name):
                continue  # freed by a process the plugin does not see
            findings.append(
                self._finding(
                    registration,
                    freed=_free(registration.kind, registration.name, self._send),
                    reported_by=registration.owner,
                )
            )
        return findings


#: What :meth:`ResourceWatch._conclude` frees: every leak (the end of the session), those that
#: nobody in the pytest process still holds (mode fail), none (mode warn).
FREE_ALL = "all"
FREE_UNUSED = "unused"
FREE_NONE = "none"


def _session_tracker() -> int:
    """The pid of the pytest process's resource tracker (0 while it has none)."""
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    return getattr(tracker, "_pid", None) or 0


def _free(kind: str, name: str, send: Callable[..., Any] | None) -> bool:
    """Unlink a leaked resource and take it off the tracker's list (it would warn at exit).

    ``send`` is the ``_send`` that the run wrapped: the run does not hear its own unregistration,
    and an outer run (pytester's in-process runs) does.
    """
    cleanup: Any = getattr(resource_tracker, "_CLEANUP_FUNCS", {}).get(kind)
    if cleanup is None:
        return False
    try:
        cleanup(name)
    except OSError:
        return False
    if send is not None:
        with contextlib.suppress(Exception):
            tracker = getattr(resource_tracker, "_resource_tracker")  # noqa: B009
            send(tracker, "UNREGISTER", name, kind)
    return True
