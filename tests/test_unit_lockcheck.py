"""The lock checker's pure logic: records replayed into findings, cycles in the lock-order graph,
and the record files read back. No process is started: the records are written by hand.

tests/test_locks_records.py covers the rest of this ground with record files written byte by
byte; the cases here are those it does not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytest_mpcheck.locks.checks import (
    ORDER_INVERSION,
    RELEASE_NOT_HELD,
    TWO_HOLDERS,
    Checks,
    cycles,
    format_findings,
)
from pytest_mpcheck.locks.records import (
    ACQUIRED,
    FILE_SUFFIX,
    FOREIGN,
    GAVE_UP,
    RECORD,
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
from pytest_mpcheck.locks.replay import (
    Event,
    LockDecl,
    ProcessName,
    ProcessRecord,
    Replay,
    lost_records,
    read,
)
from pytest_mpcheck.locks.stats import lock_stats

SECOND = 1_000_000_000
FIRST = ProcessName(101, "first")
OTHER = ProcessName(102, "second")
#: A pid above the largest pid_max Linux allows: no process has it.
NO_SUCH_PID = 4_194_305


def _record(
    process: ProcessName,
    events: list[tuple[Any, ...]],
    locks: dict[str, str] | None = None,
) -> ProcessRecord:
    """A process's record: ``events`` as ``(seconds, kind, lock, site, flags)``; each lock name's
    token is the name itself unless ``locks`` maps it to another token."""
    tokens = locks or {}
    record = ProcessRecord(process)
    for event in events:
        seconds, kind, name = event[:3]
        site = event[3] if len(event) > 3 else None
        flags = event[4] if len(event) > 4 else 0
        token = tokens.get(name, name)
        record.locks.setdefault(token, LockDecl(name, token, f"/mp-{token}"))
        record.events.append(Event(seconds * SECOND, kind, flags, process, name, token, site))
    for name, token in tokens.items():
        record.locks.setdefault(token, LockDecl(name, token, f"/mp-{token}"))
    return record


def _kinds(checks: Checks) -> list[str]:
    return [finding.kind for finding in checks.findings]


# -- cycles ------------------------------------------------------------------------------------


def test_no_cycle_in_an_empty_graph_or_a_dag() -> None:
    assert cycles({}) == []
    assert cycles({"a": {"b", "c"}, "b": {"c"}}) == []


def test_each_cycle_once_from_its_smallest_node() -> None:
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert cycles({"b": {"c"}, "c": {"a"}, "a": {"b"}}) == [["a", "b", "c"]]
    # Two cycles through one lock; the edges out of the cycles change nothing.
    graph = {"a": {"b", "c", "d"}, "b": {"a"}, "c": {"a"}}
    assert cycles(graph) == [["a", "b"], ["a", "c"]]


def test_cycles_longer_than_eight_locks_are_not_followed() -> None:
    names = [f"l{n}" for n in range(10)]
    ring = {name: {names[(index + 1) % len(names)]} for index, name in enumerate(names)}
    assert cycles(ring) == []
    names = names[:8]
    ring = {name: {names[(index + 1) % len(names)]} for index, name in enumerate(names)}
    assert cycles(ring) == [names]


# -- replay ------------------------------------------------------------------------------------


def test_rlock_taken_again_by_its_holder_is_one_hold() -> None:
    events = [(1, ACQUIRED, "r"), (2, ACQUIRED, "r"), (3, RELEASED, "r"), (4, RELEASED, "r")]
    replay = Replay([_record(FIRST, events)])
    assert Checks(replay, t0=0).findings == []
    (hold,) = replay.holds("r")
    assert (hold.start, hold.end) == (SECOND, 4 * SECOND)
    assert lock_stats("r", replay.holds("r")).acquisitions == 1


def test_two_holders_at_once() -> None:
    first = _record(FIRST, [(1, ACQUIRED, "x", "t.py:1"), (3, RELEASED, "x")])
    other = _record(OTHER, [(2, ACQUIRED, "x", "t.py:2"), (4, RELEASED, "x")])
    replay = Replay([first, other])
    (finding,) = Checks(replay, t0=0).findings
    assert finding.kind == TWO_HOLDERS
    assert finding.lock == "x"
    assert finding.processes == [FIRST, OTHER]
    assert str(finding).splitlines() == [
        "two holders at once: lock 'x' was held by first (pid 101) and second (pid 102) at the "
        "same time",
        "    first (pid 101) acquired at t.py:1 at +1.000s and still held it",
        "    when second (pid 102) acquired at t.py:2 at +2.000s",
        "  How to fix: every acquire and release must go through the checked lock; a release of "
        "the raw semaphore (or of a lock the holder does not own) lets a second process in.",
    ]
    assert [hold.process for hold in replay.holds("x")] == [FIRST, OTHER]


def test_a_release_at_the_same_instant_comes_before_the_next_acquisition() -> None:
    first = _record(FIRST, [(1, ACQUIRED, "x"), (2, RELEASED, "x")])
    other = _record(OTHER, [(2, ACQUIRED, "x"), (3, RELEASED, "x")])
    assert Checks(Replay([other, first]), t0=0).findings == []


def test_release_by_a_process_that_does_not_hold_the_lock() -> None:
    first = _record(FIRST, [(1, ACQUIRED, "x", "t.py:1")])
    other = _record(OTHER, [(2, RELEASED, "x", "t.py:9", FOREIGN)])
    replay = Replay([first, other])
    (finding,) = Checks(replay, t0=0).findings
    assert finding.kind == RELEASE_NOT_HELD
    assert finding.processes == [OTHER, FIRST]
    assert str(finding).splitlines()[0] == (
        "release of a lock not held: second (pid 102) released lock 'x' at t.py:9 at +2.000s, but "
        "it did not hold it: first (pid 101) held it (acquired at t.py:1 at +1.000s)"
    )
    # The semaphore is free again: the holder's hold ended there, and nobody holds the lock.
    (hold,) = replay.holds("x")
    assert (hold.end, hold.released_by) == (2 * SECOND, OTHER)
    assert replay.holders("x") == []


def test_release_of_a_lock_nobody_holds() -> None:
    checks = Checks(Replay([_record(OTHER, [(1, RELEASED, "x")])]), t0=0)
    assert str(checks.findings[0]).splitlines()[0] == (
        "release of a lock not held: second (pid 102) released lock 'x' at an unknown site at "
        "+1.000s, but it did not hold it: nobody held it"
    )


def test_contention_figures() -> None:
    first = _record(FIRST, [(1, ACQUIRED, "x", "t.py:1"), (3, RELEASED, "x")])
    other = _record(
        OTHER, [(2, REQUESTED, "x", "t.py:2"), (3, ACQUIRED, "x", "t.py:2"), (5, RELEASED, "x")]
    )
    replay = Replay([first, other])
    assert Checks(replay, t0=0).findings == []
    stats = lock_stats("x", replay.holds("x"))
    assert (stats.acquisitions, stats.contended) == (2, 1)
    assert (stats.total_wait, stats.max_wait) == (1.0, 1.0)
    assert (stats.total_hold, stats.max_hold) == (4.0, 2.0)
    assert stats.by_process["second (pid 102)"].contended == 1
    assert stats.by_process["first (pid 101)"].contended == 0
    assert list(stats.by_site) == ["t.py:1", "t.py:2"]
    assert stats.format().splitlines() == [
        "lock 'x': 2 acquisitions, 1 contended, wait total 1000.000 ms max 1000.000 ms, "
        "hold max 2000.000 ms",
        "    process first (pid 101): 1 acq, 0 contended, wait max 0.000 ms, hold max 2000.000 ms",
        "    process second (pid 102): 1 acq, 1 contended, wait max 1000.000 ms, hold max "
        "2000.000 ms",
        "    site t.py:1: 1 acq, 0 contended, wait max 0.000 ms, hold max 2000.000 ms",
        "    site t.py:2: 1 acq, 1 contended, wait max 1000.000 ms, hold max 2000.000 ms",
    ]


def test_lock_order_inversion() -> None:
    first = _record(
        FIRST,
        [
            (1, ACQUIRED, "a", "t.py:10"),
            (2, ACQUIRED, "b", "t.py:11"),
            (3, RELEASED, "b"),
            (4, RELEASED, "a"),
        ],
    )
    other = _record(
        OTHER,
        [
            (5, ACQUIRED, "b", "t.py:20"),
            (6, REQUESTED, "a", "t.py:21"),
            (7, ACQUIRED, "a", "t.py:21"),
            (8, RELEASED, "a"),
            (9, RELEASED, "b"),
        ],
    )
    (finding,) = Checks(Replay([first, other]), t0=0).findings
    assert finding.kind == ORDER_INVERSION
    assert finding.lock == "a"
    assert finding.processes == [FIRST, OTHER]
    assert str(finding).splitlines() == [
        "lock-order inversion: locks 'a', 'b' are taken in opposite orders (a deadlock waiting to "
        "happen, whether or not this run deadlocked)",
        "    first (pid 101) took 'b' at t.py:11 while holding 'a' (taken at t.py:10)",
        # The edge is the request: the acquisition that follows it adds none.
        "    second (pid 102) waited for 'a' at t.py:21 while holding 'b' (taken at t.py:20)",
        "  How to fix: take these locks in one global order everywhere. Two processes that take "
        "them in opposite orders at the same moment deadlock.",
    ]


def test_one_process_taking_both_orders_is_an_inversion_too() -> None:
    events = [
        (1, ACQUIRED, "a"),
        (2, ACQUIRED, "b"),
        (3, RELEASED, "b"),
        (4, RELEASED, "a"),
        (5, ACQUIRED, "b"),
        (6, ACQUIRED, "a"),
        (7, RELEASED, "a"),
        (8, RELEASED, "b"),
    ]
    assert _kinds(Checks(Replay([_record(FIRST, events)]), t0=0)) == [ORDER_INVERSION]


def test_held_at_exit_by_an_ended_process_and_by_the_test_process() -> None:
    gone = ProcessName(NO_SUCH_PID, "victim")
    me = ProcessName(os.getpid(), "MainProcess")
    checks = Checks(
        Replay(
            [
                _record(gone, [(1, ACQUIRED, "k", "t.py:5")]),
                _record(me, [(2, ACQUIRED, "m", "t.py:6")]),
            ]
        ),
        t0=0,
    )
    checks.held_at_exit(current_test=False)
    assert [str(finding).splitlines()[0] for finding in checks.findings] == [
        f"held at exit: victim (pid {NO_SUCH_PID}) ended holding lock 'k' (acquired at t.py:5 at "
        "+1.000s); any other process that takes it waits forever",
    ]
    checks.held_at_exit(current_test=True)
    assert str(checks.findings[-1]).splitlines()[0] == (
        f"held at exit: the test process MainProcess (pid {os.getpid()}) still held lock 'm' at "
        "the end of the test (acquired at t.py:6 at +2.000s)"
    )


def test_held_at_exit_by_a_process_that_mpcheck_ended() -> None:
    # Ended by the test (terminate()), by mpcheck as hung, by mpcheck as one of a deadlock that
    # a hang report showed: the first two are named for who ended them, the third is no finding.
    by_test, hung, deadlocked = (ProcessName(NO_SUCH_PID + n, f"p{n}") for n in range(3))
    checks = Checks(
        Replay(
            [
                _record(p, [(n + 1, ACQUIRED, f"k{n}", "t.py:5")])
                for n, p in enumerate((by_test, hung, deadlocked))
            ]
        ),
        t0=0,
    )
    checks.held_at_exit(
        current_test=False,
        exit_status=lambda pid: -15,
        ended_by_mpcheck={hung.pid: "SIGTERM", deadlocked.pid: "SIGKILL"}.get,
        deadlocked=frozenset({deadlocked.pid}),
    )
    ending = (
        " while it held the lock: a process ended from outside never releases what it holds, so "
        "the lock can no longer be trusted"
    )
    assert [str(finding).splitlines()[0] for finding in checks.findings] == [
        f"held at exit: p0 (pid {by_test.pid}) ended holding lock 'k0' (acquired at t.py:5 at "
        f"+1.000s); any other process that takes it waits forever; it was ended by SIGTERM "
        f"(terminate()){ending}",
        f"held at exit: p1 (pid {hung.pid}) ended holding lock 'k1' (acquired at t.py:5 at "
        f"+2.000s); any other process that takes it waits forever; it was ended by mpcheck "
        f"(SIGTERM) as hung{ending}",
    ]


def test_times_are_relative_to_the_start_of_the_test() -> None:
    checks = Checks(Replay([]), t0=5 * SECOND)
    assert checks.at(6_250_000_000) == "+1.250s"


def test_a_process_name_is_printed_safely() -> None:
    assert str(ProcessName(7, "evil\x1b[2J\nname")) == "evil\\x1b[2J\\nname (pid 7)"


def test_format_findings_counts_them() -> None:
    first = _record(FIRST, [(1, ACQUIRED, "x")])
    other = _record(OTHER, [(2, RELEASED, "x")])
    findings = Checks(Replay([first, other]), t0=0).findings
    text = format_findings("test_a.py::test_b", findings)
    assert text.startswith("mpcheck: test_a.py::test_b: 1 lock problem\n\nrelease of a lock")
    assert format_findings("t", findings * 2).startswith("mpcheck: t: 2 lock problems")


# -- the record files --------------------------------------------------------------------------


def _text(kind: int, lock: int, *parts: str) -> bytes:
    data = "\0".join(parts).encode()
    return TEXT_HEADER.pack(kind, lock, len(data)) + data


def _write_record(directory: Path, pid: int, text: bytes, events: list[tuple[int, ...]]) -> None:
    # Both files are zero-filled past what was written, as the writer reserves their space.
    (directory / f"{pid}{TEXT_SUFFIX}").write_bytes(text + bytes(64))
    data = b"".join(RECORD.pack(*event) for event in events)
    (directory / f"{pid}{FILE_SUFFIX}").write_bytes(data + bytes(RECORD.size * 4))


def test_records_read_back_from_their_files(tmp_path: Path) -> None:
    directory = tmp_path / "mpcheck-unit-records"
    directory.mkdir()
    here = os.getcwd()
    text = (
        _text(TEXT_PROCESS, 0, "101", "first")
        + _text(TEXT_LOCK, 1, "x", "Lock", "tok", "/mp-abc")
        + _text(TEXT_SITE, 0, "1", f"{here}/test_a.py:3", "work")
    )
    # (ts, site, lock, kind, flags); lock 9 was never declared: its events are left out.
    _write_record(
        directory,
        101,
        text,
        [
            (SECOND, 1, 1, ACQUIRED, 0),
            (2 * SECOND, 1, 9, ACQUIRED, 0),
            (3 * SECOND, 0, 1, RELEASED, 0),
        ],
    )
    text = _text(TEXT_PROCESS, 0, "102", "second") + _text(
        TEXT_LOCK, 4, "x", "Lock", "tok", "/mp-abc"
    )
    # A release that multiprocessing refused did not happen; so the release was foreign.
    _write_record(
        directory,
        102,
        text,
        [(2 * SECOND, 0, 4, RELEASED, FOREIGN), (2 * SECOND, 0, 4, RELEASE_FAILED, FOREIGN)],
    )
    (directory / "junk.txt").write_text("not a record")
    replay = read(str(directory))
    assert [record.process for record in replay.processes] == [FIRST, OTHER]
    assert Checks(replay, t0=0).findings == []
    (hold,) = replay.holds("x")
    # The site is shown relative to the current directory, as pytest shows paths.
    assert (hold.process, hold.site, hold.start, hold.end) == (
        FIRST,
        "test_a.py:3",
        SECOND,
        3 * SECOND,
    )


def test_a_record_without_its_text_or_process_is_skipped(tmp_path: Path) -> None:
    (tmp_path / f"5{FILE_SUFFIX}").write_bytes(RECORD.pack(SECOND, 0, 1, ACQUIRED, 0))
    _write_record(tmp_path, 6, _text(TEXT_LOCK, 1, "x", "Lock", "t", "/mp-t"), [])
    assert read(str(tmp_path)).processes == []


def test_lost_records_are_named_by_pid(tmp_path: Path) -> None:
    for name in ("12.mplocks-lost", "7.mplocks-lost", "x.mplocks-lost", "3.mplocks"):
        (tmp_path / name).write_bytes(b"")
    assert lost_records(str(tmp_path)) == [7, 12]


# -- a deadlock now ------------------------------------------------------------------------------


def test_a_wait_cycle_names_what_each_holds_and_waits_for() -> None:
    third = ProcessName(103, "third")
    replay = Replay(
        [
            _record(FIRST, [(1, ACQUIRED, "a", "x.py:1"), (3, REQUESTED, "b", "x.py:2")]),
            _record(OTHER, [(2, ACQUIRED, "b", "x.py:3"), (4, REQUESTED, "a", "x.py:4")]),
            # Waits for a lock of the cycle, but nobody waits for what it holds: not in it.
            _record(third, [(2, ACQUIRED, "c", "x.py:5"), (5, REQUESTED, "a", "x.py:6")]),
        ]
    )
    cycle = replay.wait_cycle()
    assert [
        (e.process, e.held.lock, e.held.site, e.wanted, e.wait_site, e.holder) for e in cycle
    ] in (
        [
            (FIRST, "a", "x.py:1", "b", "x.py:2", OTHER),
            (OTHER, "b", "x.py:3", "a", "x.py:4", FIRST),
        ],
        [
            (OTHER, "b", "x.py:3", "a", "x.py:4", FIRST),
            (FIRST, "a", "x.py:1", "b", "x.py:2", OTHER),
        ],
    )


def test_no_wait_cycle_when_a_wait_ends_or_nobody_holds() -> None:
    # The second gave up its wait: no deadlock now (the inversion is another finding).
    gave_up = Replay(
        [
            _record(FIRST, [(1, ACQUIRED, "a"), (3, REQUESTED, "b")]),
            _record(OTHER, [(2, ACQUIRED, "b"), (4, REQUESTED, "a"), (5, GAVE_UP, "a")]),
        ]
    )
    assert gave_up.wait_cycle() == []
    # A wait for a lock that its holder will release: a chain, not a cycle.
    chain = Replay(
        [
            _record(FIRST, [(1, ACQUIRED, "a"), (3, REQUESTED, "b")]),
            _record(OTHER, [(2, ACQUIRED, "b")]),
        ]
    )
    assert chain.wait_cycle() == []


def test_a_thread_that_waits_for_the_lock_it_holds_is_a_cycle_of_one() -> None:
    itself = Replay(
        [_record(FIRST, [(1, ACQUIRED, "a", "x.py:1"), (2, REQUESTED, "a", "x.py:2", SELF_WAIT)])]
    )
    assert [
        (e.process, e.held.lock, e.held.site, e.wanted, e.wait_site, e.holder)
        for e in itself.wait_cycle()
    ] == [(FIRST, "a", "x.py:1", "a", "x.py:2", FIRST)]
    # Another thread of the process holds it: that one may release it, no deadlock to tell.
    other_thread = Replay([_record(FIRST, [(1, ACQUIRED, "a"), (2, REQUESTED, "a")])])
    assert other_thread.wait_cycle() == []
