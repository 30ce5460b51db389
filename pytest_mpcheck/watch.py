"""The process watch: which processes a test (or a wider-scoped fixture) left behind.

Before a test's setup the watch notes the descendants of the pytest process; after its teardown it
looks again. What is new and alive is *leaked*, what is new and a zombie is *unreaped*. Processes
that a module- or session-scoped fixture starts belong to that fixture and are checked when it is
finalized; processes started by a process that existed before the test (other than multiprocessing's
helpers) belong to that process's owner. Leftovers are then ended (see :mod:`terminate`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from pytest_mpcheck import procfs
from pytest_mpcheck.findings import LEAKED, UNREAPED, Finding, ProcessInfo
from pytest_mpcheck.origins import OriginRecorder
from pytest_mpcheck.reaper import OrphanReaper
from pytest_mpcheck.settings import Settings
from pytest_mpcheck.terminate import Leftover, end_processes

#: ``(process) -> True`` when another plugin vetoes the finding.
VetoFn = Callable[[ProcessInfo], bool]

#: Seconds to read the stacks of the live leaked processes of one test, all together.
_STACK_TIMEOUT = 3.0


def _runs_python(cmdline: str) -> bool:
    """Whether a command line is a Python interpreter's (or a fork of this pytest process)."""
    if cmdline == procfs.own_cmdline():  # a fork of this process (multiprocessing's fork method)
        return True
    program = os.path.basename(cmdline.split(" ", 1)[0])
    return program.startswith(("python", "pypy")) or cmdline.startswith(sys.executable)


@dataclass
class Baseline:
    """The descendants alive when a test began."""

    pids: frozenset[int]


class ProcessWatch:
    """Finds and ends the processes tests leave behind; see the module docstring."""

    def __init__(self, settings: Settings, recorder: OriginRecorder) -> None:
        self.settings = settings
        self.recorder = recorder
        self.session_pid = os.getpid()
        self.reaper = OrphanReaper(self.recorder)
        self.pending: list[Finding] = []
        """Findings of fixture scopes that ended during the current teardown."""
        self._last_tree: frozenset[int] | None = None
        self._last_generation = -1

    # -- snapshots ------------------------------------------------------------------------------

    def _snapshot(self) -> dict[int, int]:
        """The descendants now, remembered as the next test's baseline."""
        tree = procfs.descendants(self.session_pid)
        self._last_tree = frozenset(tree)
        self._last_generation = self.recorder.generation
        return tree

    def baseline(self) -> Baseline:
        """The descendants alive now.

        The look taken after the previous test serves again when the test process has started
        nothing since: processes can only have ended meanwhile, and a pid too many in a
        baseline is harmless. This halves the watch's cost on a suite of plain tests.
        """
        if self._last_tree is not None and self._last_generation == self.recorder.generation:
            return Baseline(self._last_tree)
        return Baseline(frozenset(self._snapshot()))

    def _is_helper(self, pid: int, tree: dict[int, int]) -> bool:
        """Whether ``pid`` is a session helper (resource tracker, forkserver, xdist, mp_ignore).

        A forkserver's children carry its command line: a match whose parent (from ``tree``, the
        look just taken) matches too is a child of a helper, and the test's.
        """
        if not self.settings.is_ignored(procfs.cmdline(pid)):
            return False
        parent = tree.get(pid, self.session_pid)
        return parent == self.session_pid or not self.settings.is_ignored(procfs.cmdline(parent))

    def _new_processes(self, baseline: Baseline) -> dict[int, int]:
        """New descendants that the current test owns, as ``{pid: parent}``."""
        tree = self._snapshot()
        owned: dict[int, int] = {}
        for pid, parent in tree.items():
            if pid in baseline.pids:
                continue
            if self._is_helper(pid, tree):
                # The summary counts what tests start: not the tracker their first lock started.
                self.recorder.count_as_helper(pid)
                continue
            record = self.recorder.records.get(pid)
            if record is not None and record.scope is not None:
                continue  # checked when its fixture is finalized
            if self._belongs_elsewhere(parent, tree, baseline):
                continue
            owned[pid] = parent
        return owned

    def _belongs_elsewhere(self, parent: int, tree: dict[int, int], baseline: Baseline) -> bool:
        """Whether an ancestor is an older process (or a fixture's) that is not a helper."""
        while parent != self.session_pid and parent in tree:
            record = self.recorder.records.get(parent)
            older = parent in baseline.pids or (record is not None and record.scope is not None)
            if older and not self._is_helper(parent, tree):
                return True
            parent = tree[parent]
        return False

    def _settle(self, find: Callable[[], dict[int, int]]) -> dict[int, int]:
        """Give processes that are already exiting up to ``settle`` seconds to finish."""
        found = find()
        if not found:
            return found
        deadline = time.monotonic() + self.settings.settle
        pause = 0.002
        while found and time.monotonic() < deadline:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.05)
            self.reaper.reap_orphans()
            found = find()
        return found

    # -- findings -------------------------------------------------------------------------------

    def _describe(self, pid: int, parent: int, owner: str) -> ProcessInfo | None:
        described = procfs.describe(pid)
        if described is None:
            return None
        name, cmdline, status, created, age, ppid = described
        record = self.recorder.records.get(pid)
        return ProcessInfo(
            pid=pid,
            ppid=ppid or parent,
            name=(record.name if record and record.name else name),
            cmdline=cmdline,
            status=status,
            create_time=created,
            age=age,
            started_at=record.site if record else None,
            started_by=record.started_by if record else None,
            owner=owner,
        )

    def _conclude(
        self, processes: dict[int, int], owner: str, nodeid: str, veto: VetoFn, end: bool
    ) -> list[Finding]:
        """Describe, let plugins veto, end the leftovers and make the findings."""
        findings: list[Finding] = []
        leftovers: list[Leftover] = []
        for pid, parent in sorted(processes.items()):
            info = self._describe(pid, parent, owner)
            if info is None or veto(info):
                continue
            findings.append(Finding(UNREAPED if info.is_zombie else LEAKED, info, nodeid))
        if end:
            self._add_stacks(findings)
        for finding in findings:
            pid = finding.process.pid
            record = self.recorder.records.get(pid)
            handle = record.handle() if record is not None and record.handle else None
            leftovers.append(Leftover(pid, finding.process.create_time, handle))
        if end and leftovers:
            outcome = end_processes(leftovers, self.session_pid, self.settings.kill_grace)
            for finding in findings:
                finding.ended_by = outcome.get(finding.process.pid)
        return findings

    def _add_stacks(self, findings: list[Finding]) -> None:
        """Put the current Python stack of each live leaked Python process into its finding.

        Read with py-spy where it is installed (a leaked process was not started by the fixtures,
        which alone can be asked for their stack by a signal), within a bounded time, before the
        process is ended: it shows what the child was still doing. Other programs have no Python
        stack; a zombie has none left.
        """
        python = [
            finding
            for finding in findings
            if finding.kind == LEAKED and _runs_python(finding.process.cmdline)
        ]
        if not python:
            return
        from pytest_mpcheck import stacks  # only when something leaked: py-spy, reports

        read = stacks.stacks_of(
            None, [finding.process.pid for finding in python], timeout=_STACK_TIMEOUT
        )
        for finding in python:
            stack = read.get(finding.process.pid)
            if stack is None:
                continue
            finding.process.stack = stack.text
            finding.details.extend(stacks.describe_wait(stack, finding.process.pid))

    def finish_test(
        self, baseline: Baseline, nodeid: str, veto: VetoFn, end: bool = True
    ) -> list[Finding]:
        """Findings for one test after its teardown, plus those of scopes that ended in it."""
        if not self.reaper.installed:
            self.reaper.reap_orphans()
        leftovers = self._settle(lambda: self._new_processes(baseline))
        findings = self._conclude(leftovers, nodeid, nodeid, veto, end)
        if leftovers:
            self._last_tree = None  # some were ended: look again before the next test
        findings = self.pending + findings
        self.pending = []
        self._forget_gone()
        return findings

    def finish_scope(self, scope: object, nodeid: str, veto: VetoFn) -> None:
        """Check the processes of a wider-scoped fixture once it has been finalized."""
        records = {pid: r for pid, r in self.recorder.records.items() if r.scope is scope}
        if not records:
            return
        label = next(iter(records.values())).owner

        def alive() -> dict[int, int]:
            tree = procfs.descendants(self.session_pid)
            self.recorder.fill_create_times(frozenset(tree))
            return {
                pid: tree[pid]
                for pid, record in records.items()
                if pid in tree
                and record.create_time is not None
                and procfs.is_same_process(pid, record.create_time)
                # multiprocessing's resource tracker or forkserver, started by the fixture's
                # first use: the session's, not the fixture's
                and not self._is_helper(pid, tree)
            }

        leftovers = self._settle(alive)
        self.pending.extend(self._conclude(leftovers, label, nodeid, veto, True))

    def finish_session(self, baseline: Baseline) -> list[Finding]:
        """What is still running at the end of the session, that no test or fixture was blamed for.

        Typically a process that a fixture's process started and that outlived it. It is ended.
        """
        self.reaper.reap_orphans()

        def remaining() -> dict[int, int]:
            tree = procfs.descendants(self.session_pid)
            return {
                pid: parent
                for pid, parent in tree.items()
                if pid not in baseline.pids and not self._is_helper(pid, tree)
            }

        leftovers = self._settle(remaining)
        return self._conclude(leftovers, "<session end>", "<session end>", lambda _: False, True)

    def _forget_gone(self) -> None:
        if not self.recorder.records:
            return
        alive = self._last_tree
        if alive is None:
            alive = frozenset(procfs.descendants(self.session_pid))
        self.recorder.forget({pid for pid in self.recorder.records if pid not in alive})
        # Those still running outlive the test (a wider-scoped fixture's): from now on their pids
        # are checked against their create time.
        self.recorder.fill_create_times(alive)
