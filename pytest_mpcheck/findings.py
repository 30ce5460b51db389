"""What the plugin finds: the processes it names and the findings it reports."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Kinds of process findings.
LEAKED = "leaked"
UNREAPED = "unreaped"
HUNG = "hung"

#: The ``ended_by`` values of a process the plugin ended.
ENDED = ("SIGTERM", "SIGKILL", "reaped", "Pool.terminate()")


@dataclass
class ProcessInfo:
    """A process as the report names it."""

    pid: int
    ppid: int
    name: str
    cmdline: str
    status: str
    create_time: float
    age: float
    started_at: str | None = None
    """``file:line`` of the code that started it, when it was started in the pytest process."""
    started_by: str | None = None
    """The call that started it, e.g. ``multiprocessing.Process.start``."""
    owner: str | None = None
    """Who it belongs to: a test's node id or ``"<scope>-scoped fixture 'name'"``."""
    stack: str | None = None
    """The current Python stack of a live child, where it could be read."""

    @property
    def is_zombie(self) -> bool:
        """Whether the process has exited but was never waited for."""
        return self.status == "zombie"


@dataclass
class Finding:
    """One problem found after a test: a process left behind, unreaped or hung."""

    kind: str
    process: ProcessInfo
    nodeid: str
    ended_by: str | None = None
    """How the plugin ended it: ``"SIGTERM"``, ``"SIGKILL"``, ``"reaped"``, or why it could not."""
    details: list[str] = field(default_factory=list)
    reported_by: str | None = None
    """At the end of the session: the test that already reported this process."""

    def to_json(self) -> dict[str, Any]:
        """A plain dict for the JSON report."""
        return dataclasses.asdict(self)


@dataclass
class SessionTally:
    """The figures of the terminal summary; added up across pytest-xdist workers."""

    started: int = 0
    leaked: int = 0
    unreaped: int = 0
    hung: int = 0
    ended: int = 0
    resources: int = 0
    """Named semaphores and shared memory segments left behind (see :mod:`resources`)."""

    def add(self, other: dict[str, int]) -> None:
        """Add the figures of another tally, given as :meth:`to_json` made them."""
        for name in ("started", "leaked", "unreaped", "hung", "ended", "resources"):
            setattr(self, name, getattr(self, name) + int(other.get(name, 0)))

    def count(self, finding: Finding) -> None:
        """Count one finding."""
        if finding.kind == LEAKED:
            self.leaked += 1
        elif finding.kind == UNREAPED:
            self.unreaped += 1
        elif finding.kind == HUNG:
            self.hung += 1
        if finding.ended_by in ENDED:
            self.ended += 1

    def to_json(self) -> dict[str, int]:
        """A plain dict (for JSON and for pytest-xdist's worker output)."""
        return dataclasses.asdict(self)
