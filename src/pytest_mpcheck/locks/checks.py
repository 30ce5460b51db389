"""What the replayed records prove: the lock checker's findings and their messages.

As the kernel's lockdep does for kernel locks:

- two processes holding one semaphore at once (mutual exclusion broken);
- a process that ended, or was killed, holding a lock;
- a release by a process that does not hold the lock (``multiprocessing.Lock`` allows it);
- lock-order inversion: each process's nesting of locks makes a graph, and a cycle in it is a
  deadlock waiting to happen, even when this run's processes took the locks one after the other;
- a lock that is not shared: processes that use one name but hold different semaphores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from pytest_mpcheck._os import procfs
from pytest_mpcheck.locks.records import ACQUIRED, GAVE_UP, RELEASED, REQUESTED, TRY
from pytest_mpcheck.locks.replay import ForeignRelease, Hold, Overlap, ProcessName, Replay
from pytest_mpcheck.signalwords import signal_sender

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


@dataclass
class LockFinding:
    """One problem the lock checker found."""

    kind: str
    lock: str
    message: str
    processes: list[ProcessName] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


def _ended_from_outside(by: str) -> str:
    """The end of a held-at-exit message for a holder that was ended ``by`` someone else."""
    return (
        f"; it was ended by {by} while it held the lock: a process ended from outside "
        "never releases what it holds, so the lock can no longer be trusted"
    )


class Checks:
    """The findings of one replay; ``t0`` is the start of the test (times are shown from it),
    ``own_tokens`` the tokens of the locks that the test process made, and who it is."""

    def __init__(
        self, replay: Replay, t0: int, own_tokens: dict[str, ProcessName] | None = None
    ) -> None:
        self.replay = replay
        self.t0 = t0
        self.own_tokens = own_tokens or {}
        self.findings: list[LockFinding] = []
        for name, tokens in replay.declared.items():
            if len(tokens) > 1:
                self.not_shared(name, tokens)
        for conflict in replay.conflicts:
            if isinstance(conflict, Overlap):
                self.two_holders(conflict.first, conflict.second)
            else:
                self.release_not_held(conflict)
        self.order()

    # -- formatting -----------------------------------------------------------------------------

    def at(self, ns: int) -> str:
        """A timestamp relative to the start of the test."""
        return f"+{(ns - self.t0) / 1e9:.3f}s"

    def _hold_text(self, hold: Hold) -> str:
        return f"acquired at {hold.site or 'an unknown site'} at {self.at(hold.start)}"

    def _add(self, kind: str, lock: str, text: str, processes: Iterable[ProcessName]) -> None:
        message = f"{kind}: {text}\n  {_FIX[kind]}"
        self.findings.append(LockFinding(kind, lock, message, list(processes)))

    # -- the findings ---------------------------------------------------------------------------

    def not_shared(self, name: str, tokens: dict[str, list[ProcessName]]) -> None:
        """One name, several semaphores."""
        users = sorted({p for procs in tokens.values() for p in procs}, key=lambda p: p.pid)
        lines = [
            f"lock {name!r} is not shared: {len(users)} processes use a lock of this name, but "
            f"they hold {len(tokens)} different semaphores, so none of them excludes another"
        ]
        for number, (token, procs) in enumerate(tokens.items(), 1):
            creator = self.own_tokens.get(token)
            made = f"made by the test in {creator}" if creator else "made in a child"
            semaphore = self.replay.semaphores.get(token) or "unnamed"
            who = ", ".join(str(p) for p in sorted(procs, key=lambda p: p.pid))
            lines.append(f"    semaphore {number} ({made}, {semaphore}): used by {who}")
        self._add(NOT_SHARED, name, "\n".join(lines), users)

    def two_holders(self, first: Hold, second: Hold) -> None:
        """``second`` acquired what ``first`` held."""
        text = (
            f"lock {first.lock!r} was held by {first.process} and {second.process} at the same "
            f"time\n"
            f"    {first.process} {self._hold_text(first)} and still held it\n"
            f"    when {second.process} {self._hold_text(second)}"
        )
        self._add(TWO_HOLDERS, first.lock, text, [first.process, second.process])

    def release_not_held(self, release: ForeignRelease) -> None:
        """A process released what it did not hold."""
        event, holders = release.event, release.holders
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

    def held_at_exit(
        self,
        current_test: bool,
        exit_status: Callable[[int], int | None] | None = None,
        ended_by_mpcheck: Callable[[int], str | None] | None = None,
        deadlocked: frozenset[int] = frozenset(),
    ) -> None:
        """Find the holds of processes that ended; ``current_test``: also this process's.

        ``exit_status`` tells how a child of the test process ended, where it is known: one
        ended from outside by a signal (``terminate()``, ``kill()``) is named as such.
        ``ended_by_mpcheck`` tells how the plugin ended a child it reported as hung: that is
        said instead. A process of a deadlock that a hang report showed (``deadlocked``) and
        that the plugin ended is no finding: that report showed what it held, and the holds it
        could not release are the deadlock's, not a lock it forgot (the lock-order inversion,
        found too, is the cause).
        """
        me = os.getpid()
        open_holds = sorted(self.replay.open.items(), key=lambda kv: kv[1].start)
        for (_token, process), hold in open_holds:
            if process.pid == me:
                if current_test:
                    text = (
                        f"the test process {process} still held lock {hold.lock!r} at the end of "
                        f"the test ({self._hold_text(hold)})"
                    )
                    self._add(HELD_AT_EXIT, hold.lock, text, [process])
                continue
            if not ended(process.pid):
                continue  # still running: the process watch reports it
            by_us = ended_by_mpcheck(process.pid) if ended_by_mpcheck is not None else None
            if by_us is not None and process.pid in deadlocked:
                continue
            text = (
                f"{process} ended holding lock {hold.lock!r} ({self._hold_text(hold)}); any "
                f"other process that takes it waits forever"
            )
            status = exit_status(process.pid) if exit_status is not None else None
            if by_us is not None:
                text += _ended_from_outside(f"mpcheck ({by_us}) as hung")
            elif status is not None and status < 0:
                text += _ended_from_outside(signal_sender(-status))
            self._add(HELD_AT_EXIT, hold.lock, text, [process])

    def order(self) -> None:
        """Lock-order inversion: a cycle in the graph of what each process took while holding
        what."""
        # edges[(a, b)]: b was taken while a was held; one example per process, as lockdep keeps.
        edges: dict[tuple[str, str], dict[ProcessName, tuple[str | None, str | None, str]]] = {}
        for record in self.replay.processes:
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
        for cycle in cycles(graph):
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


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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


def ended(pid: int) -> bool:
    """Whether the process ``pid`` is gone or a zombie."""
    return procfs.state(pid) in (None, "Z")


def format_findings(title: str, findings: Sequence[LockFinding]) -> str:
    """The whole report: a title line, then each finding."""
    count = len(findings)
    head = f"mpcheck: {title}: {count} lock problem{'s' if count != 1 else ''}"
    return head + "\n\n" + "\n\n".join(f.message for f in findings)
