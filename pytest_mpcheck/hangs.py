"""Hung children: read their stacks, end them, and report them as ``hung`` findings.

Used by the fixtures (a join that timed out, a process still alive at teardown, a pool or executor
that did not finish) and by the pytest-timeout integration (:mod:`pytest_mpcheck.timeouts`). Each
hung process becomes a :class:`~pytest_mpcheck.findings.Finding` of kind ``hung`` that the
session counts and reports like the watch's own findings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_mpcheck import procfs, report, stacks
from pytest_mpcheck.findings import HUNG, Finding, ProcessInfo
from pytest_mpcheck.terminate import Leftover, end_processes

if TYPE_CHECKING:
    import pytest

    from pytest_mpcheck.session import MpCheckSession


@dataclass
class Suspect:
    """A process to diagnose and end."""

    pid: int
    handle: Any = None
    """The ``multiprocessing.Process`` that owns it, so that ending it also reaps it."""
    label: str | None = None
    """A detail line for the report, e.g. the task a pool worker was running."""


def _info(session: MpCheckSession | None, pid: int, owner: str) -> ProcessInfo | None:
    described = procfs.describe(pid)
    if described is None:
        return None
    name, cmdline, status, created, age, ppid = described
    record = session.recorder.records.get(pid) if session is not None else None
    return ProcessInfo(
        pid=pid,
        ppid=ppid,
        name=record.name if record is not None and record.name else name,
        cmdline=cmdline,
        status=status,
        create_time=created,
        age=age,
        started_at=record.site if record is not None else None,
        started_by=record.started_by if record is not None else None,
        owner=owner,
    )


def end_hung(
    session: MpCheckSession | None,
    item: pytest.Item,
    suspects: Sequence[Suspect],
    why: str,
    workdir: str | None,
    grace: float,
    stack_timeout: float = 2.0,
    pyspy: bool = True,
) -> list[Finding]:
    """Read the stacks of the live suspects, end them, and record ``hung`` findings."""
    alive = [s for s in suspects if procfs.state(s.pid) not in (None, "Z")]
    read = stacks.stacks_of(workdir, [s.pid for s in alive], stack_timeout, pyspy=pyspy)
    findings: list[Finding] = []
    leftovers: list[Leftover] = []
    for suspect in alive:
        info = _info(session, suspect.pid, item.nodeid)
        if info is None:
            continue
        stack = read[suspect.pid]
        info.stack = stack.text
        details = [why] + ([suspect.label] if suspect.label else [])
        details += stacks.describe_wait(stack, suspect.pid)
        findings.append(Finding(HUNG, info, item.nodeid, details=details))
        leftovers.append(Leftover(suspect.pid, info.create_time, suspect.handle))
        # Reported as hung: its exit code (the signal that ended it) is no news at teardown.
        mark = getattr(suspect.handle, "mark_reported", None)
        if callable(mark):
            mark()
    session_pid = session.watch.session_pid if session is not None else os.getpid()
    outcome = end_processes(leftovers, session_pid, grace)
    for finding in findings:
        finding.ended_by = outcome.get(finding.process.pid)
    if session is not None:
        for finding in findings:
            session.tally.count(finding)
            session.findings.append(finding)
            session.config.hook.pytest_mpcheck_finding(
                config=session.config, item=item, finding=finding
            )
    return findings


def format_hung(headline: str, findings: Sequence[Finding], advice: str) -> str:
    """The report for hung processes: a headline, each process with its stack, what to do."""
    body = "\n\n".join(report.format_finding(finding) for finding in findings)
    return f"{headline}\n\n{body}\n\n{advice}" if body else f"{headline}\n\n{advice}"


def join_advice(join_timeout: float) -> str:
    """What to do about a child that did not finish within the join timeout."""
    return (
        f"The join timeout is {join_timeout:g}s (--mp-join-timeout, ini mp_join_timeout, "
        "@pytest.mark.mp_join_timeout(seconds)). If the child is only slow, raise it; if it waits "
        "for something (a lock never released, a queue nobody feeds, a join of its own), its stack "
        "above shows where."
    )
