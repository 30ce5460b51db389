"""``mp_output.assert_atomic(lock)``: were the lines written during each hold of a lock one block?

Decided on the write times of the lines and the hold times of the lock, not on the text. The
output side (:mod:`~pytest_mpcheck.fixtures.output`) reads the lines and prints the interleaving;
this module only needs each line's process and write time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

import pytest

from pytest_mpcheck.locks.checked import CheckedLock
from pytest_mpcheck.locks.replay import Hold, read

#: How many problems the message lists before "... and N more".
_SHOWN = 5


class Line(Protocol):
    """What the check needs of a line of output (``fixtures.output.OutputLine`` has it)."""

    @property
    def pid(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def time_ns(self) -> int: ...


@dataclass
class Atomicity:
    """What :func:`check_atomic` found; no ``problems``: the output was atomic."""

    lock: str
    problems: list[str] = field(default_factory=list)
    notes: dict[int, str] = field(default_factory=dict)
    """By line index: what is wrong with that line."""
    holds: list[int | None] = field(default_factory=list)
    """By line index: the number of the hold it was written in (1, 2, ... in order of first
    line), ``None`` when written outside any hold of its process."""

    def message(self) -> str:
        """The head of the failure: what was wrong, without the interleaving."""
        shown = self.problems[:_SHOWN]
        if len(self.problems) > _SHOWN:
            shown.append(f"... and {len(self.problems) - _SHOWN} more")
        return (
            f"mp_output.assert_atomic({self.lock!r}): the output is not atomic under the lock\n"
            + "\n".join(f"  {problem}" for problem in shown)
        )


def _fail(message: str) -> NoReturn:
    __tracebackhide__ = True
    pytest.fail(message, pytrace=False)


def check_atomic(lines: Sequence[Line], lock: object, unprotected_ok: bool = False) -> Atomicity:
    """Check that the lines of each hold of ``lock`` are one block.

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

    found = Atomicity(lock.name)
    notes, problems = found.notes, found.problems
    owner: list[Hold | None] = []
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
    numbers: dict[int, int] = {}
    found.holds = [
        None if own is None else numbers.setdefault(id(own), len(numbers) + 1) for own in owner
    ]
    return found
