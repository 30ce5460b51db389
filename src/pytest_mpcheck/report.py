"""Turning findings into the text a person reads, the terminal summary, and the JSON report."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pytest_mpcheck._os import procfs
from pytest_mpcheck.findings import (
    HUNG,
    LEAKED,
    UNREAPED,
    ChildDeath,
    Finding,
    FindingLog,
    ProcessInfo,
    ResourceFinding,
    SessionTally,
    TerminatedFeeder,
    as_json,
)
from pytest_mpcheck.safetext import COMMAND_LIMIT, printable
from pytest_mpcheck.signalwords import SENT_BY, signal_name
from pytest_mpcheck.watch.resourcelog import SEMAPHORE, SHARED_MEMORY

_STATE_WORDS = {
    LEAKED: "still running",
    UNREAPED: "exited but never joined or waited for (zombie)",
    HUNG: "hung",
}

_ENDED_WORDS = {
    "SIGTERM": "SIGTERM (ended by mpcheck)",
    "SIGKILL": "SIGKILL (it ignored SIGTERM; killed by mpcheck)",
    "reaped": "reaped by mpcheck",
    "Pool.terminate()": "terminate() of its multiprocessing Pool (called by mpcheck)",
}

HOW_TO_FIX = (
    "How to fix: wait for every process the test starts before it ends: Process.join(), "
    "Popen.wait() or communicate(), Pool.close() then Pool.join() (or `with Pool(...)`), "
    "executor.shutdown() (or `with ProcessPoolExecutor(...)`).\n"
    "A process meant to outlive one test belongs in a fixture of module or session scope "
    "(it is then checked when that fixture ends); a helper that is no leak can be listed in the "
    'ini value mp_ignore; @pytest.mark.mp_check("warn") or ("off") relaxes the check for one test.'
)


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def format_finding(finding: Finding) -> str:
    """The lines that name one process and say what happened to it."""
    process = finding.process
    head = (
        f"{finding.kind} process {process.pid} {process.name!r}: "
        f"{_STATE_WORDS.get(finding.kind, finding.kind)}, state {process.status}, "
        f"age {process.age:.2f}s"
    )
    # What a process says of itself is escaped (no terminal escapes, no forged log lines) and a
    # huge command line is cut; the JSON report keeps both whole.
    command = printable(process.cmdline, COMMAND_LIMIT)
    if process.cmdline == procfs.own_cmdline():
        command = f"(a fork of the pytest process) {command}"
    lines = [head, f"    command:    {command}"]
    if process.started_at or process.started_by:
        where = printable(process.started_at or "unknown place")
        how = f" by {process.started_by}" if process.started_by else ""
        lines.append(f"    started at: {where}{how}")
        if process.started_from:
            lines.append(f"    from test:  {printable(process.started_from)}")
    elif process.ppid == os.getpid():
        lines.append(
            "    started by: unknown: an orphan that reparented to pytest (its parent has "
            "ended), or a child that C code forked"
        )
    else:
        lines.append(
            f"    started by: a child process (parent pid {process.ppid}), not by the test process"
        )
    if process.owner and process.owner != finding.nodeid:
        lines.append(f"    owned by:   {printable(process.owner)}")
    if finding.ended_by:
        lines.append(f"    ended by:   {_ENDED_WORDS.get(finding.ended_by, finding.ended_by)}")
    lines.extend(f"    {printable(detail)}" for detail in finding.details)
    if process.stack:
        lines.append("    stack (most recent call last):")
        lines.append(_indent(printable(process.stack, lines=True), "      "))
    return "\n".join(lines)


def _fixture_name(owner: str) -> str:
    """How a report names a fixture scope; pytest runs unittest's class and module set-ups as
    fixtures of its own."""
    for hidden, shown in (
        ("'_unittest_setUpClass_fixture_", "setUpClass of "),
        ("'_xunit_setup_module_fixture_", "setUpModule/setup_module of "),
        ("'_xunit_setup_class_fixture_", "setup_class of "),
    ):
        if hidden in owner:
            return shown + owner.split(hidden, 1)[1].rstrip("'")
    return owner


def format_findings(nodeid: str, findings: Sequence[Finding]) -> str:
    """The whole report for one test."""
    counts = {kind: sum(1 for f in findings if f.kind == kind) for kind in (LEAKED, UNREAPED, HUNG)}
    parts = ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)
    total = len(findings)
    owners = {f.process.owner for f in findings}
    who = nodeid
    if len(owners) == 1 and None not in owners and nodeid not in owners:
        # A wider-scoped fixture's processes, checked as it was finalized in this teardown:
        # the test itself (perhaps a skipped one) is not to blame.
        who = f"{_fixture_name(str(owners.pop()))} (finalized at the teardown of {nodeid})"
    title = f"mpcheck: {who} left {total} process{'es' if total != 1 else ''} behind ({parts})"
    body = "\n\n".join(format_finding(finding) for finding in findings)
    return f"{title}\n\n{body}\n\n{HOW_TO_FIX}"


_RESOURCE_WORDS = {SHARED_MEMORY: "shared memory segment", SEMAPHORE: "named semaphore"}

_RESOURCE_FIXES = {
    SHARED_MEMORY: (
        "Call unlink() on a SharedMemory once no process needs it any more (close() only "
        "detaches one process; the segment lives on until it is unlinked), e.g. in a finally "
        "block or a fixture's teardown."
    ),
    SEMAPHORE: (
        "A named semaphore (of a lock, event or semaphore made under spawn or forkserver) is "
        "freed when its object is collected: a child that made one must end normally, not be "
        "killed or leave through os._exit; or make it in the test and pass it to the child."
    ),
}


#: What each signal that commonly kills a child means, in words.
_DEATH_WORDS = {
    "SIGSEGV": "a segmentation fault (an invalid memory access, in C code or an extension)",
    "SIGBUS": "a bus error (a memory-mapped file or shared memory cut short, or a full /dev/shm)",
    "SIGABRT": "abort() (a failed C assertion, or a fatal error of Python)",
    "SIGFPE": "an arithmetic error in C code",
    "SIGILL": "an illegal instruction",
    "SIGKILL": "sent by kill(), or by the kernel's OOM killer when memory ran out",
}


#: Signals whose Python traceback faulthandler writes, where it is on.
_CRASHES = frozenset({"SIGSEGV", "SIGBUS", "SIGABRT", "SIGFPE", "SIGILL"})
#: Why a pool's or executor's worker exits with an error: it exits with 0 when its pool is done.
_EXITED = (
    "a worker exits with 0 when its pool or executor is done with it; this one left on its own "
    "(sys.exit() or os._exit() in a task, an initializer that raised, or an error outside a "
    "task), and its pool or executor is broken or has replaced it"
)
_NO_CRASH_REPORT = (
    "none in the test's captured standard error (the child's standard error went elsewhere, "
    "or it died before Python ran)"
)
_CRASH_REPORT_UNCAPTURED = (
    "written to standard error (faulthandler), which pytest does not capture here: "
    "--capture=fd puts it in this report"
)


def format_deaths(
    nodeid: str,
    deaths: Sequence[ChildDeath],
    crashes: Sequence[tuple[str, str]] = (),
    captured: bool = True,
) -> str:
    """The report section on children that died of a signal.

    ``crashes``: the crash reports (what, traceback) that faulthandler wrote to the children's
    standard error, as pytest captured it (``captured``: whether it captures the descriptor the
    children write to). A crash report is put under its child when there is one of each; else
    they are listed after the children, since a crash report does not say which process wrote it.
    """
    crashed = [d for d in deaths if d.signal is not None and signal_name(d.signal) in _CRASHES]
    one_to_one = len(crashed) == 1 and len(crashes) == 1
    exited = sum(death.signal is None for death in deaths)
    if not exited:
        what = "child processes that died of a signal"
    elif exited == len(deaths):
        what = "workers of pools or executors that exited with an error"
    else:
        what = "child processes that died of a signal or exited with an error"
    lines = [f"mpcheck: {nodeid}: {what}"]
    for death in deaths:
        label = printable(death.name) if death.name else "a child"
        lines.append("")
        if death.signal is None:
            name = ""
            lines.append(
                f"{label!r} (pid {death.pid}): exited with status {death.exit_code}: {_EXITED}"
            )
        else:
            name = signal_name(death.signal)
            words = _DEATH_WORDS.get(name, name)
            lines.append(f"{label!r} (pid {death.pid}): died of {name}: {words}")
        where = printable(death.started_at or "unknown place")
        lines.append(f"    started at: {where} by {death.started_by}")
        if death.owner != nodeid:
            lines.append(f"    owned by:   {printable(death.owner)}")
        if death.task is not None:
            lines.append(f"    running:    {printable(death.task)}")
        if name == "SIGKILL":
            lines.append(
                "    traceback:  none: SIGKILL ends a process at once, before it can write one"
            )
        if name not in _CRASHES:
            continue
        if one_to_one:
            what, traceback = crashes[0]
            lines.append(
                f"    traceback:  {printable(what)}, as the child wrote it to standard error:"
            )
            lines.extend(f"      {printable(line)}" for line in traceback.splitlines())
        elif not crashes:
            lines.append(
                f"    traceback:  {_NO_CRASH_REPORT if captured else _CRASH_REPORT_UNCAPTURED}"
            )
    if crashes and not one_to_one:
        lines.append("")
        lines.append(
            f"Python tracebacks that crashed children wrote to standard error ({len(crashes)}; "
            "a crash report does not say which process wrote it):"
        )
        for what, traceback in crashes:
            lines.append(f"  {printable(what)}:")
            lines.extend(f"    {printable(line)}" for line in traceback.splitlines())
    return "\n".join(lines)


QUEUE_WHY = (
    "Why: a process ended by a signal stops its queue's feeder thread wherever it is: what it "
    "put but had not yet written to the queue's pipe is lost, a message it was writing may be "
    "left half-written, and the queue's write lock may stay held; a later get() may then hang "
    "or raise, and a put() of another process may hang."
)
JOINABLE_WHY = " A JoinableQueue counts what was lost as unfinished: its join() may wait for ever."
QUEUE_FIX = (
    "How to fix: tell the child to stop (a sentinel such as None on a queue it reads, or an "
    "Event it checks) and join() it; terminate() or kill() only as a last resort, and then do "
    "not use the queue again."
)


def _signal_words(signum: int) -> str:
    """``SIGTERM (terminate())``: the signal, and how it is usually sent or what it means."""
    name = signal_name(signum)
    how = SENT_BY.get(name) or _DEATH_WORDS.get(name)
    return f"{name} ({how})" if how else name


def format_terminated_feeders(nodeid: str, feeders: Sequence[TerminatedFeeder]) -> str:
    """The warning for queues that a child fed before a signal ended it."""
    queues = {feeder.queue_key for feeder in feeders}
    if len(queues) == 1:
        head = "a multiprocessing queue can no longer be trusted: a process that put to it was"
    else:
        head = (
            f"{len(queues)} multiprocessing queues can no longer be trusted: a process that put "
            "to each was"
        )
    lines = [f"mpcheck: {nodeid}: {head} ended by a signal"]
    for feeder in feeders:
        queue = feeder.queue_kind + (f" {feeder.queue_name!r}" if feeder.queue_name else "")
        where = printable(feeder.queue_site or "an unknown place")
        child = feeder.child
        label = repr(printable(child.name)) if child.name else "a child"
        lines.append("")
        ended = "a signal" if child.signal is None else _signal_words(child.signal)
        lines.append(
            f"{queue} made at {where}: {label} (pid {child.pid}) put to it, then was ended by "
            f"{ended}"
        )
        started = printable(child.started_at or "an unknown place")
        lines.append(f"    started at: {started} by {child.started_by}")
        if child.owner != nodeid:
            lines.append(f"    owned by:   {printable(child.owner)}")
    lines.append("")
    joinable = any(f.queue_kind == "JoinableQueue" for f in feeders)
    lines.append(QUEUE_WHY + (JOINABLE_WHY if joinable else ""))
    lines.append(QUEUE_FIX)
    return "\n".join(lines)


def format_child_messages(nodeid: str, said: Sequence[tuple[int, str]]) -> str:
    """The warning for what children found in themselves (a module-level object made again)."""
    lines = [
        f"mpcheck: {nodeid}: a child started by spawn or forkserver made a module-level object "
        "again, which is not shared:"
    ]
    pids_by_message: dict[str, list[int]] = {}
    for pid, message in said:
        pids_by_message.setdefault(message, []).append(pid)
    for message, pids in pids_by_message.items():
        who = f"child pid {pids[0]}" if len(pids) == 1 else f"children {', '.join(map(str, pids))}"
        lines.append(f"  {who}: {printable(message, lines=True)}")
    return "\n".join(lines)


def format_resource(finding: ResourceFinding, nodeid: str | None = None) -> str:
    """The lines that name one leaked resource and say what happened to it."""
    what = _RESOURCE_WORDS.get(finding.kind, finding.kind)
    who = "the test process" if finding.by_test_process else f"process {finding.pid}"
    if finding.kind == SHARED_MEMORY:
        why = "never unlinked"
    else:
        why = f"process {finding.pid} ended without freeing it"
    lines = [
        f"leaked {what} {finding.name!r}: {why}",
        f"    made at:    {printable(finding.site)} by {who}",
    ]
    if finding.owner and not finding.owner.startswith("<") and finding.owner != nodeid:
        lines.append(f"    owned by:   {finding.owner}")
    if finding.freed:
        lines.append("    freed by:   mpcheck (unlinked, and taken off the tracker's list)")
    elif finding.handed_over:
        why = (
            f"still held by {finding.held_by}, which later tests may use"
            if finding.held_by
            else "nothing is freed in warn mode while the session runs (a later test may use it)"
        )
        lines.append(f"    kept:       {why}; handed to the session, and freed when it ends")
    elif finding.own_tracker:
        lines.append(
            f"    freed by:   the resource tracker process {finding.pid} started for itself, "
            "as it ended (its warning on stderr names no test)"
        )
    else:
        lines.append("    not freed:  mpcheck could not unlink it")
    return "\n".join(lines)


def format_resource_findings(nodeid: str, findings: Sequence[ResourceFinding]) -> str:
    """The report of the named resources one test (or its fixtures) left behind."""
    total = len(findings)
    title = (
        f"mpcheck: {nodeid} left {total} named resource{'s' if total != 1 else ''} behind "
        "(multiprocessing's resource tracker would free it later with a warning naming no test)"
    )
    body = "\n\n".join(format_resource(finding, nodeid) for finding in findings)
    kinds = sorted({finding.kind for finding in findings}, reverse=True)  # shared memory first
    fixes = " ".join(_RESOURCE_FIXES[kind] for kind in kinds if kind in _RESOURCE_FIXES)
    return f"{title}\n\n{body}\n\nHow to fix: {fixes}"


def format_session_resources(findings: Sequence[ResourceFinding]) -> str:
    """The named resources still left when the session ended: those no test was blamed for,
    then those that tests reported and left in place (handed to the session)."""

    def new_heading(count: int) -> str:
        return (
            f"mpcheck: {count} named resource{'s' if count != 1 else ''} left at the end of the "
            "session (no test is blamed):"
        )

    def known_heading(count: int) -> str:
        return (
            f"mpcheck: {count} named resource{'s' if count != 1 else ''} that tests left behind "
            f"{'were' if count != 1 else 'was'} still there at the end of the session:"
        )

    def describe_known(finding: ResourceFinding) -> str:
        what = _RESOURCE_WORDS.get(finding.kind, finding.kind)
        outcome = (
            "freed by mpcheck (unlinked, and taken off the tracker's list)"
            if finding.freed
            else "mpcheck could not unlink it"
        )
        return f"    {what} {finding.name!r} of {printable(finding.reported_by or '')}: {outcome}"

    return _session_end_report(
        findings, new_heading, format_resource, known_heading, describe_known
    )


def resource_summary_line(tally: SessionTally) -> str:
    """The terminal summary's line on named resources, when there were any."""
    count = tally.resources
    return (
        f"mpcheck: {count} named resource{'' if count == 1 else 's'} (shared memory, semaphores) "
        "left behind"
    )


def format_session_leftovers(findings: Sequence[Finding]) -> str:
    """The report of processes still running after the last test and fixture had finished."""

    def new_heading(count: int) -> str:
        return (
            f"mpcheck: {count} process{'es' if count != 1 else ''} still running at the end of "
            "the session, that no test or fixture was blamed for:"
        )

    def known_heading(count: int) -> str:
        return (
            f"mpcheck: {count} process{'es' if count != 1 else ''} that tests left behind "
            f"{'were' if count != 1 else 'was'} still running at the end of the session, "
            "and ended:"
        )

    def describe_known(finding: Finding) -> str:
        ended = _ENDED_WORDS.get(finding.ended_by or "", finding.ended_by or "not ended")
        process = finding.process
        return f"    process {process.pid} {process.name!r} of {finding.reported_by}: {ended}"

    return _session_end_report(findings, new_heading, format_finding, known_heading, describe_known)


class _Reported(Protocol):
    """A finding that a test may already have reported (see :func:`_session_end_report`)."""

    @property
    def reported_by(self) -> str | None: ...


_Blamed = TypeVar("_Blamed", bound=_Reported)


def _session_end_report(
    findings: Sequence[_Blamed],
    new_heading: Callable[[int], str],
    describe_new: Callable[[_Blamed], str],
    known_heading: Callable[[int], str],
    describe_known: Callable[[_Blamed], str],
) -> str:
    """A session-end report, in two parts: what no test was blamed for (described in full, as
    nobody has read of it yet), then what tests reported and left (a line each)."""
    parts = []
    for heading, describe, part in (
        (new_heading, describe_new, [f for f in findings if f.reported_by is None]),
        (known_heading, describe_known, [f for f in findings if f.reported_by is not None]),
    ):
        if part:
            parts.append(heading(len(part)) + "\n" + "\n".join(describe(f) for f in part))
    return "\n".join(parts)


def format_ended_at_exit(ended: Sequence[tuple[ProcessInfo, str]]) -> str:
    """The report of the never-joined children, started outside any test or fixture, that were
    still running as Python exited and would have held pytest's exit (:mod:`watch.exitguard`)."""
    count = len(ended)
    lines = [
        f"mpcheck: {count} process{'es' if count != 1 else ''} started outside any test or "
        "fixture (as a conftest.py or a test module was imported, or by a hook or a plugin) "
        f"{'were' if count != 1 else 'was'} still running as Python exited, never joined: "
        "multiprocessing would have waited for it with no timeout, and pytest would not have "
        "ended. Ended:"
    ]
    lines += [
        f"    process {process.pid} {printable(process.name)!r}, started by "
        f"{process.started_by}: {_ENDED_WORDS.get(how, how)}"
        for process, how in ended
    ]
    lines.append(
        "How to fix: join it where the run ends (pytest_unconfigure, or a session-scoped "
        "fixture that starts it), or make it a daemon."
    )
    return "\n".join(lines)


def describe_feeder(name: str, site: str | None, owner: str | None, unsent: int | None) -> str:
    """One line of :func:`format_feeders_at_exit`: a queue feeder thread, where its queue's
    first ``put()`` was and by whom, and how many items it had not written yet."""
    where = f", its queue's first put() at {printable(site)}" if site else ""
    by = f" by {printable(owner)}" if owner and site else ""
    if unsent is None:
        left = ""
    elif unsent == 0:
        left = ": writing its last item"
    else:
        left = f": writing an item, {unsent} more waiting"
    return f"    thread {printable(name)!r}{where}{by}{left}"


def format_feeders_at_exit(lines: Sequence[str]) -> str:
    """The report of the queue feeder threads that were still writing, to a pipe nobody read,
    as Python exited (:mod:`watch.exitguard`): not waited for, so that pytest could end."""
    count = len(lines)
    return "\n".join(
        [
            f"mpcheck: {count} multiprocessing queue feeder thread{'s' if count != 1 else ''} "
            f"{'were' if count != 1 else 'was'} still writing as Python exited, to a pipe that "
            "nobody read: multiprocessing would have waited for "
            f"{'them' if count != 1 else 'it'} with no timeout, and pytest would not have ended. "
            "Not waited for; what was not written is lost:",
            *lines,
            "How to fix: get() every item that was put before the queue is dropped (the "
            "multiprocessing guidelines: joining processes that use queues), or call "
            "cancel_join_thread() on a queue whose data may be lost.",
        ]
    )


def format_ended_before_exit(
    timeout: float, method: str, ended: Sequence[tuple[ProcessInfo, str]]
) -> str:
    """The report of the processes ended because pytest-timeout ends pytest with ``os._exit``:
    one line each (there is no time for stacks), and no pointer to the JSON report, which is
    not written."""
    count = len(ended)
    lines = [
        f"mpcheck: pytest-timeout ({timeout:g}s, {method} method) ends pytest with os._exit: "
        f"{count} process{'es' if count != 1 else ''} of the session still running, ended so "
        "that none outlives pytest:"
    ]
    for process, how in ended:
        if process.owner:
            whose = f" of {printable(_fixture_name(process.owner))}"
        else:
            # Not started by the pytest process: the command says what it is.
            command = process.cmdline[:_SHORT_COMMAND] + (
                "..." if len(process.cmdline) > _SHORT_COMMAND else ""
            )
            whose = f" ({printable(command)}; parent pid {process.ppid})"
        where = ""
        if process.started_at:
            where = f", started at {printable(process.started_at)}"
            if process.started_by:
                where += f" by {process.started_by}"
        lines.append(
            f"    process {process.pid} {printable(process.name)!r}{whose}{where}: "
            + _ENDED_WORDS.get(how, how)
        )
    return "\n".join(lines)


#: How much of a command line :func:`format_ended_before_exit` shows: one line per process.
_SHORT_COMMAND = 200


def summary_line(tally: SessionTally) -> str:
    """One line of session figures for the terminal summary."""
    started = f"{tally.started} process{'' if tally.started == 1 else 'es'}"
    return (
        f"mpcheck: {started} started by tests, {tally.leaked} leaked, "
        f"{tally.unreaped} unreaped, {tally.hung} hung, {tally.ended} ended by mpcheck"
    )


class ReportNotWritten(Exception):
    """The JSON report could not be written; the message is the line the user reads."""


def write_json(path: str, log: FindingLog, contention: list[dict[str, Any]] | None) -> None:
    """Write the JSON report: the session figures and every finding.

    ``contention`` is the lock checker's figures, ``None`` when no test used it. The path was
    checked when the run started; should writing fail all the same (the directory went away or
    filled up), :class:`ReportNotWritten` says so in one line.
    """
    # Under pytest-xdist, the workers' findings (handed over as JSON) join the controller's: one
    # list whether the run was split or not.
    document: dict[str, Any] = {
        "summary": as_json(log.tally),
        "findings": [as_json(finding) for finding in log.findings] + log.worker_findings,
    }
    resource_findings = [as_json(finding) for finding in log.resource_findings]
    resource_findings += log.worker_resource_findings
    if resource_findings:
        document["resource_findings"] = resource_findings
    if contention is not None or log.lock_findings:
        document["locks"] = {"contention": contention or [], "findings": log.lock_findings}
    text = json.dumps(document, indent=2, default=str) + "\n"
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as error:
        if isinstance(error, FileExistsError | NotADirectoryError):
            why = f"{target.parent} is not a directory"  # something took its place
        else:
            why = error.strerror or type(error).__name__
            if error.filename and str(error.filename) != path:
                why += f" ({error.filename})"
        raise ReportNotWritten(
            f"mpcheck: the JSON report (--mp-report) was not written to {path}: {why}"
        ) from None
