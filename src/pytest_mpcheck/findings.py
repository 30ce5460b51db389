"""What the plugin finds, and the one place where each finding is recorded.

The watch, the end-of-session sweep, the hang diagnosis, the resource watch and the lock checker
all record what they find through :meth:`FindingLog.record`, which counts it in the terminal
summary's tally, keeps it for the JSON report (and pytest-xdist's controller), and shows it to
other plugins through the hook of its kind (:mod:`pytest_mpcheck.hookspecs`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TypeAlias

    import pytest

    from pytest_mpcheck.locks.checks import LockFinding

    #: What :meth:`FindingLog.record` takes. Only for the type checker: typing caches each
    #: ``Union`` it makes, and the entry would keep this copy of the module alive after
    #: pytester's in-process run drops it from ``sys.modules``.
    AnyFinding: TypeAlias = "Finding | ResourceFinding | LockFinding"

#: Kinds of process findings.
LEAKED = "leaked"
UNREAPED = "unreaped"
HUNG = "hung"

#: The ``ended_by`` values of a process the plugin ended.
ENDED = ("SIGTERM", "SIGKILL", "reaped", "Pool.terminate()")


@dataclass
class ChildDeath:
    """A child that died of a signal, or a pool's or executor's worker that exited with an error:
    told in a section of its test's report, never counted and never an outcome (the test's own
    checks decide whether that is a failure)."""

    pid: int
    name: str | None
    started_at: str | None
    started_by: str
    owner: str
    signal: int | None
    """The signal that killed it, as its process object read its exit status; ``None`` when it
    exited (see :attr:`exit_code`)."""
    task: str | None = None
    """The task it was running, when it was the worker of a pool or an executor."""
    exit_code: int | None = None
    """The exit code of a worker that exited with an error (its pool does not exit it so)."""


@dataclass
class TerminatedFeeder:
    """A child that put to a ``multiprocessing`` queue made by the test process, then died of a
    signal that the plugin did not send (``terminate()``, ``kill()``...): the queue can no longer
    be trusted. A warning of its test, never counted and never an outcome."""

    queue_key: str
    """What names the queue in every process that shares it (see
    :func:`pytest_mpcheck.watch.childsetup.queue_key`)."""
    queue_kind: str
    """``Queue``, ``JoinableQueue`` (or the name of a subclass)."""
    queue_site: str | None
    """``file:line`` of the user's code that made the queue."""
    queue_name: str | None
    """The name the queue was assigned to on that line, when it is a plain assignment."""
    child: ChildDeath
    """The child that fed it, and the signal that ended it."""


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
    started_from: str | None = None
    """When :attr:`started_at` is a library's line: the line of the test or ``conftest.py`` that
    led to it, e.g. ``test_x.py:12`` or ``test_x.py:12 (which started the thread that started
    it)``."""
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
        return as_json(self)


@dataclass
class ResourceFinding:
    """A named resource (semaphore, shared memory) a test or a wider-scoped fixture left behind."""

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
    handed_over: bool = False
    """Not freed when its test reported it, since a later test may still use it (warn mode, or
    still held): handed to the session, which frees it at its end."""
    held_by: str | None = None
    """The live object of the pytest process that still refers to it (a ``SharedMemory`` in a
    module's global), as a report names it."""
    reported_by: str | None = None
    """At the end of the session: whose it was, as the report of its test named it (a test, or a
    wider-scoped fixture); the end of the session only freed it."""


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
        """Count one finding; one that a test reported already counts only as ended."""
        if finding.reported_by is None:
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
        return as_json(self)


def as_json(value: Any, nodeid: str | None = None) -> dict[str, Any]:
    """A finding or a tally as plain data, for the JSON report and for pytest-xdist's hand-over.

    The one encoder of the plugin's findings: each is a dataclass of plain values. A lock
    finding does not know its test: ``nodeid`` is put first.
    """
    data = dataclasses.asdict(value)
    return {"nodeid": nodeid, **data} if nodeid is not None else data


class FindingLog:
    """Every finding of one run, and the figures of the terminal summary.

    Findings made in this process are kept as objects; pytest-xdist's controller adds those of
    its workers as plain data (:mod:`pytest_mpcheck.xdist`).
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tally = SessionTally()
        self.findings: list[Finding] = []
        self.resource_findings: list[ResourceFinding] = []
        self.lock_findings: list[dict[str, Any]] = []
        """As the JSON report lists them (a lock finding does not know its test)."""
        self.worker_findings: list[dict[str, Any]] = []
        """On the pytest-xdist controller: the findings its workers handed over, as JSON."""
        self.worker_resource_findings: list[dict[str, Any]] = []
        """As :attr:`worker_findings`, for the named resources."""

    def record(self, item: pytest.Item | None, finding: AnyFinding) -> None:
        """Count ``finding``, keep it for the JSON report, and call the hook of its kind.

        ``item`` is the test the finding fails or warns, ``None`` at the end of the session
        (no test is blamed).
        """
        hook, config = self.config.hook, self.config
        if isinstance(finding, Finding):
            self.tally.count(finding)
            self.findings.append(finding)
            hook.pytest_mpcheck_finding(config=config, item=item, finding=finding)
        elif isinstance(finding, ResourceFinding):
            if finding.reported_by is None:  # one a test reported is not counted again
                self.tally.resources += 1
            self.resource_findings.append(finding)
            hook.pytest_mpcheck_resource_finding(config=config, item=item, finding=finding)
        else:
            self.lock_findings.append(as_json(finding, item.nodeid if item else "<session>"))
            hook.pytest_mpcheck_lock_finding(config=config, item=item, finding=finding)
