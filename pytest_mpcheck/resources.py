"""Named semaphores and shared memory that a test made and left behind.

``multiprocessing`` hands every named resource it creates to its resource tracker: a
``SharedMemory`` segment (``shared_memory``), and under spawn and forkserver the semaphore of each
``Lock``, ``Semaphore``, ``Event``... (``semaphore``). Each is unregistered when it is freed:
``SharedMemory.unlink()``, or a lock's finalizer. What is still registered when the session ends,
the tracker frees with a warning on the terminal that names no test ("There appear to be N leaked
shared_memory objects"), long after the test that caused it.

The watch sees these messages where they are sent: it wraps ``ResourceTracker._send`` in the pytest
process, where its forked children inherit the wrapper, and in the children that the fixtures start
(:mod:`pytest_mpcheck.bootstrap`). The pytest process keeps its own registrations in memory; a child
appends one line per message to the session's resource log, which is read after each test. After the
test, what the test registered and nobody unregistered is a leak when it still exists:

- a shared memory segment that was never unlinked (``close()`` alone does not free it);
- a semaphore registered by a child that is gone: its finalizer never ran (the child was killed, or
  left through ``os._exit``), so its name stays until the tracker's shutdown.

A semaphore of the pytest process itself is not counted: its lock object is still alive (a
finalizer unregisters it as soon as it is collected), and it is freed when pytest exits.

Each leak is freed (unlinked and unregistered from the tracker, so that the session ends quietly)
and reported with where it was registered. Children started with spawn or forkserver outside the
fixtures run no code of the plugin: their resources are not seen.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker
from typing import Any

from pytest_mpcheck import procfs

SHARED_MEMORY = "shared_memory"
SEMAPHORE = "semaphore"
_KINDS = (SHARED_MEMORY, SEMAPHORE)


#: The session's log, for the children that inherit or install the wrapper (``-1``: none).
_log_fd = -1
#: The pytest process's own registrations go here instead of the log: ``(op, kind, name, site)``.
_own_events: Callable[[str, str, str, str], None] | None = None
_session_pid = -1
_original_send: Callable[..., Any] | None = None


def _call_site() -> str:
    """``file:line`` of the user's code that made the resource."""
    from pytest_mpcheck import callsite  # only when a resource is made (sysconfig is not light)

    return callsite.user_site(sys._getframe(2), os.getcwd() + os.sep) or "unknown place"


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")


def _send(self: Any, cmd: str, name: str, rtype: str) -> Any:
    """``ResourceTracker._send``, noting each registration and unregistration once it is sent."""
    assert _original_send is not None
    result = _original_send(self, cmd, name, rtype)
    if rtype in _KINDS and cmd in ("REGISTER", "UNREGISTER"):
        op = "R" if cmd == "REGISTER" else "U"
        with contextlib.suppress(Exception):  # the resource is made whatever befalls us
            if os.getpid() == _session_pid and _own_events is not None:
                _own_events(op, rtype, name, _call_site() if op == "R" else "")
            elif _log_fd >= 0:
                # Which tracker took it: a forked child whose parent had none running starts
                # its own (a spawned child knows only the descriptor of its parent's: None).
                tracker = getattr(self, "_pid", None) or 0
                line = "\t".join(
                    (op, str(os.getpid()), rtype, _clean(name), _clean(_call_site()), str(tracker))
                )
                os.write(_log_fd, (line + "\n").encode("utf-8", "replace"))
    return result


def _install(log_fd: int) -> None:
    global _original_send, _log_fd
    _log_fd = log_fd
    if _original_send is None:
        # Private, but the one place every registration passes, in 3.10 to 3.13 alike.
        _original_send = getattr(resource_tracker.ResourceTracker, "_send")  # noqa: B009
        setattr(resource_tracker.ResourceTracker, "_send", _send)  # noqa: B010


def install_in_child(log_path: str) -> None:
    """Log this child's registrations to the session's resource log (a fixture's child)."""
    if _original_send is not None and _log_fd >= 0:
        return  # a forked child: the wrapper and the descriptor came with the fork
    with contextlib.suppress(OSError):
        _install(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))


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


@dataclass
class ResourceFinding:
    """A named resource a test (or a wider-scoped fixture) left behind."""

    kind: str
    name: str
    pid: int
    site: str
    owner: str
    by_test_process: bool
    freed: bool
    """Whether the plugin unlinked it and unregistered it from the tracker."""
    own_tracker: bool = False
    """Freed (with a warning) by the resource tracker of the child that registered it."""

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON report."""
        return dict(vars(self))


class ResourceWatch:
    """Follows the registrations of the session; see the module docstring."""

    def __init__(self, owner_of: Callable[[int], tuple[str, object | None]]) -> None:
        self._owner_of = owner_of
        """``pid -> (owner, scope)``: who a process (or, for the pytest process, its current
        work) belongs to."""
        self.live: dict[tuple[str, str], Registration] = {}
        self.log_path: str | None = None
        self._log_fd = -1
        self._offset = 0

    def start(self) -> None:
        """Wrap the tracker and open the session's resource log."""
        global _own_events, _session_pid
        from pytest_mpcheck import scratch  # the pytest process only

        self.log_path = scratch.make_file("resources", ".log")
        # Forked children inherit this descriptor (O_APPEND: their lines never mix).
        self._log_fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND)
        _session_pid = os.getpid()
        _own_events = self._event
        _install(self._log_fd)

    def stop(self) -> None:
        """Stop noting, close and remove the log (the wrapper stays: it is harmless)."""
        global _own_events, _log_fd
        _own_events = None
        _log_fd = -1
        if self._log_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._log_fd)
            self._log_fd = -1
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)

    def _event(
        self, op: str, kind: str, name: str, site: str, pid: int | None = None, tracker: int = 0
    ) -> None:
        key = (kind, name)
        if op == "U":
            self.live.pop(key, None)
        elif key not in self.live:  # attaching registers again (before 3.13): the first counts
            pid = os.getpid() if pid is None else pid
            owner, scope = self._owner_of(pid)
            own = tracker != 0 and tracker != _session_tracker()
            self.live[key] = Registration(kind, name, pid, site, owner, scope, own)

    def read_log(self) -> None:
        """Take in the lines the children appended since the last read.

        Called as a test's teardown ends, while the records of its processes (who owns each) are
        still at hand.
        """
        if self._log_fd < 0:
            return
        try:
            size = os.fstat(self._log_fd).st_size
            if size <= self._offset:
                return
            data = os.pread(self._log_fd, size - self._offset, self._offset)
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self._offset += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            parts = line.split("\t")
            if len(parts) == 6 and parts[1].isdigit() and parts[5].isdigit():
                op, pid, kind, name, site, tracker = parts
                self._event(op, kind, name, site, int(pid), int(tracker))

    def _leaked(self, registration: Registration) -> bool:
        if registration.own_tracker:
            # Its tracker frees it as the child ends, at a moment that races this look: that the
            # child ended without unregistering it is the leak.
            return _ended(registration.pid)
        if not _exists(registration.kind, registration.name):
            return False  # freed by a process the plugin does not see
        if registration.kind == SEMAPHORE:
            # Only a dead child's semaphore is lost: a live lock object frees its own.
            return registration.pid != _session_pid and _ended(registration.pid)
        return True

    def _conclude(self, chosen: Callable[[Registration], bool]) -> list[ResourceFinding]:
        self.read_log()
        findings = []
        for key, registration in list(self.live.items()):
            if not chosen(registration) or not self._leaked(registration):
                continue
            del self.live[key]
            findings.append(
                ResourceFinding(
                    kind=registration.kind,
                    name=registration.name,
                    pid=registration.pid,
                    site=registration.site,
                    owner=registration.owner,
                    by_test_process=registration.pid == _session_pid,
                    freed=not registration.own_tracker
                    and _free(registration.kind, registration.name),
                    own_tracker=registration.own_tracker,
                )
            )
        return findings

    def finish_test(self, nodeid: str) -> list[ResourceFinding]:
        """What the test registered and left behind (call after the process watch ended its
        leftovers: their registrations are final then)."""
        if not self.live:
            return []  # the common case (the log was read as the teardown ended)
        return self._conclude(lambda r: r.owner == nodeid and r.scope is None)

    def forget_test(self, nodeid: str) -> None:
        """Stop following what a test registered (its mode is ``off``): it is not checked."""
        for key, registration in list(self.live.items()):
            if registration.owner == nodeid and registration.scope is None:
                del self.live[key]

    def finish_scope(self, scope: object) -> list[ResourceFinding]:
        """What a wider-scoped fixture registered and left behind, once it is finalized."""
        return self._conclude(lambda r: r.scope is scope)

    def finish_session(self) -> list[ResourceFinding]:
        """Everything still left at the end of the session."""
        return self._conclude(lambda r: True)


def _session_tracker() -> int:
    """The pid of the pytest process's resource tracker (0 while it has none)."""
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    return getattr(tracker, "_pid", None) or 0


def _free(kind: str, name: str) -> bool:
    """Unlink a leaked resource and take it off the tracker's list (it would warn at exit)."""
    cleanup: Any = getattr(resource_tracker, "_CLEANUP_FUNCS", {}).get(kind)
    if cleanup is None:
        return False
    try:
        cleanup(name)
    except OSError:
        return False
    if _original_send is not None:
        with contextlib.suppress(Exception):
            tracker = getattr(resource_tracker, "_resource_tracker")  # noqa: B009
            _original_send(tracker, "UNREGISTER", name, kind)
    return True
