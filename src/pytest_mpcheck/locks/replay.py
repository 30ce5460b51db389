"""Reading the records of :mod:`~pytest_mpcheck.locks.records` back, and replaying them.

The records of every process are merged in timestamp order and replayed semaphore by semaphore
(a lock's identity is the token made with its semaphore, not its name): each acquisition opens a
:class:`Hold`, its release closes it. What a replay cannot explain is kept as it happened, in the
order it happened, for :mod:`~pytest_mpcheck.locks.checks` to report: an acquisition while another
process held the semaphore (:class:`Overlap`), a release by a process that did not hold it
(:class:`ForeignRelease`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from pytest_mpcheck._os import scratch
from pytest_mpcheck.locks.records import (
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
    SELF_WAIT,
    TEXT_HEADER,
    TEXT_LOCK,
    TEXT_PROCESS,
    TEXT_SITE,
    TEXT_SUFFIX,
)
from pytest_mpcheck.safetext import printable

# -- one process's files ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessName:
    """A process as the reports name it."""

    pid: int
    name: str

    def __str__(self) -> str:
        return f"{printable(self.name)} (pid {self.pid})"  # the name is the process's own


@dataclass
class Event:
    """One record of a process, with the names that its text file gives the numbers."""

    ts: int
    kind: int
    flags: int
    process: ProcessName
    lock: str
    token: str
    site: str | None


@dataclass
class LockDecl:
    """A lock as a process declared it in its text file."""

    name: str
    token: str
    semaphore: str


@dataclass
class ProcessRecord:
    """What one process recorded."""

    process: ProcessName
    events: list[Event] = field(default_factory=list)
    locks: dict[str, LockDecl] = field(default_factory=dict)
    """By token."""


def _display(site: str) -> str:
    """A site's file relative to the current directory when it is under it (as pytest shows)."""
    here = os.getcwd() + os.sep
    return site[len(here) :] if site.startswith(here) else site


def read_process(path: str) -> ProcessRecord | None:
    """One process's record: its text file (names of the process, its locks and sites), then
    its events."""
    try:
        with open(path[: -len(FILE_SUFFIX)] + TEXT_SUFFIX, "rb") as file:
            text_data = file.read()
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None
    record: ProcessRecord | None = None
    locks: dict[int, LockDecl] = {}
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
            record = ProcessRecord(ProcessName(int(parts[0]), parts[1]))
        elif kind == TEXT_LOCK and len(parts) >= 4 and record is not None:
            declared = LockDecl(parts[0], parts[2], parts[3])  # parts[1]: Lock or RLock
            locks[lock] = declared
            record.locks[declared.token] = declared
        elif kind == TEXT_SITE and len(parts) >= 2:
            sites[int(parts[0])] = printable(_display(parts[1]))
    if record is None:
        return None
    # The file is zero-filled past what was written. A slot that was taken but never written
    # (its write failed; a thread is writing it right now) is all zero too, and is skipped: what
    # was written after it still counts.
    end = len(data.rstrip(b"\0"))
    off = 0
    while off < end and off + RECORD_SIZE <= len(data):
        ts, site, lock, kind, flags = RECORD.unpack_from(data, off)
        off += RECORD_SIZE
        if ts == 0:
            continue
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
            Event(ts, kind, flags, record.process, decl.name, decl.token, sites.get(site))
        )
    return record


# -- the replay -------------------------------------------------------------------------------


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


@dataclass
class Overlap:
    """``second`` acquired a semaphore that ``first`` still held (mutual exclusion broken)."""

    first: Hold
    second: Hold


@dataclass
class ForeignRelease:
    """A release by a process that did not hold the semaphore; ``holders`` held it then."""

    event: Event
    holders: list[Hold]


@dataclass
class WaitEdge:
    """One process of a deadlock: it holds ``held`` and waits for ``wanted``, which ``holder``
    holds (the next process of the cycle; the process itself in a cycle of one, a thread that
    waits for the ``Lock`` it holds)."""

    process: ProcessName
    held: Hold
    wanted: str
    wait_site: str | None
    holder: ProcessName


class Replay:
    """Everything the processes of one checker recorded, replayed."""

    def __init__(self, processes: Sequence[ProcessRecord]) -> None:
        self.processes = list(processes)
        self.declared: dict[str, dict[str, list[ProcessName]]] = {}
        """By lock name, by token: the processes that used that semaphore under that name."""
        self.semaphores: dict[str, str] = {}
        """By token: the semaphore's name."""
        self.conflicts: list[Overlap | ForeignRelease] = []
        """What the replay could not explain, semaphore by semaphore, in time order."""
        self.open: dict[tuple[str, ProcessName], Hold] = {}
        """The holds not released yet, by token and process."""
        self._holds: dict[str, list[Hold]] = {}
        self._waiting: dict[str, list[ProcessName]] = {}
        self._requests: dict[ProcessName, Event] = {}
        """The request of each process that waits for a lock now."""
        for record in self.processes:
            for token, decl in record.locks.items():
                self.declared.setdefault(decl.name, {}).setdefault(token, []).append(record.process)
                self.semaphores[token] = decl.semaphore
        for name in self.declared:
            self._holds[name] = []
        events = sorted(
            (event for record in self.processes for event in record.events),
            key=lambda e: (e.ts, e.kind != RELEASED),
        )
        by_token: dict[str, list[Event]] = {}
        for event in events:
            by_token.setdefault(event.token, []).append(event)
        for token_events in by_token.values():
            self._replay_semaphore(token_events)
        for holds in self._holds.values():
            holds.sort(key=lambda hold: hold.start)

    def _replay_semaphore(self, events: list[Event]) -> None:
        depth: dict[ProcessName, int] = {}
        waiting: dict[ProcessName, Event] = {}
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
                )
                for other, count in depth.items():
                    if count and other != process and (other, process) not in reported:
                        reported.add((other, process))
                        self.conflicts.append(Overlap(self.open[(event.token, other)], hold))
                depth[process] = 1
                self.open[(event.token, process)] = hold
                self._holds[event.lock].append(hold)
            elif event.kind == RELEASED:
                if depth.get(process, 0):
                    depth[process] -= 1
                    if not depth[process]:
                        self.open.pop((event.token, process)).end = event.ts
                    continue
                holders = [other for other, count in depth.items() if count]
                self.conflicts.append(
                    ForeignRelease(event, [self.open[(event.token, o)] for o in holders])
                )
                for other in holders:  # the semaphore is free again: their hold is over
                    depth[other] = 0
                    hold = self.open.pop((event.token, other))
                    hold.end = event.ts
                    hold.released_by = process
        for process, request in waiting.items():
            self._waiting.setdefault(request.lock, []).append(process)
            self._requests[process] = request

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
        return [process for (_t, process), hold in self.open.items() if hold.lock == name]

    def wait_cycle(self) -> list[WaitEdge]:
        """Processes that wait for each other's locks in a cycle now (a deadlock), each with what
        it holds and what it waits for, in the order of the cycle; empty when there is none.

        A cycle of one is a thread that waits for the lock it holds itself (its request says so:
        another thread of its process may hold the lock, and then it only waits for that one).
        """
        holding: dict[str, list[Hold]] = {}
        for hold in self.open.values():
            holding.setdefault(hold.lock, []).append(hold)
        edges: dict[ProcessName, WaitEdge] = {}
        for process, request in self._requests.items():
            holders = [h for h in holding.get(request.lock, []) if h.process != process]
            mine = [h for h in self.open.values() if h.process == process]
            own = [h for h in mine if h.lock == request.lock]
            if request.flags & SELF_WAIT and own and not holders:
                edges[process] = WaitEdge(process, own[0], request.lock, request.site, process)
            elif holders and mine:
                edges[process] = WaitEdge(
                    process, mine[-1], request.lock, request.site, holders[0].process
                )
        for start in edges:
            path: list[WaitEdge] = []
            seen: set[ProcessName] = set()
            current: ProcessName | None = start
            while current is not None and current in edges and current not in seen:
                seen.add(current)
                path.append(edges[current])
                current = edges[current].holder
            if current is not None and current in seen:
                cycle = path[[edge.process for edge in path].index(current) :]
                # The edge held for the lock the previous one waits for: what it holds in the
                # cycle, not just any lock it holds.
                for index, edge in enumerate(cycle):
                    wanted_by_previous = cycle[index - 1].wanted
                    held = [
                        h for h in holding.get(wanted_by_previous, []) if h.process == edge.process
                    ]
                    if held:
                        edge.held = held[0]
                return cycle
        return []

    @property
    def busy(self) -> set[int]:
        """The pids of the processes that hold or wait for a lock now."""
        return {p.pid for (_token, p) in self.open} | {
            p.pid for waiting in self._waiting.values() for p in waiting
        }


# -- the record directory ----------------------------------------------------------------------


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
    """The pids of processes that stopped recording for want of room (see records.RecordWriter)."""
    return sorted({_pid_of(name) for name in _files(directory, LOST_SUFFIX)} - {-1})


def _pid_of(name: str) -> int:
    try:
        return int(name.split(".", 1)[0])
    except ValueError:
        return -1


def writers(directory: str) -> list[int]:
    """The pids of the processes that wrote records in ``directory``."""
    return [pid for pid in map(_pid_of, _files(directory, FILE_SUFFIX)) if pid != -1]


def read(directory: str) -> Replay:
    """Read and replay every process's record in ``directory``."""
    files = _files(directory, FILE_SUFFIX)
    return Replay([r for n in sorted(files) if (r := read_process(files[n])) is not None])
