"""The ``mp_locks`` fixture's object, :class:`LockChecker`, and the end of each test that used it.

The checker makes the test's checked locks (:mod:`~pytest_mpcheck.locks.checked`) in a record
directory of its own, reads what every process recorded (:mod:`~pytest_mpcheck.locks.replay`),
reports what that proves (:mod:`~pytest_mpcheck.locks.checks`) and the contention figures
(:mod:`~pytest_mpcheck.locks.stats`); at teardown, :func:`finish_test` fails the test for what it
found and hands the figures to the session (:mod:`~pytest_mpcheck.locks.tally`).
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, NoReturn, TypeVar

import pytest

from pytest_mpcheck._os import scratch
from pytest_mpcheck.errors import MpCheckInternalWarning, warn_at_test
from pytest_mpcheck.locks.checked import CheckedLock, close_records, make_lock
from pytest_mpcheck.locks.checks import (
    HELD_AT_EXIT,
    NOT_SHARED,
    ORDER_INVERSION,
    RELEASE_NOT_HELD,
    TWO_HOLDERS,
    Checks,
    LockFinding,
    ended,
    format_findings,
)
from pytest_mpcheck.locks.replay import Hold, ProcessName, Replay, lost_records, read, writers
from pytest_mpcheck.locks.stats import LockStats, lock_stats
from pytest_mpcheck.locks.tally import tally_of

_T = TypeVar("_T")


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
        self.exit_status: Callable[[int], int | None] | None = None
        """How a child of the test process ended (its exit status, where known): set by
        ``mp_locks`` from the run's start records."""
        self.ended_by_mpcheck: Callable[[int], str | None] | None = None
        """How the plugin ended a child of the test that it reported as hung (``"SIGTERM"``...),
        ``None`` for one it did not end: set by ``mp_locks`` from the run's findings."""
        self.deadlocked: set[int] = set()
        """The pids of the processes of the deadlock that a hang report showed (see
        :func:`deadlock_details`)."""

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

    def records(self) -> Replay:
        """Read and replay what every process recorded so far."""
        return read(self.directory)

    def _checks(self, replay: Replay, current_test: bool = False) -> Checks:
        me = ProcessName(os.getpid(), multiprocessing.current_process().name)
        checks = Checks(replay, self.t0, {lock.token: me for lock in self._locks.values()})
        checks.held_at_exit(
            current_test, self.exit_status, self.ended_by_mpcheck, frozenset(self.deadlocked)
        )
        return checks

    def findings(self) -> list[LockFinding]:
        """Every problem found so far (processes still running are not held against).

        The test has seen them: they are not reported again when the test ends.
        """
        found = self._checks(self.records()).findings
        self._seen.update(f.message for f in found)
        return found

    def _known(self, call: str, name: object, replay: Replay) -> str:
        __tracebackhide__ = True
        checked = _check_name(call, name)
        if checked not in self._locks and checked not in replay.names:
            known = ", ".join(repr(n) for n in sorted(set(self._locks) | set(replay.names)))
            _fail(
                f"mp_locks.{call}: no lock named {checked!r} in this test. "
                f"Known locks: {known or 'none (make one with mp_locks.Lock(name))'}"
            )
        return checked

    def _ask(self, call: str, name: str, question: Callable[[Replay, str], _T]) -> _T:
        """``question`` about the lock ``name`` (checked to be known) on a fresh replay."""
        __tracebackhide__ = True
        replay = self.records()
        return question(replay, self._known(f"{call}({name!r})", name, replay))

    def stats(self, name: str) -> LockStats:
        """The contention figures of the lock ``name``: see :class:`LockStats`."""
        __tracebackhide__ = True
        return self._ask(
            "stats", name, lambda replay, known: lock_stats(known, replay.holds(known))
        )

    def holds(self, name: str) -> list[Hold]:
        """Each hold of the lock ``name`` so far, by acquisition time."""
        __tracebackhide__ = True
        return self._ask("holds", name, Replay.holds)

    def waiting(self, name: str) -> list[ProcessName]:
        """The processes that wait for the lock ``name`` now."""
        __tracebackhide__ = True
        return self._ask("waiting", name, Replay.waiting)

    def holders(self, name: str) -> list[ProcessName]:
        """The processes that hold the lock ``name`` now."""
        __tracebackhide__ = True
        return self._ask("holders", name, Replay.holders)

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
        replay = self.records()
        if name is not None:
            self._known(call, name, replay)
        found = [
            f
            for f in self._checks(replay).findings
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
        replay = self.records()
        found = self._checks(replay, current_test=True).findings
        stats = {name: lock_stats(name, replay.holds(name)) for name in replay.names}
        close_records(self.directory)
        if self._own_directory:
            scratch.remove_directory(self.directory)
        return [f for f in found if f.message not in self._seen], stats


#: The lock checker of a test that uses ``mp_locks``: a hang report asks it for a deadlock.
checker_key = pytest.StashKey["LockChecker"]()


def deadlock_details(item: pytest.Item) -> dict[int, str]:
    """For a test whose children hang: the ``deadlock:`` line of each process in a cycle of
    processes that wait for each other's checked locks, by pid, in the order of the cycle; empty
    when there is none. The checker remembers the cycle's processes (:attr:`deadlocked`)."""
    checker = item.stash.get(checker_key, None)
    if checker is None:
        return {}
    cycle = checker.records().wait_cycle()
    checker.deadlocked.update(edge.process.pid for edge in cycle)
    lines = {}
    for edge in cycle:
        held_at = f" (taken at {edge.held.site})" if edge.held.site else ""
        wait_at = f" (at {edge.wait_site})" if edge.wait_site else ""
        holder = _ITSELF if edge.holder == edge.process else f"which {edge.holder} holds"
        lines[edge.process.pid] = (
            f"deadlock:   holds {edge.held.lock!r}{held_at} and waits for {edge.wanted!r}"
            f"{wait_at}, {holder}"
        )
    return lines


def waits_for_a_lock_of(item: pytest.Item) -> Callable[[FrameType], bool]:
    """Whether a frame is the wait of one of the test's checked locks for its semaphore: what a
    thread of the pytest process does in a deadlock with its children."""
    checker = item.stash.get(checker_key, None)
    directory = checker.directory if checker is not None else None

    def waits(frame: FrameType) -> bool:
        if frame.f_code is not CheckedLock._wait.__code__:
            return False
        lock = frame.f_locals.get("self")
        return isinstance(lock, CheckedLock) and lock.directory == directory

    return waits


#: How a ``deadlock:`` line ends for a cycle of one: a thread that waits for the Lock it holds.
_ITSELF = "which it holds itself: a Lock is not re-entrant"

#: Said once below the report when a deadlock was found.
DEADLOCK_ADVICE = (
    "The processes marked 'deadlock' wait for each other's checked locks in a cycle: none can go "
    "on. How to fix: take these locks in one global order everywhere (mp_locks.assert_ordered() "
    "checks the order of a run, deadlocked or not)."
)

#: Said instead when the cycle is one process that waits for a lock it holds itself.
SELF_DEADLOCK_ADVICE = (
    "The process marked 'deadlock' waits for a checked lock that it holds itself: the thread that "
    "holds a Lock cannot take it again, and waits forever. How to fix: do not take the lock again "
    "while holding it (code called under the lock must not take it), or make it an RLock "
    "(mp_locks.RLock(name), multiprocessing.RLock) where the same thread must take it again."
)


def deadlock_advice(lines: Sequence[str]) -> str:
    """What to do about the deadlock of these ``deadlock:`` lines (see
    :func:`deadlock_details`)."""
    if lines and all(line.endswith(_ITSELF) for line in lines):
        return SELF_DEADLOCK_ADVICE
    return DEADLOCK_ADVICE


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
        busy = checker.records().busy
    except Exception:
        busy = set(writers(checker.directory))
    running = [pid for pid in busy if pid != me and not ended(pid)]
    while running and time.monotonic() < deadline:
        time.sleep(0.005)
        running = [pid for pid in running if not ended(pid)]
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
    tally_of(config).add(nodeid, stats)
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
