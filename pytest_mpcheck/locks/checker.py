"""The lock checker: reading the records of :mod:`locks` back, and what they prove.

The records of every process are merged in timestamp order and replayed lock by lock, as the
kernel's lockdep and lockstat do for kernel locks:

- two processes holding one semaphore at once (mutual exclusion broken);
- a process that ended, or was killed, holding a lock;
- a release by a process that does not hold the lock (``multiprocessing.Lock`` allows it);
- lock-order inversion: each process's nesting of locks makes a graph, and a cycle in it is a
  deadlock waiting to happen, even when this run's processes took the locks one after the other;
- a lock that is not shared: processes that use one name but hold different semaphores;
- contention figures per lock, per process and per acquisition site.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pytest

from pytest_mpcheck._os import procfs, scratch
from pytest_mpcheck.errors import MpCheckInternalWarning, warn_at_test
from pytest_mpcheck.locks.checked import (
    ACQUIRED,
    FILE_SUFFIX,
    FOREIGN,
    GAVE_UP,
    LOST_SUFFIX,
    RECORD,
    RECORD_SIZE,
    RELEASE_FAILED,
    RELEASED,
    REQUESTED,
    TEXT_HEADER,
    TEXT_LOCK,
    TEXT_PROCESS,
    TEXT_SITE,
    TEXT_SUFFIX,
    TRY,
    CheckedLock,
    close_records,
    make_lock,
)
from pytest_mpcheck.safetext import printable

#: The check that ``mp_spawn`` children run before their target (see :mod:`bootstrap`).
MODULE_LOCK_CHECK = "pytest_mpcheck.locks.checked:module_lock_check"

#: Kinds of lock findings.
TWO_HOLDERS = "two holders at once"
HELD_AT_EXIT = "held at exit"
RELEASE_NOT_HELD = "release of a lock not held"
ORDER_INVERSION = "lock-order inversion"
NOT_SHARED = "lock not shared"

_FIX = {
    TWO_HOLDERS: (
        "How to fix: every acquire and release must go through the checked lock; a release of "
        "the raw semaphore (or of a lock the holder does not own) lets a second process in."
    ),
    HELD_AT_EXIT: (
        "How to fix: release the lock in a `finally:` block or take it with `with lock:`; a "
        "process that exits or is killed (SIGKILL, os._exit, a crash) while holding a "
        "multiprocessing lock never releases it, and every other process then waits forever."
    ),
    RELEASE_NOT_HELD: (
        "How to fix: release a lock only in the process that acquired it, ideally with "
        "`with lock:`. multiprocessing.Lock lets any process release it, silently, and its "
        "holder then runs unprotected."
    ),
    ORDER_INVERSION: (
        "How to fix: take these locks in one global order everywhere. Two processes that take "
        "them in opposite orders at the same moment deadlock."
    ),
    NOT_SHARED: (
        "How to fix: create the lock once, in the test, and pass it to each child as an "
        "argument (Process(args=(lock,)), mp_spawn(target, args=(lock,)), "
        "Pool(initializer=..., initargs=(lock,))). A lock that a child creates itself, or gets "
        "by importing a module again (a module-level Lock() under spawn and forkserver), is a "
        "different lock that excludes nobody."
    ),
}


# -- the records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessName:
    """A process as the reports name it."""

    pid: int
    name: str

    def __str__(self) -> str:
        return f"{printable(self.name)} (pid {self.pid})"  # the name is the process's own


@dataclass
class _Event:
    ts: int
    kind: int
    flags: int
    process: ProcessName
    lock: str
    token: str
    site: str | None


@dataclass
class _LockDecl:
    name: str
    kind: str
    token: str
    semaphore: str


@dataclass
class _ProcessRecord:
    process: ProcessName
    events: list[_Event] = field(default_factory=list)
    locks: dict[str, _LockDecl] = field(default_factory=dict)
    """By token."""


def _display(site: str) -> str:
    """A site's file relative to the current directory when it is under it (as pytest shows)."""
    here = os.getcwd() + os.sep
    return site[len(here) :] if site.startswith(here) else site


def _read_file(path: str) -> _ProcessRecord | None:
    """One process's record: its text file (names of the process, its locks and sites), then
    its events, up to the first all-zero slot (both files are zero-filled past what was
    written)."""
    try:
        with open(path[: -len(FILE_SUFFIX)] + TEXT_SUFFIX, "rb") as file:
            text_data = file.read()
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None
    record: _ProcessRecord | None = None
    locks: dict[int, _LockDecl] = {}
    sites: dict[int, str] = {}
    off = 0
    while off + TEXT_HEADER.size <= len(text_data):
        kind, lock, length = TEXT_HEADER.unpack_from(text_data, off)
        if kind == 0:
            break  # the reserved, unwritten rest
        off += TEXT_HEADER.size
        parts = text_data[off : off + length].decode("utf-8", "replace").split("\0")
        off += length
        if kind == TEXT_PROCESS and len(parts) >= 2:
            record = _ProcessRecord(ProcessName(int(parts[0]), parts[1]))
        elif kind == TEXT_LOCK and len(parts) >= 4 and record is not None:
            declared = _LockDecl(parts[0], parts[1], parts[2], parts[3])
            locks[lock] = declared
            record.locks[declared.token] = declared
        elif kind == TEXT_SITE and len(parts) >= 2:
            sites[int(parts[0])] = printable(_display(parts[1]))
    if record is None:
        return None
    off = 0
    end = len(data) - RECORD_SIZE
    while off <= end:
        ts, site, lock, kind, flags = RECORD.unpack_from(data, off)
        if ts == 0:
            break  # the end of what this process wrote
        off += RECORD_SIZE
        decl = locks.get(lock)
        if decl is None:
            continue
        if kind == RELEASE_FAILED:
            if not flags & FOREIGN:
                # The holder's release found the semaphore already free (someone released it
                # behind the checked lock): its critical section is over all the same.
                continue
            # multiprocessing refused a non-holder's release: it did not happen.
            for index in range(len(record.events) - 1, -1, -1):
                if record.events[index].token == decl.token:
                    if record.events[index].kind == RELEASED:
                        del record.events[index]
                    break
            continue
        record.events.append(
            _Event(ts, kind, flags, record.process, decl.name, decl.token, sites.get(site))
        )
    return record


# -- what was found -----------------------------------------------------------------------------


@dataclass
class Hold:
    """One hold of a lock: from its acquisition to its release."""

    lock: str
    process: ProcessName
    site: str | None
    """``file:line`` where it was acquired."""
    start: int
    """``time.monotonic_ns()`` at the acquisition."""
    end: int | None = None
    """``time.monotonic_ns()`` at the release; ``None`` while held."""
    wait: int = 0
    """Nanoseconds the acquisition waited for the lock."""
    contended: bool = False
    """Whether the lock was taken when the acquisition began."""
    released_by: ProcessName | None = None
    """Another process that released it, when it was not the holder."""
    token: str = ""


@dataclass
class LockFinding:
    """One problem the lock checker found."""

    kind: str
    lock: str
    message: str
    processes: list[ProcessName] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


@dataclass
class LockCounts:
    """Contention figures, as lockstat reports them (times in seconds)."""

    acquisitions: int = 0
    contended: int = 0
    """Acquisitions that found the lock taken and had to wait."""
    total_wait: float = 0.0
    max_wait: float = 0.0
    total_hold: float = 0.0
    max_hold: float = 0.0

    def _add(self, hold: Hold) -> None:
        self.acquisitions += 1
        wait = hold.wait / 1e9
        if hold.contended:
            self.contended += 1
        self.total_wait += wait
        self.max_wait = max(self.max_wait, wait)
        if hold.end is not None:
            held = (hold.end - hold.start) / 1e9
            self.total_hold += held
            self.max_hold = max(self.max_hold, held)


@dataclass
class LockStats(LockCounts):
    """The figures of one lock, with the same figures per process and per acquisition site."""

    name: str = ""
    by_process: dict[str, LockCounts] = field(default_factory=dict)
    """By ``"name (pid N)"``."""
    by_site: dict[str, LockCounts] = field(default_factory=dict)
    """By ``file:line`` of the acquisition."""

    def format(self) -> str:
        """A lockstat-like table."""
        lines = [
            f"lock {self.name!r}: {self.acquisitions} acquisitions, {self.contended} contended, "
            f"wait total {self.total_wait * 1e3:.3f} ms max {self.max_wait * 1e3:.3f} ms, "
            f"hold max {self.max_hold * 1e3:.3f} ms"
        ]
        for title, table in (("process", self.by_process), ("site", self.by_site)):
            for key, counts in table.items():
                lines.append(
                    f"    {title} {key}: {counts.acquisitions} acq, {counts.contended} contended, "
                    f"wait max {counts.max_wait * 1e3:.3f} ms, hold max "
                    f"{counts.max_hold * 1e3:.3f} ms"
                )
        return "\n".join(lines)


class Records:
    """Everything the processes of one checker recorded, replayed."""

    def __init__(
        self,
        processes: Sequence[_ProcessRecord],
        t0: int,
        own_tokens: dict[str, ProcessName] | None = None,
    ) -> None:
        self.processes = list(processes)
        self.t0 = t0
        self.own_tokens = own_tokens or {}
        self.findings: list[LockFinding] = []
        self._holds: dict[str, list[Hold]] = {}
        self._open: dict[tuple[str, ProcessName], Hold] = {}
        self._waiting: dict[str, list[ProcessName]] = {}
        self._replay()

    # -- formatting -----------------------------------------------------------------------------

    def at(self, ns: int) -> str:
        """A timestamp relative to the start of the test."""
        return f"+{(ns - self.t0) / 1e9:.3f}s"

    def _hold_text(self, hold: Hold) -> str:
        return f"acquired at {hold.site or 'an unknown site'} at {self.at(hold.start)}"

    def _add(self, kind: str, lock: str, text: str, processes: Iterable[ProcessName]) -> None:
        message = f"{kind}: {text}\n  {_FIX[kind]}"
        self.findings.append(LockFinding(kind, lock, message, list(processes)))

    # -- the replay -----------------------------------------------------------------------------

    def _replay(self) -> None:
        names: dict[str, dict[str, list[ProcessName]]] = {}
        semaphores: dict[str, str] = {}
        for record in self.processes:
            for token, decl in record.locks.items():
                names.setdefault(decl.name, {}).setdefault(token, []).append(record.process)
                semaphores[token] = decl.semaphore
        for name, tokens in names.items():
            self._holds[name] = []
            if len(tokens) > 1:
                self._not_shared(name, tokens, semaphores)
        events = sorted(
            (event for record in self.processes for event in record.events),
            key=lambda e: (e.ts, e.kind != RELEASED),
        )
        by_token: dict[str, list[_Event]] = {}
        for event in events:
            by_token.setdefault(event.token, []).append(event)
        for token_events in by_token.values():
            self._replay_semaphore(token_events)
        for holds in self._holds.values():
            holds.sort(key=lambda hold: hold.start)
        self._order()

    def _not_shared(
        self, name: str, tokens: dict[str, list[ProcessName]], semaphores: dict[str, str]
    ) -> None:
        users = sorted({p for procs in tokens.values() for p in procs}, key=lambda p: p.pid)
        lines = [
            f"lock {name!r} is not shared: {len(users)} processes use a lock of this name, but "
            f"they hold {len(tokens)} different semaphores, so none of them excludes another"
        ]
        for number, (token, procs) in enumerate(tokens.items(), 1):
            creator = self.own_tokens.get(token)
            made = f"made by the test in {creator}" if creator else "made in a child"
            semaphore = semaphores.get(token) or "unnamed"
            who = ", ".join(str(p) for p in sorted(procs, key=lambda p: p.pid))
            lines.append(f"    semaphore {number} ({made}, {semaphore}): used by {who}")
        self._add(NOT_SHARED, name, "\n".join(lines), users)

    def _replay_semaphore(self, events: list[_Event]) -> None:
        depth: dict[ProcessName, int] = {}
        waiting: dict[ProcessName, _Event] = {}
        reported: set[tuple[ProcessName, ProcessName]] = set()
        for event in events:
            process = event.process
            if event.kind == REQUESTED:
                waiting[process] = event
            elif event.kind == GAVE_UP:
                waiting.pop(process, None)
            elif event.kind == ACQUIRED:
                request = waiting.pop(process, None)
                if depth.get(process, 0):
                    depth[process] += 1  # an RLock taken again by its holder
                    continue
                hold = Hold(
                    event.lock,
                    process,
                    event.site,
                    event.ts,
                    wait=event.ts - request.ts if request else 0,
                    contended=request is not None,
                    token=event.token,
                )
                for other, count in depth.items():
                    if count and other != process and (other, process) not in reported:
                        reported.add((other, process))
                        self._two_holders(self._open[(event.token, other)], hold)
                depth[process] = 1
                self._open[(event.token, process)] = hold
                self._holds[event.lock].append(hold)
            elif event.kind == RELEASED:
                if depth.get(process, 0):
                    depth[process] -= 1
                    if not depth[process]:
                        self._open.pop((event.token, process)).end = event.ts
                    continue
                holders = [other for other, count in depth.items() if count]
                self._release_not_held(event, [self._open[(event.token, o)] for o in holders])
                for other in holders:  # the semaphore is free again: their hold is over
                    depth[other] = 0
                    hold = self._open.pop((event.token, other))
                    hold.end = event.ts
                    hold.released_by = process
        for process, request in waiting.items():
            self._waiting.setdefault(request.lock, []).append(process)

    def _two_holders(self, first: Hold, second: Hold) -> None:
        text = (
            f"lock {first.lock!r} was held by {first.process} and {second.process} at the same "
            f"time\n"
            f"    {first.process} {self._hold_text(first)} and still held it\n"
            f"    when {second.process} {self._hold_text(second)}"
        )
        self._add(TWO_HOLDERS, first.lock, text, [first.process, second.process])

    def _release_not_held(self, event: _Event, holders: list[Hold]) -> None:
        where = f"at {event.site or 'an unknown site'} at {self.at(event.ts)}"
        if holders:
            owners = "; ".join(f"{h.process} held it ({self._hold_text(h)})" for h in holders)
        else:
            owners = "nobody held it"
        text = (
            f"{event.process} released lock {event.lock!r} {where}, but it did not hold it: "
            f"{owners}"
        )
        self._add(
            RELEASE_NOT_HELD, event.lock, text, [event.process, *(h.process for h in holders)]
        )

    def held_at_exit(self, current_test: bool) -> None:
        """Find the holds of processes that ended; ``current_test``: also this process's."""
        me = os.getpid()
        for (_token, process), hold in sorted(self._open.items(), key=lambda kv: kv[1].start):
            if process.pid == me:
                if current_test:
                    text = (
                        f"the test process {process} still held lock {hold.lock!r} at the end of "
                        f"the test ({self._hold_text(hold)})"
                    )
                    self._add(HELD_AT_EXIT, hold.lock, text, [process])
                continue
            if not _ended(process.pid):
                continue  # still running: the process watch reports it
            text = (
                f"{process} ended holding lock {hold.lock!r} ({self._hold_text(hold)}); any "
                f"other process that takes it waits forever"
            )
            self._add(HELD_AT_EXIT, hold.lock, text, [process])

    # -- lock order -----------------------------------------------------------------------------

    def _order(self) -> None:
        # edges[(a, b)]: b was taken while a was held; one example per process, as lockdep keeps.
        edges: dict[tuple[str, str], dict[ProcessName, tuple[str | None, str | None, str]]] = {}
        for record in self.processes:
            held: dict[str, tuple[int, str | None]] = {}
            waiting: set[str] = set()
            for event in record.events:
                name = event.lock
                if event.kind in (REQUESTED, ACQUIRED):
                    if event.kind == ACQUIRED and name in waiting:
                        waiting.discard(name)
                    elif name not in held and not event.flags & TRY:
                        for other, (_count, site) in held.items():
                            if other != name:
                                examples = edges.setdefault((other, name), {})
                                verb = "waited for" if event.kind == REQUESTED else "took"
                                examples.setdefault(record.process, (site, event.site, verb))
                    if event.kind == REQUESTED:
                        waiting.add(name)
                        continue
                    count, site = held.get(name, (0, event.site))
                    held[name] = (count + 1, site)
                elif event.kind == GAVE_UP:
                    waiting.discard(name)
                elif event.kind == RELEASED and name in held:
                    count, site = held[name]
                    if count > 1:
                        held[name] = (count - 1, site)
                    else:
                        del held[name]
        graph: dict[str, set[str]] = {}
        for first, second in edges:
            graph.setdefault(first, set()).add(second)
        for cycle in _cycles(graph):
            lines = [
                "locks "
                + ", ".join(repr(n) for n in cycle)
                + " are taken in opposite orders (a deadlock waiting to happen, whether or not "
                "this run deadlocked)"
            ]
            involved: list[ProcessName] = []
            for index, first in enumerate(cycle):
                second = cycle[(index + 1) % len(cycle)]
                for process, (held_site, taken_site, verb) in edges[(first, second)].items():
                    involved.append(process)
                    lines.append(
                        f"    {process} {verb} {second!r} at {taken_site or 'an unknown site'} "
                        f"while holding {first!r} (taken at {held_site or 'an unknown site'})"
                    )
            self._add(ORDER_INVERSION, cycle[0], "\n".join(lines), dict.fromkeys(involved))

    # -- questions ------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The names of the locks that were used, sorted."""
        return sorted(self._holds)

    def holds(self, name: str) -> list[Hold]:
        """The holds of one lock, by acquisition time."""
        return list(self._holds.get(name, []))

    def waiting(self, name: str) -> list[ProcessName]:
        """The processes waiting for one lock now (their last request has no acquisition yet)."""
        return list(self._waiting.get(name, []))

    def holders(self, name: str) -> list[ProcessName]:
        """The processes that hold one lock now."""
        return [process for (_t, process), hold in self._open.items() if hold.lock == name]

    def stats(self, name: str) -> LockStats:
        """The contention figures of one lock."""
        stats = LockStats(name=name)
        for hold in self._holds.get(name, []):
            stats._add(hold)
            stats.by_process.setdefault(str(hold.process), LockCounts())._add(hold)
            stats.by_site.setdefault(hold.site or "unknown site", LockCounts())._add(hold)
        return stats


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The simple cycles of a small graph, each once, starting at its smallest node."""
    found: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for following in sorted(graph.get(node, ())):
            if following == start:
                found.append(list(path))
            elif following > start and following not in path and len(path) < 8:
                walk(start, following, [*path, following])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def _ended(pid: int) -> bool:
    return procfs.state(pid) in (None, "Z")


def _files(directory: str, suffix: str) -> dict[str, str]:
    """The files of a record directory whose names end with ``suffix``, by name, path: the
    directory's, and those that moved to its spill directory when it had no room (the spill
    directory's copy of a name is the newer one)."""
    found: dict[str, str] = {}
    for place in (directory, scratch.spill_directory(directory)):
        if place is None:
            continue
        try:
            names = os.listdir(place)
        except OSError:
            continue
        found.update((n, os.path.join(place, n)) for n in names if n.endswith(suffix))
    return found


def lost_records(directory: str) -> list[int]:
    """The pids of processes that stopped recording for want of room (see locks._Writer)."""
    return sorted({_pid_of(name) for name in _files(directory, LOST_SUFFIX)} - {-1})


def _pid_of(name: str) -> int:
    try:
        return int(name.split(".", 1)[0])
    except ValueError:
        return -1


def read(directory: str, t0: int = 0, own_tokens: dict[str, ProcessName] | None = None) -> Records:
    """Read and replay every process's record in ``directory``."""
    files = _files(directory, FILE_SUFFIX)
    processes = [r for n in sorted(files) if (r := _read_file(files[n])) is not None]
    return Records(processes, t0, own_tokens)


def format_findings(title: str, findings: Sequence[LockFinding]) -> str:
    """The whole report: a title line, then each finding."""
    count = len(findings)
    head = f"mpcheck: {title}: {count} lock problem{'s' if count != 1 else ''}"
    return head + "\n\n" + "\n\n".join(f.message for f in findings)


def _fail(message: str) -> NoReturn:
    __tracebackhide__ = True
    pytest.fail(message, pytrace=False)


def _check_name(call: str, name: object) -> str:
    if not isinstance(name, str) or not name or "\0" in name:
        _fail(
            f"mp_locks.{call}: the lock name must be a non-empty str without NUL characters, "
            f"got {name!r} ({type(name).__name__})"
        )
    return name


def _check_count(call: str, what: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        _fail(f"mp_locks.{call}: {what} must be an int >= {least}, got {value!r}")
    return value


# -- the fixture's object -----------------------------------------------------------------------


class LockChecker:
    """The ``mp_locks`` fixture: makes checked locks, and checks what they recorded.

    ``Lock(name)`` and ``RLock(name)`` make real ``multiprocessing`` locks of the test's context
    that record every acquisition and release. After the test the checker fails it for two
    holders at once, a lock held by a process that ended, a release by a process that did not hold
    the lock, lock-order inversion and locks that are not shared. ``stats(name)`` gives the
    contention figures; the ``assert_*`` methods check them on demand. A problem the test has seen
    (returned by :meth:`findings`, raised by :meth:`check` or an ``assert_*`` method) is not
    reported again when the test ends.
    """

    def __init__(
        self,
        context: multiprocessing.context.BaseContext | None = None,
        directory: str | None = None,
        title: str = "this test",
    ) -> None:
        self._context = context or multiprocessing.get_context()
        self._own_directory = directory is None
        self.directory = directory or _make_directory()
        self.title = title
        self.t0 = time.monotonic_ns()
        self._locks: dict[str, CheckedLock] = {}
        self._seen: set[str] = set()

    def __reduce__(self) -> tuple[Any, ...]:
        # A child that gets the checker and makes a lock of its own makes a lock that is not
        # shared; pickling it lets the checker see that, instead of failing to pickle.
        return (_rebuild_checker, (self._context.get_start_method(), self.directory, self.t0))

    # -- making locks ---------------------------------------------------------------------------

    def Lock(self, name: str) -> CheckedLock:
        """A checked ``multiprocessing.Lock`` named ``name`` (the same one for the same name)."""
        return self._make("Lock", name)

    def RLock(self, name: str) -> CheckedLock:
        """A checked ``multiprocessing.RLock`` named ``name`` (the same one for the same name)."""
        return self._make("RLock", name)

    def _make(self, kind: str, name: str) -> CheckedLock:
        __tracebackhide__ = True
        _check_name(f"{kind}(name)", name)
        lock = self._locks.get(name)
        if lock is not None:
            if lock.kind != kind:
                _fail(
                    f"mp_locks.{kind}({name!r}): the name is already used by a {lock.kind}; "
                    "give each lock its own name"
                )
            return lock
        lock = make_lock(name, kind, self.directory, self._context)
        self._locks[name] = lock
        return lock

    @property
    def names(self) -> list[str]:
        """The names of the locks made by this checker or used by any process, sorted."""
        return sorted(set(self._locks) | set(self.records().names))

    # -- reading --------------------------------------------------------------------------------

    def records(self) -> Records:
        """Read what every process recorded so far."""
        me = ProcessName(os.getpid(), multiprocessing.current_process().name)
        return read(self.directory, self.t0, {lock.token: me for lock in self._locks.values()})

    def findings(self) -> list[LockFinding]:
        """Every problem found so far (processes still running are not held against).

        The test has seen them: they are not reported again when the test ends.
        """
        records = self.records()
        records.held_at_exit(current_test=False)
        self._seen.update(f.message for f in records.findings)
        return records.findings

    def _known(self, call: str, name: object, records: Records) -> str:
        __tracebackhide__ = True
        checked = _check_name(call, name)
        if checked not in self._locks and checked not in records.names:
            known = ", ".join(repr(n) for n in sorted(set(self._locks) | set(records.names)))
            _fail(
                f"mp_locks.{call}: no lock named {checked!r} in this test. "
                f"Known locks: {known or 'none (make one with mp_locks.Lock(name))'}"
            )
        return checked

    def stats(self, name: str) -> LockStats:
        """The contention figures of the lock ``name``: see :class:`LockStats`."""
        __tracebackhide__ = True
        records = self.records()
        return records.stats(self._known(f"stats({name!r})", name, records))

    def holds(self, name: str) -> list[Hold]:
        """Each hold of the lock ``name`` so far, by acquisition time."""
        __tracebackhide__ = True
        records = self.records()
        return records.holds(self._known(f"holds({name!r})", name, records))

    def waiting(self, name: str) -> list[ProcessName]:
        """The processes that wait for the lock ``name`` now."""
        __tracebackhide__ = True
        records = self.records()
        return records.waiting(self._known(f"waiting({name!r})", name, records))

    def holders(self, name: str) -> list[ProcessName]:
        """The processes that hold the lock ``name`` now."""
        __tracebackhide__ = True
        records = self.records()
        return records.holders(self._known(f"holders({name!r})", name, records))

    # -- assertions -----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``AssertionError`` with the report if any problem was found so far.

        What it raises is not reported again when the test ends: a test can assert that a
        problem is found with ``pytest.raises(AssertionError)``.
        """
        __tracebackhide__ = True
        found = self.findings()
        if found:
            raise AssertionError(format_findings(self.title, found))

    def _assert_none(self, call: str, name: str | None, kinds: Sequence[str]) -> None:
        __tracebackhide__ = True
        records = self.records()
        if name is not None:
            self._known(call, name, records)
        records.held_at_exit(current_test=False)
        found = [
            f
            for f in records.findings
            if f.kind in kinds and (name is None or f.lock == name or name in f.message)
        ]
        if found:
            self._seen.update(f.message for f in found)
            raise AssertionError(format_findings(f"mp_locks.{call}", found))

    def assert_exclusive(self, name: str) -> None:
        """Assert that the lock ``name`` was shared and never had two holders at once."""
        __tracebackhide__ = True
        self._assert_none(
            f"assert_exclusive({name!r})", name, (TWO_HOLDERS, NOT_SHARED, RELEASE_NOT_HELD)
        )

    def assert_ordered(self) -> None:
        """Assert that no two locks were ever taken in opposite orders (no lock-order inversion)."""
        __tracebackhide__ = True
        self._assert_none("assert_ordered()", None, (ORDER_INVERSION,))

    def assert_released(self, name: str | None = None) -> None:
        """Assert that no process that ended still held the lock ``name`` (or any lock)."""
        __tracebackhide__ = True
        call = f"assert_released({name!r})" if name is not None else "assert_released()"
        self._assert_none(call, name, (HELD_AT_EXIT,))

    def assert_no_contention(self, name: str) -> None:
        """Assert that no acquisition of the lock ``name`` had to wait."""
        __tracebackhide__ = True
        stats = self.stats(name)
        if stats.contended:
            raise AssertionError(
                f"mp_locks.assert_no_contention({name!r}): {stats.contended} of "
                f"{stats.acquisitions} acquisitions waited\n{stats.format()}"
            )

    def assert_contended(self, name: str, at_least: int = 1) -> None:
        """Assert that at least ``at_least`` acquisitions of the lock ``name`` had to wait."""
        __tracebackhide__ = True
        _check_count(f"assert_contended({name!r}, at_least={at_least!r})", "at_least", at_least, 1)
        stats = self.stats(name)
        if stats.contended < at_least:
            raise AssertionError(
                f"mp_locks.assert_contended({name!r}, at_least={at_least}): only "
                f"{stats.contended} of {stats.acquisitions} acquisitions waited\n{stats.format()}"
            )

    def assert_acquisitions(self, name: str, count: int) -> None:
        """Assert that the lock ``name`` was acquired exactly ``count`` times (outermost holds)."""
        __tracebackhide__ = True
        _check_count(f"assert_acquisitions({name!r}, {count!r})", "count", count, 0)
        stats = self.stats(name)
        if stats.acquisitions != count:
            raise AssertionError(
                f"mp_locks.assert_acquisitions({name!r}, {count}): it was acquired "
                f"{stats.acquisitions} times\n{stats.format()}"
            )

    # -- the end of the test --------------------------------------------------------------------

    def finish(self) -> tuple[list[LockFinding], dict[str, LockStats]]:
        """The findings at teardown and every lock's figures; removes the record directory."""
        records = self.records()
        records.held_at_exit(current_test=True)
        stats = {name: records.stats(name) for name in records.names}
        close_records(self.directory)
        if self._own_directory:
            scratch.remove_directory(self.directory)
        return [f for f in records.findings if f.message not in self._seen], stats


def writers(directory: str) -> list[int]:
    """The pids of the processes that wrote records in ``directory``."""
    return [pid for pid in map(_pid_of, _files(directory, FILE_SUFFIX)) if pid != -1]


def finish_test(
    item: pytest.Item,
    checker: LockChecker,
    settle: float = 0.3,
    mode: str = "fail",
    *,
    record: Callable[[pytest.Item, LockFinding], object],
) -> None:
    """Teardown of ``mp_locks``: note the figures, and fail the test for what was found.

    ``mode`` is the test's (``@pytest.mark.mp_check`` or ``--mp-check``): ``"warn"`` warns
    instead of failing, ``"off"`` reports nothing. Each finding is recorded whatever the mode
    (``record``, the run's :meth:`~pytest_mpcheck.findings.FindingLog.record`: the JSON report,
    and the ``pytest_mpcheck_lock_finding`` hook for other plugins).

    Running processes that hold or wait for a lock get ``settle`` seconds to end (a child that a
    fixture torn down later joins); one still running after that is left to the process watch
    and the fixtures, and only what it recorded so far is checked. Processes that hold nothing,
    such as the idle workers of a pool, are not waited for.
    """
    __tracebackhide__ = True
    config, nodeid = item.config, item.nodeid
    me = os.getpid()
    deadline = time.monotonic() + settle
    try:
        records = checker.records()
        busy = {p.pid for (_token, p) in records._open} | {
            p.pid for waiting in records._waiting.values() for p in waiting
        }
    except Exception:
        busy = set(writers(checker.directory))
    running = [pid for pid in busy if pid != me and not _ended(pid)]
    while running and time.monotonic() < deadline:
        time.sleep(0.005)
        running = [pid for pid in running if not _ended(pid)]
    lost = lost_records(checker.directory)
    try:
        found, stats = checker.finish()
    except Exception:
        details = traceback.format_exc()
        warnings.warn(
            MpCheckInternalWarning(
                f"pytest-mpcheck failed while checking the locks of {nodeid}; please report "
                f"this bug:\n{details}"
            ),
            stacklevel=1,
        )
        return
    _tally(config).add(nodeid, stats)
    if lost:
        # What was read may lack any event after the moment the room ran out: a "held at
        # exit" could be a release that was never written. The plugin's lack of room is no
        # finding against the test: none is recorded.
        if mode != "off":
            warn_at_test(item, _lost_message(checker.directory, lost), MpCheckInternalWarning)
        return
    for finding in found:
        record(item, finding)
    if not found or mode == "off":
        return
    message = format_findings(nodeid, found)
    if mode == "warn":
        warn_at_test(item, message)
        return
    _fail(message)


def _lost_message(directory: str, pids: Sequence[int]) -> str:
    return (
        f"mpcheck: the lock checker's records are incomplete: process "
        f"{', '.join(map(str, pids))} found no room for them in {os.path.dirname(directory)} "
        "nor in the temporary directory, so this test's locks were not checked. Free space "
        f"there (a full /dev/shm is common in containers), or set {scratch.SCRATCH_ENV} to a "
        "directory with room."
    )


def _rebuild_checker(method: str, directory: str, t0: int) -> LockChecker:
    checker = LockChecker(multiprocessing.get_context(method), directory)
    checker._own_directory = False
    checker.t0 = t0
    return checker


def _make_directory() -> str:
    # tmpfs when there is one: the pages are never written back to a disk.
    return scratch.make_directory("locks")


# -- the session's most contended locks ---------------------------------------------------------


@dataclass
class ContentionTally:
    """The most contended locks of the run, for the terminal summary."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, nodeid: str, stats: dict[str, LockStats]) -> None:
        """Note the figures of one test's locks."""
        for name, figures in stats.items():
            if figures.acquisitions:
                self.rows.append(
                    {
                        "test": nodeid,
                        "lock": name,
                        "acquisitions": figures.acquisitions,
                        "contended": figures.contended,
                        "total_wait": figures.total_wait,
                        "max_wait": figures.max_wait,
                    }
                )

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows from a pytest-xdist worker."""
        self.rows.extend(rows)

    def summary_lines(self, top: int = 5) -> list[str]:
        """Lines for the terminal summary: the locks that waited most."""
        contended = [row for row in self.rows if row["contended"]]
        if not contended:
            return []
        contended.sort(key=lambda row: (-row["total_wait"], -row["contended"]))
        lines = ["mpcheck: most contended locks:"]
        for row in contended[:top]:
            lines.append(
                f"  {row['lock']!r} in {row['test']}: {row['contended']} of {row['acquisitions']} "
                f"acquisitions waited, wait total {row['total_wait'] * 1e3:.1f} ms "
                f"max {row['max_wait'] * 1e3:.1f} ms"
            )
        return lines


# Not ``StashKey[ContentionTally]()``: typing caches each subscription, and the entry would keep
# this copy of the module alive after pytester's in-process run drops it from sys.modules.
contention_key: pytest.StashKey[ContentionTally] = pytest.StashKey()


def _tally(config: pytest.Config) -> ContentionTally:
    tally = config.stash.get(contention_key, None)
    if tally is None:
        tally = config.stash[contention_key] = ContentionTally()
    return tally


def summary_lines(config: pytest.Config) -> list[str]:
    """The terminal summary's lines on the most contended locks of the run."""
    tally = config.stash.get(contention_key, None)
    return tally.summary_lines() if tally is not None else []


# -- ordered locked output ----------------------------------------------------------------------


def assert_atomic(lines: Sequence[Any], lock: object, unprotected_ok: bool = False) -> None:
    """``mp_output.assert_atomic(lock)``: the lines of each hold of ``lock`` are one block.

    Decided on the write times of the lines and the hold times of the lock, not on the text:

    - a line written while another process held the lock breaks that hold's block;
    - the lines of one hold must be contiguous in the order of writing;
    - a line of a process that used the lock, written while it did not hold it, was not protected
      (unless ``unprotected_ok``): output that was never protected can look contiguous by luck;
    - at least one line must have been written under the lock.
    """
    __tracebackhide__ = True
    if not isinstance(lock, CheckedLock):
        _fail(
            f"mp_output.assert_atomic(lock): {lock!r} is not a checked lock; pass a lock made "
            "by mp_locks.Lock(name) or mp_locks.RLock(name), the one the children used"
        )
    holds = read(lock.directory).holds(lock.name)
    holders = {hold.process.pid for hold in holds}
    by_pid: dict[int, list[Hold]] = {}
    for hold in holds:
        by_pid.setdefault(hold.process.pid, []).append(hold)

    def covering(pid: int, ts: int) -> Hold | None:
        for hold in by_pid.get(pid, ()):
            if hold.start <= ts and (hold.end is None or ts <= hold.end):
                return hold
        return None

    notes: dict[int, str] = {}
    owner: list[Hold | None] = []
    problems: list[str] = []
    for index, line in enumerate(lines):
        own = covering(line.pid, line.time_ns)
        owner.append(own)
        if own is not None:
            continue
        other = next(
            (
                h
                for h in holds
                if h.start <= line.time_ns and (h.end is None or line.time_ns <= h.end)
            ),
            None,
        )
        who = f"{line.name} (pid {line.pid})"
        if other is not None:
            notes[index] = f"<-- written while {other.process} held {lock.name!r}"
            problems.append(
                f"line {index + 1} was written by {who} while {other.process} held lock "
                f"{lock.name!r} ({other.site}): another process wrote into its critical section"
            )
        elif line.pid in holders and not unprotected_ok:
            notes[index] = f"<-- not under {lock.name!r}"
            problems.append(
                f"line {index + 1} was written by {who} while it did not hold lock "
                f"{lock.name!r}: this output is not protected by the lock"
            )
    # A hold's block is broken when a line of another block comes between two of its lines.
    last_index: dict[int, int] = {}
    for index, own in enumerate(owner):
        if own is None:
            continue
        key = id(own)
        if key in last_index and last_index[key] != index - 1 and index not in notes:
            between = lines[last_index[key] + 1]
            notes[index] = (
                f"<-- block broken: this hold of {lock.name!r} wrote before line "
                f"{last_index[key] + 2} ({between.name})"
            )
            problems.append(
                f"the lines written by {own.process} during one hold of lock {lock.name!r} "
                f"({own.site}) are not contiguous: line {index + 1} comes after line "
                f"{last_index[key] + 2} of {between.name} (pid {between.pid})"
            )
        last_index[key] = index
    if not problems and not any(own is not None for own in owner):
        problems.append(
            f"no line was written while lock {lock.name!r} was held ({len(holds)} holds, "
            f"{len(lines)} lines): the output was not protected by it (was it written after the "
            "release, e.g. from a buffer?)"
        )
    if not problems:
        return
    shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
    raise AssertionError(
        f"mp_output.assert_atomic({lock.name!r}): the output is not atomic under the lock\n"
        + "\n".join(f"  {problem}" for problem in shown)
        + "\n\n"
        + _format_lines(lines, owner, notes)
    )


def _format_lines(lines: Sequence[Any], owner: Sequence[Hold | None], notes: dict[int, str]) -> str:
    """The interleaving: each line numbered, with its process and the hold it was written in."""
    numbers: dict[int, int] = {}
    width = max((len(f"{line.name} ({line.pid})") for line in lines), default=0)
    out = []
    for index, line in enumerate(lines):
        own = owner[index]
        hold = (
            "      -" if own is None else f"hold {numbers.setdefault(id(own), len(numbers) + 1):2d}"
        )
        mark = ">>" if index in notes else "  "
        who = f"{line.name} ({line.pid})".ljust(width)
        stream = "err" if line.stream == "stderr" else "out"
        note = f"   {notes[index]}" if index in notes else ""
        out.append(f"{mark} {index + 1:4d}  {who}  {hold}  {stream}| {line.text}{note}")
    return "\n".join(out)
