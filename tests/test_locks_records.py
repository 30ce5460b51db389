"""The lock checker's replay and checks, fed record files written here byte by byte.

No process, no lock: each test writes the files that processes would have written (the format of
``pytest_mpcheck.locks.records``) and reads what the checker makes of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_mpcheck.fixtures.output import OutputLine, format_interleaving
from pytest_mpcheck.locks.checks import (
    HELD_AT_EXIT,
    NOT_SHARED,
    ORDER_INVERSION,
    RELEASE_NOT_HELD,
    TWO_HOLDERS,
    Checks,
    cycles,
)
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
    TEXT_HEADER,
    TEXT_LOCK,
    TEXT_PROCESS,
    TEXT_SITE,
    TEXT_SUFFIX,
    TRY,
)
from pytest_mpcheck.locks.replay import ProcessName, Replay, lost_records, read, writers
from pytest_mpcheck.locks.stats import lock_stats

#: A pid above Linux's largest (``pid_max`` is at most 2**22): a process that has surely ended.
GONE = 2**22 + 1


@dataclass
class Proc:
    """What one process wrote: its locks (name, token), sites, and events."""

    pid: int
    name: str
    locks: dict[str, str] = field(default_factory=dict)
    """Lock name -> token; the lock numbers follow this order, from 1."""
    events: list[tuple[int, str, int, int, int]] = field(default_factory=list)
    """(ts, lock name, kind, flags, site number); ts 0 writes an empty slot."""

    def event(self, ts: int, lock: str, kind: int, flags: int = 0, site: int = 1) -> Proc:
        self.events.append((ts, lock, kind, flags, site))
        return self

    def take(self, ts: int, lock: str, flags: int = 0) -> Proc:
        return self.event(ts, lock, ACQUIRED, flags)

    def give(self, ts: int, lock: str, flags: int = 0) -> Proc:
        return self.event(ts, lock, RELEASED, flags)

    def write(self, directory: Path, serial: int = 0) -> None:
        numbers = {name: number for number, name in enumerate(self.locks, 1)}
        text = [(TEXT_PROCESS, 0, f"{self.pid}\0{self.name}")]
        text += [
            (TEXT_LOCK, numbers[name], f"{name}\0Lock\0{token}\0/mp-{token}")
            for name, token in self.locks.items()
        ]
        text += [(TEXT_SITE, 0, f"{n}\0work.py:{n * 10}\0work") for n in (1, 2)]
        data = b"".join(
            TEXT_HEADER.pack(kind, lock, len(body.encode())) + body.encode()
            for kind, lock, body in text
        )
        stem = directory / f"{self.pid}.{serial}"
        stem.with_suffix(f".{serial}{TEXT_SUFFIX}").write_bytes(data + bytes(512))
        records = b"".join(
            bytes(RECORD_SIZE) if ts == 0 else RECORD.pack(ts, site, numbers[lock], kind, flags)
            for ts, lock, kind, flags, site in self.events
        )
        stem.with_suffix(f".{serial}{FILE_SUFFIX}").write_bytes(records + bytes(4096))


def replay(tmp_path: Path, *processes: Proc) -> Replay:
    for process in processes:
        process.write(tmp_path)
    return read(str(tmp_path))


def kinds(checks: Checks) -> list[str]:
    return [finding.kind for finding in checks.findings]


def test_holds_waits_and_figures(tmp_path: Path) -> None:
    a = Proc(GONE, "a", {"l": "t"}).take(10, "l").give(20, "l")
    b = Proc(GONE + 1, "b", {"l": "t"}).event(15, "l", REQUESTED).take(21, "l").give(30, "l")
    records = replay(tmp_path, a, b)
    assert records.names == ["l"]
    holds = records.holds("l")
    assert [(h.process.name, h.start, h.end, h.wait, h.contended) for h in holds] == [
        ("a", 10, 20, 0, False),
        ("b", 21, 30, 6, True),
    ]
    assert holds[0].site == "work.py:10"
    assert records.holders("l") == []
    assert records.waiting("l") == []
    stats = lock_stats("l", holds)
    assert (stats.acquisitions, stats.contended) == (2, 1)
    assert stats.max_wait == pytest.approx(6e-9)
    assert stats.max_hold == pytest.approx(10e-9)
    assert set(stats.by_process) == {f"a (pid {GONE})", f"b (pid {GONE + 1})"}
    assert list(stats.by_site) == ["work.py:10"]
    assert Checks(records, 0).findings == []


def test_an_open_hold_and_a_waiter_are_now(tmp_path: Path) -> None:
    a = Proc(GONE, "a", {"l": "t"}).take(10, "l")
    b = Proc(GONE + 1, "b", {"l": "t"}).event(15, "l", REQUESTED)
    c = Proc(GONE + 2, "c", {"l": "t"}).event(16, "l", REQUESTED).event(18, "l", GAVE_UP)
    records = replay(tmp_path, a, b, c)
    assert records.holders("l") == [ProcessName(GONE, "a")]
    assert records.waiting("l") == [ProcessName(GONE + 1, "b")]
    assert records.busy == {GONE, GONE + 1}
    checks = Checks(records, 0)
    assert checks.findings == []
    checks.held_at_exit(current_test=False)
    assert kinds(checks) == [HELD_AT_EXIT]
    assert checks.findings[0].message.startswith(
        f"held at exit: a (pid {GONE}) ended holding lock 'l' (acquired at work.py:10 at "
    )


def test_an_rlock_taken_again_is_one_hold(tmp_path: Path) -> None:
    a = Proc(GONE, "a", {"r": "t"}).take(10, "r").take(11, "r").give(12, "r").give(13, "r")
    holds = replay(tmp_path, a).holds("r")
    assert [(h.start, h.end) for h in holds] == [(10, 13)]


def test_two_holders_at_once(tmp_path: Path) -> None:
    a = Proc(GONE, "a", {"l": "t"}).take(1_000, "l").give(5_000, "l")
    b = Proc(GONE + 1, "b", {"l": "t"}).take(2_000, "l").give(3_000, "l")
    checks = Checks(replay(tmp_path, a, b), t0=0)
    assert kinds(checks) == [TWO_HOLDERS]
    assert checks.findings[0].processes == [ProcessName(GONE, "a"), ProcessName(GONE + 1, "b")]
    assert checks.findings[0].message.splitlines()[:3] == [
        f"two holders at once: lock 'l' was held by a (pid {GONE}) and b (pid {GONE + 1}) at "
        "the same time",
        f"    a (pid {GONE}) acquired at work.py:10 at +0.000s and still held it",
        f"    when b (pid {GONE + 1}) acquired at work.py:10 at +0.000s",
    ]


def test_release_by_a_process_that_did_not_hold_it(tmp_path: Path) -> None:
    a = Proc(GONE, "a", {"l": "t"}).take(10, "l")
    b = Proc(GONE + 1, "b", {"l": "t"}).event(15, "l", RELEASED, FOREIGN, site=2)
    records = replay(tmp_path, a, b)
    checks = Checks(records, 0)
    assert kinds(checks) == [RELEASE_NOT_HELD]
    assert checks.findings[0].message.startswith(
        f"release of a lock not held: b (pid {GONE + 1}) released lock 'l' at work.py:20 at "
    )
    (hold,) = records.holds("l")
    assert (hold.end, hold.released_by) == (15, ProcessName(GONE + 1, "b"))
    assert records.holders("l") == []


def test_a_release_that_multiprocessing_refused_did_not_happen(tmp_path: Path) -> None:
    a = Proc(GONE, "a", {"l": "t"}).take(10, "l").give(30, "l")
    b = Proc(GONE + 1, "b", {"l": "t"})
    b.event(15, "l", RELEASED, FOREIGN).event(16, "l", RELEASE_FAILED, FOREIGN)
    records = replay(tmp_path, a, b)
    assert Checks(records, 0).findings == []
    assert [(h.start, h.end) for h in records.holds("l")] == [(10, 30)]


def test_lock_order_inversion_and_its_cycle(tmp_path: Path) -> None:
    a = Proc(GONE, "a", {"x": "tx", "y": "ty"})
    a.take(10, "x").event(11, "y", ACQUIRED, site=2).give(12, "y").give(13, "x")
    b = Proc(GONE + 1, "b", {"x": "tx", "y": "ty"})
    b.take(20, "y").event(21, "x", REQUESTED, site=2).take(22, "x").give(23, "x").give(24, "y")
    checks = Checks(replay(tmp_path, a, b), 0)
    assert kinds(checks) == [ORDER_INVERSION]
    assert checks.findings[0].message.splitlines()[:3] == [
        "lock-order inversion: locks 'x', 'y' are taken in opposite orders (a deadlock waiting "
        "to happen, whether or not this run deadlocked)",
        f"    a (pid {GONE}) took 'y' at work.py:20 while holding 'x' (taken at work.py:10)",
        f"    b (pid {GONE + 1}) waited for 'x' at work.py:20 while holding 'y' (taken at "
        "work.py:10)",
    ]


def test_a_try_acquire_makes_no_lock_order(tmp_path: Path) -> None:
    # acquire(block=False) cannot deadlock: it gives up instead of waiting.
    a = Proc(GONE, "a", {"x": "tx", "y": "ty"})
    a.take(10, "x").take(11, "y", TRY).give(12, "y").give(13, "x")
    b = Proc(GONE + 1, "b", {"x": "tx", "y": "ty"})
    b.take(20, "y").take(21, "x").give(22, "x").give(23, "y")
    assert Checks(replay(tmp_path, a, b), 0).findings == []


def test_one_name_two_semaphores_is_not_shared(tmp_path: Path) -> None:
    test = ProcessName(GONE, "MainProcess")
    a = Proc(GONE, "MainProcess", {"l": "mine"}).take(10, "l").give(11, "l")
    b = Proc(GONE + 1, "child", {"l": "its own"}).take(10, "l").give(11, "l")
    checks = Checks(replay(tmp_path, a, b), 0, own_tokens={"mine": test})
    assert kinds(checks) == [NOT_SHARED]
    assert checks.findings[0].message.splitlines()[:3] == [
        "lock not shared: lock 'l' is not shared: 2 processes use a lock of this name, but they "
        "hold 2 different semaphores, so none of them excludes another",
        f"    semaphore 1 (made by the test in MainProcess (pid {GONE}), /mp-mine): used by "
        f"MainProcess (pid {GONE})",
        f"    semaphore 2 (made in a child, /mp-its own): used by child (pid {GONE + 1})",
    ]


def test_an_unwritten_slot_does_not_end_the_record(tmp_path: Path) -> None:
    # A slot whose write failed stays all zero; what the process wrote after it still counts.
    a = Proc(GONE, "a", {"l": "t"}).take(10, "l").give(11, "l")
    a.event(0, "l", 0).take(20, "l").give(21, "l")
    assert [(h.start, h.end) for h in replay(tmp_path, a).holds("l")] == [(10, 11), (20, 21)]


def test_a_process_whose_text_is_missing_is_passed_over(tmp_path: Path) -> None:
    Proc(GONE, "a", {"l": "t"}).take(10, "l").write(tmp_path)
    (tmp_path / f"{GONE}.0{TEXT_SUFFIX}").unlink()
    assert read(str(tmp_path)).names == []


def test_writers_and_lost_records(tmp_path: Path) -> None:
    Proc(GONE, "a", {"l": "t"}).write(tmp_path)
    Proc(GONE, "a again", {"l": "t"}).write(tmp_path, serial=1)
    (tmp_path / f"{GONE + 1}.0{LOST_SUFFIX}").touch()
    assert writers(str(tmp_path)) == [GONE, GONE]
    assert lost_records(str(tmp_path)) == [GONE + 1]


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"c": {"a"}, "a": {"b"}, "b": {"c"}}, [["a", "b", "c"]]),
        ({"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a"}}, [["a", "b"], ["a", "b", "c"], ["a", "c"]]),
    ],
)
def test_cycles_are_found_once_from_their_smallest_lock(
    graph: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert cycles(graph) == expected


def test_the_interleaving_shows_holds_and_notes_escaped() -> None:
    lines = [
        OutputLine(1, "a", "stdout", 1, "in"),
        OutputLine(2, "b\x1b", "stderr", 2, "out\x07"),
        OutputLine(1, "a", "stdout", 3, "in"),
    ]
    notes = {1: "<-- written while a held"}
    text = format_interleaving(lines, notes, notes=notes, holds=[1, None, 1])
    assert text.splitlines() == [
        "      1  a (1)      hold  1  out| in",
        r">>    2  b\x1b (2)        -  err| out\x07   <-- written while a held",
        "      3  a (1)      hold  1  out| in",
    ]


def test_module_lock_check_reaches_nothing_through_builtins() -> None:
    # mp_spawn(pow, ...) under spawn once died of a RecursionError in this check: a built-in
    # function has no code, and its type's __call__ is a slot wrapper, whose type has one too.
    import builtins
    import sys

    from pytest_mpcheck.watch import modulelevel

    assert modulelevel._codes_of(pow) == []
    assert modulelevel._codes_of(print) == []
    assert modulelevel._reachable_names(pow, builtins) == set()

    class Callable:
        def __call__(self) -> object:
            return GONE

    assert modulelevel._reachable_names(Callable(), sys.modules[__name__]) == {"GONE"}
