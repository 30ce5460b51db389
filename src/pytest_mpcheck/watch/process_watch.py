"""The process watch: which processes a test (or a wider-scoped fixture) left behind.

Before a test's setup the watch notes the descendants of the pytest process; after its teardown it
looks again. What is new and alive is *leaked*, what is new and a zombie is *unreaped*. Processes
that a module- or session-scoped fixture starts belong to that fixture and are checked when it is
finalized; processes started by a process that existed before the test (other than multiprocessing's
helpers) belong to that process's owner. Leftovers are then ended (see :mod:`terminate`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import weakref
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_mpcheck._os import procfs
from pytest_mpcheck._os.poll import poll_until
from pytest_mpcheck.findings import LEAKED, UNREAPED, Finding, ProcessInfo
from pytest_mpcheck.settings import Settings
from pytest_mpcheck.watch.origins import HANDED_OVER, OUTSIDE_TESTS, OriginRecorder, StartRecord
from pytest_mpcheck.watch.reaper import OrphanReaper
from pytest_mpcheck.watch.terminate import SENT_BY_MPCHECK, Leftover, end_processes

if TYPE_CHECKING:
    from pytest_mpcheck.watch.exitguard import ExitGuard
    from pytest_mpcheck.watch.ownership import Holder

# helpers and ownership are imported where they are used: only once a process outlives a
# test. Each module the plugin imports at start costs every pytest run, and more once pytest
# loads it through its assertion rewriter (as it does the modules of an installed plugin).

#: ``(process) -> True`` when another plugin vetoes the finding.
VetoFn = Callable[[ProcessInfo], bool]

#: Seconds to read the stacks of the live leaked processes of one test, all together.
_STACK_TIMEOUT = 3.0
#: How long to wait for process starts under way in other threads to file their records.
_START_WAIT = 1.0
#: The same, before pytest-timeout's ``os._exit``: for the processes to exist, not their records.
_EXIT_START_WAIT = 0.5


def _runs_python(cmdline: str) -> bool:
    """Whether a command line is a Python interpreter's (or a fork of this pytest process)."""
    if cmdline == procfs.own_cmdline():  # a fork of this process (multiprocessing's fork method)
        return True
    program = os.path.basename(cmdline.split(" ", 1)[0])
    return program.startswith(("python", "pypy")) or cmdline.startswith(sys.executable)


def describe(
    pid: int, owner: str, record: StartRecord | None = None, parent: int = 0
) -> ProcessInfo | None:
    """What a report says of ``pid``: what the system shows, and where it was started
    (``record``); ``None`` once it is gone. ``parent`` stands in for a parent pid it cannot read.
    """
    described = procfs.describe(pid)
    if described is None:
        return None
    name, cmdline, status, created, age, ppid = described
    return ProcessInfo(
        pid=pid,
        ppid=ppid or parent,
        name=record.name if record is not None and record.name else name,
        cmdline=cmdline,
        status=status,
        create_time=created,
        age=age,
        started_at=record.site if record is not None else None,
        started_by=record.started_by if record is not None else None,
        started_from=_started_from(record),
        owner=owner,
    )


def _started_from(record: StartRecord | None) -> str | None:
    if record is None or record.test_site is None:
        return None
    if record.test_site_is_thread:
        return f"{record.test_site} (which started the thread that started it)"
    return record.test_site


def exit_status(record: StartRecord) -> int | None:
    """The exit status its process object read when it reaped it (never waits itself)."""
    handle = record.handle() if record.handle is not None else None
    if handle is None:
        return record.exit_status  # kept as its process object was collected
    popen = getattr(handle, "_popen", None)  # multiprocessing's
    status = getattr(popen if popen is not None else handle, "returncode", None)
    return status if isinstance(status, int) else None


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
        self._helper_pids: set[int] | None = None
        """The helpers' pids, asked of their modules once per look (see :meth:`is_helper`)."""
        self.exit_guard: ExitGuard | None = None
        """What would hold pytest's exit, started outside any test or fixture (ended as Python
        exits, or with the rest at pytest-timeout's ``os._exit``)."""
        self.stack_file: str | None = None
        """The session's stack file, where the prepared children write their stacks."""
        self.gone: list[tuple[StartRecord, int | None]] = []
        """Processes started in the session that ended since :meth:`take_gone` was last called,
        each with its exit status where its process object has it (negative: that signal)."""
        self.reported: dict[int, tuple[str, float]] = {}
        """Processes a test or fixture reported: ``{pid: (who, create time)}``."""
        self._handed_over: list[weakref.ref[Any]] = []
        """Live objects (a pool, an executor) whose processes were handed to the session."""
        self._ended_by_mpcheck: set[int] = set()
        """The pids the plugin ended itself since :meth:`take_ended_by_mpcheck` was last called."""

    # -- snapshots ------------------------------------------------------------------------------

    def _snapshot(self) -> dict[int, int]:
        """The descendants now, remembered as the next test's baseline."""
        self._helper_pids = None
        # The generation is read before the look: a process another thread forks and notes
        # while the look runs then makes the look stale, instead of being missed by it (and
        # losing its start record in ``_forget_gone``).
        generation = self.recorder.generation
        tree = self.descendants()
        self._last_tree = frozenset(tree)
        self._last_generation = generation
        return tree

    def descendants(self) -> dict[int, int]:
        """The descendants now, ``{pid: parent}``. The start records that their pids no longer
        name (a child's pid handed to a grandchild) are taken first (see
        :meth:`OriginRecorder.drop_handed_on`): every look of the watch goes through here, so
        that no record is read for a process it does not name."""
        tree = procfs.descendants(self.session_pid)
        self.recorder.drop_handed_on(tree)
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

    def rebase(self) -> None:
        """Watch from this process: a fork of the pytest process now runs the tests.

        pytest-forked (``--forked``) runs each test in a fork of the pytest process: there, the
        test's children are this fork's, and the fork itself is no leftover of its own test.
        """
        self.session_pid = os.getpid()
        self._last_tree = None
        self._helper_pids = None

    def _looks_like_helper(self, pid: int) -> bool:
        command = procfs.cmdline(pid)
        if not command and procfs.state(pid) not in (None, "Z"):
            # Empty while an exec loads the new program (tens of ms on a loaded machine): a
            # tracker started a moment ago would be taken for the test's.
            poll_until(lambda: bool(procfs.cmdline(pid)) or procfs.state(pid) in (None, "Z"), 0.5)
            command = procfs.cmdline(pid)
        from pytest_mpcheck.watch import helpers

        if self._helper_pids is None:
            self._helper_pids = helpers.running_helper_pids()
        return self._helper_command(pid, command, self._helper_pids)

    def _helper_command(self, pid: int, command: str, helper_pids: Container[int]) -> bool:
        """Whether ``pid``, running ``command``, is a helper (``helper_pids``: those the
        families' modules name)."""
        if command == procfs.own_cmdline():
            return False  # a fork of this process (or of this xdist worker): never a helper
        from pytest_mpcheck.watch import helpers

        return (
            pid in helper_pids
            or helpers.is_helper_command(command)
            or self.settings.is_ignored(command)
        )

    def is_helper(self, pid: int, tree: dict[int, int]) -> bool:
        """Whether ``pid`` is a session helper (a tracker, a forkserver, an xdist worker, or
        ``mp_ignore``); see :mod:`helpers`.

        A forkserver's children carry its command line: a match whose parent (from ``tree``, the
        look just taken) matches too is a child of a helper, and the test's.
        """
        if not self._looks_like_helper(pid):
            return False
        parent = tree.get(pid, self.session_pid)
        return parent == self.session_pid or not self._looks_like_helper(parent)

    def _new_processes(self, baseline: Baseline) -> dict[int, int]:
        """New descendants that the current test owns, as ``{pid: parent}``."""
        tree = self._snapshot()
        owned: dict[int, int] = {}
        for pid, parent in tree.items():
            if pid in baseline.pids:
                continue
            if self.is_helper(pid, tree):
                # The summary counts what tests start: not the tracker their first lock started.
                self.recorder.count_as_helper(pid)
                continue
            record = self.recorder.records.get(pid)
            if record is not None and record.scope is not None:
                continue  # checked when its fixture is finalized
            if self._belongs_elsewhere(parent, tree, baseline):
                continue
            if record is None and self.orphaned_by_a_scope(pid, tree):
                continue  # a wider-scoped fixture's daemon: left to its scope, the session's
            owned[pid] = parent
        return owned

    def orphaned_by_a_scope(self, pid: int, tree: Mapping[int, int]) -> bool:
        """Whether ``pid``, a child of the pytest process that nothing noted the start of (an
        orphan that reparented here), was left by a process that a wider-scoped fixture started.

        A fixture's server that daemonizes (``sh -c "server &"``, a double fork) leaves its
        process to the subreaper when its starter exits, while a test's setup runs. Its parent
        is gone, and no look saw it: the process that left it is taken to be the last of those
        started before it that ended since the last test (their records are kept until then).
        """
        if tree.get(pid) != self.session_pid or pid in self.recorder.records:
            return False
        start = procfs.start_ticks(pid)
        if start is None:
            return False
        latest: StartRecord | None = None
        for record in list(self.recorder.records.values()):  # other threads may add records
            began = record.began
            if record.pid in tree or began is None or began > start:
                continue  # alive, or started after it
            if latest is None or latest.began is None or began >= latest.began:
                latest = record
        return latest is not None and latest.scope is not None

    def _belongs_elsewhere(self, parent: int, tree: dict[int, int], baseline: Baseline) -> bool:
        """Whether an ancestor is an older process (or a fixture's) that is not a helper."""
        while parent != self.session_pid and parent in tree:
            record = self.recorder.records.get(parent)
            older = parent in baseline.pids or (record is not None and record.scope is not None)
            if older and not self.is_helper(parent, tree):
                return True
            parent = tree[parent]
        return False

    def _settle(
        self,
        find: Callable[[], dict[int, int]],
        meanwhile: Callable[[dict[int, int]], bool] | None = None,
    ) -> dict[int, int]:
        """Give processes that are already exiting up to ``settle`` seconds to finish.

        ``meanwhile`` is called once with what the first look found, if anything: work on the
        leftovers that would otherwise follow the wait is done during it. When it answers
        ``True`` (none of them will end by itself), there is nothing to wait for.
        """
        found: dict[int, int] = {}
        looks = 0
        in_vain = False

        def settled() -> bool:
            nonlocal found, looks, in_vain
            if looks:
                self.reaper.reap_orphans()  # those that ended since the last look
            looks += 1
            found = find()
            if found and looks == 1 and meanwhile is not None:
                in_vain = meanwhile(found)
            return not found or in_vain

        poll_until(settled, self.settings.settle)
        if found and self.recorder.starting:
            # Another thread may have forked one of them a moment ago and not filed its start
            # record yet (site, owner, the Process that leads to its pool): wait for it, bounded.
            poll_until(lambda: not self.recorder.starting, _START_WAIT)
        return found

    def _await_start(
        self, find: Callable[[], dict[int, int]], meanwhile: Callable[[dict[int, int]], object]
    ) -> dict[int, int]:
        """Give a thread of the test that starts processes (see :meth:`finish_test`) up to
        ``settle`` seconds to start its next one: what ``find`` then finds, if anything."""
        found: dict[int, int] = {}

        def started() -> bool:
            nonlocal found
            found = find()
            return bool(found)

        if poll_until(started, self.settings.settle):
            meanwhile(found)
            if self.recorder.starting:  # its start record may not be filed yet
                poll_until(lambda: not self.recorder.starting, _START_WAIT)
        return found

    # -- findings -------------------------------------------------------------------------------

    def _describe(self, pid: int, parent: int, owner: str) -> ProcessInfo | None:
        return describe(pid, owner, self.recorder.records.get(pid), parent)

    def _holders(self, pids: Iterable[int], collect: bool) -> dict[int, Holder]:
        """The live objects that still hold the process objects of ``pids`` (by pid)."""
        handles = []
        for pid in pids:
            record = self.recorder.records.get(pid)
            handle = record.handle() if record is not None and record.handle else None
            if handle is not None:
                handles.append(handle)
        if not handles:
            return {}
        from pytest_mpcheck.watch import ownership

        found = ownership.live_holders(handles, collect=collect)
        by_pid = {handle.pid: found[id(handle)] for handle in handles if id(handle) in found}
        del handles
        return by_pid

    def _was_handed_over(self, holder: Holder) -> bool:
        return any(ref() is holder.owner for ref in self._handed_over)

    @staticmethod
    def _live(processes: dict[int, int]) -> list[int]:
        return [pid for pid in processes if not procfs.is_zombie(pid)]

    def _leave_to_older_owners(
        self,
        processes: dict[int, int],
        nodeid: str,
        collect: bool,
        known: tuple[set[int], dict[int, Holder]] | None = None,
    ) -> tuple[dict[int, int], dict[int, Holder]]:
        """Give the older owner what an older object started during this test.

        A pool that repopulates its workers, or a reusable executor that a later test asks for
        more, starts processes during a test that did not create it: they belong with the
        object's other processes (a fixture's scope, the session), not to this test. Returns
        what is still this test's, and the holders found. ``known``: the pids already asked
        about (during the settle window), and the holders found for them.
        """
        asked, found = known if known is not None else (set(), {})
        live = self._live(processes)
        holders = {pid: found[pid] for pid in live if pid in found}
        unasked = [pid for pid in live if pid not in asked]
        if unasked:
            holders.update(self._holders(unasked, collect))
        kept = dict(processes)
        for pid, holder in holders.items():
            record = self.recorder.records[pid]
            older = [
                self.recorder.records[sibling.pid]
                for sibling in holder.siblings
                if isinstance(getattr(sibling, "pid", None), int)
                and sibling.pid in self.recorder.records
                and self.recorder.records[sibling.pid].owner != nodeid
            ]
            if older:
                record.owner = older[0].owner
                record.scope = older[0].scope if older[0].scope is not None else HANDED_OVER
            elif self._was_handed_over(holder):
                record.scope = HANDED_OVER
            else:
                continue
            del kept[pid]
        return kept, holders

    def _conclude(
        self,
        processes: dict[int, int],
        owner: str,
        nodeid: str,
        veto: VetoFn,
        end: bool,
        holders: dict[int, Holder] | None = None,
    ) -> list[Finding]:
        """Describe, let plugins veto, end the leftovers and make the findings.

        With ``end``, what nobody can use any more is ended; a process still held by a live
        object (``holders``) is reported and handed to the session instead, to be ended when it
        ends: killing a pool's worker under the tests that still use the pool would break them.
        """
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
            holder = (holders or {}).get(pid)
            if holder is not None:
                finding.details.append(
                    f"kept running: still held by {holder.describe()}, which later tests may "
                    "use; handed to the session, and ended when the session ends"
                )
                if record is not None:
                    record.scope = HANDED_OVER
                with contextlib.suppress(TypeError):
                    self._handed_over.append(weakref.ref(holder.owner))
                continue
            handle = record.handle() if record is not None and record.handle else None
            leftovers.append(Leftover(pid, finding.process.create_time, handle))
        if end and leftovers:
            outcome = end_processes(leftovers, self.session_pid, self.settings.kill_grace)
            self.note_ended(outcome)
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
        from pytest_mpcheck._os import stacks  # only when something leaked: py-spy, reports

        pids = [finding.process.pid for finding in python]
        read = stacks.stacks_of(pids, _STACK_TIMEOUT, stack_file=self.stack_file)
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
        if not self.reaper.installed and self.reaper.enabled:
            self.reaper.reap_orphans()
        # A thread of the test that starts processes still runs (an open pool's worker handler):
        # none of its processes may be alive at this moment, between one that ended and the one
        # it starts next.
        starter = self.recorder.starts_for(nodeid)
        if not starter and self._nothing_to_look_at(baseline):
            self._forget_gone()  # the test's children ended (joined): read how
            return []
        asked: set[int] = set()
        early: dict[int, Holder] = {}

        def find_holders(found: dict[int, int]) -> bool:
            # Who holds the leftovers (a walk of the heap, slow in a big process) is asked while
            # the settle window waits anyway; a holder asked about is only reported when its
            # process is still there after the window.
            # Only processes with a start record have an object to ask about; one whose record
            # is not filed yet is asked about after the window.
            live = [pid for pid in self._live(found) if pid in self.recorder.records]
            asked.update(live)
            early.update(self._holders(live, collect=end))
            # The workers of a pool or executor still open do not end by themselves: when
            # they are all that was found, the window would be waited out in vain (a suite
            # that keeps a reusable executor paid it at every test).
            return all(pid in early and early[pid].keeps_its_processes() for pid in found)

        leftovers = self._settle(lambda: self._new_processes(baseline), find_holders)
        if not leftovers and starter:
            leftovers = self._await_start(lambda: self._new_processes(baseline), find_holders)
        holders: dict[int, Holder] = {}
        if leftovers:
            leftovers, holders = self._leave_to_older_owners(
                leftovers, nodeid, collect=end, known=(asked, early)
            )
        early.clear()
        findings = self._conclude(leftovers, nodeid, nodeid, veto, end, holders if end else None)
        if leftovers:
            self._last_tree = None  # some were ended: look again before the next test
        findings = self.pending + findings
        self.pending = []
        self._forget_gone()
        return findings

    def quiet_test(self, baseline: Baseline) -> bool:
        """Whether a test that began with ``baseline`` left the watch nothing to do: no start
        record, no end or fault to read, no child before it or now. When so, the look is kept
        as the next test's baseline, and :meth:`finish_test` need not be called."""
        if (
            self.recorder.records
            or self.recorder.displaced
            or self.gone
            or self._ended_by_mpcheck
            or self.reaper.faults
            or (self.reaper.enabled and not self.reaper.installed)
        ):
            return False
        return self._nothing_to_look_at(baseline)

    def _nothing_to_look_at(self, baseline: Baseline) -> bool:
        """Whether nothing can be left over: no child before the test, none now (those it
        started have ended and were reaped), so no descendant at all. The usual test, and the
        usual test that joins what it starts: one system call instead of a look at the tree and
        a settle window."""
        generation = self.recorder.generation
        if baseline.pids or self.pending:
            return False
        if not procfs.has_no_children():
            return False
        self._last_tree = frozenset()
        self._last_generation = generation
        return True

    def finish_scope(self, scope: object, nodeid: str, veto: VetoFn, end: bool = True) -> None:
        """Check the processes of a wider-scoped fixture once it has been finalized."""
        records = {pid: r for pid, r in list(self.recorder.records.items()) if r.scope is scope}
        if not records:
            return
        label = next(iter(records.values())).owner

        def alive() -> dict[int, int]:
            tree = self.descendants()
            self.recorder.fill_create_times(frozenset(tree))
            return {
                pid: tree[pid]
                for pid, record in records.items()
                if pid in tree
                and record.create_time is not None
                and procfs.is_same_process(pid, record.create_time)
                # multiprocessing's resource tracker or forkserver, started by the fixture's
                # first use: the session's, not the fixture's
                and not self.is_helper(pid, tree)
            }

        leftovers = self._settle(alive)
        holders = self._holders(leftovers, collect=True) if end and leftovers else None
        self.pending.extend(self._conclude(leftovers, label, nodeid, veto, end, holders))

    def finish_session(self, baseline: Baseline) -> list[Finding]:
        """What is still running at the end of the session, that no test or fixture was blamed for.

        Typically a process that a fixture's process started and that outlived it, or one that
        a warn-mode test left running, or a pool handed to the session. It is ended, in every
        mode: nothing outlives pytest or holds its exit. But a ``multiprocessing`` child that no
        test or fixture started is left, with its own children, to the exit guard (see
        :meth:`_left_until_exit`): neither reported nor ended here.
        """
        if self.reaper.enabled:
            self.reaper.reap_orphans()

        def remaining() -> dict[int, int]:
            tree = self.descendants()
            return {
                pid: parent
                for pid, parent in tree.items()
                if pid not in baseline.pids and not self.is_helper(pid, tree)
            }

        leftovers = self._settle(remaining)
        # Who started each one, read before they are ended and their records forgotten.
        started_for = {
            pid: record.owner
            for pid in leftovers
            if (record := self.recorder.records.get(pid)) is not None
        }
        for root in self._left_until_exit(started_for):
            # With its own children: a server's workers are the server's to stop.
            for pid in [root, *procfs.descendants(root)]:
                leftovers.pop(pid, None)
        findings = self._conclude(
            leftovers, "<session end>", "<session end>", lambda _: False, True
        )
        for finding in findings:
            who, created = self.reported.get(finding.process.pid, ("", 0.0))
            if who and abs(created - finding.process.create_time) < 0.01:
                finding.reported_by = who
            owner = started_for.get(finding.process.pid, "")
            if owner and not owner.startswith("<"):
                # A test that never reached its teardown (Ctrl-C, pytest.exit), one of mode
                # off, a fixture: the report says whose it was, though nobody was blamed.
                finding.process.owner = owner
        return findings

    def _left_until_exit(self, started_for: Mapping[int, str]) -> list[int]:
        """Of the leftovers (by pid, with who started them), the ``multiprocessing`` children
        that no test or fixture started (a hook such as ``pytest_sessionstart``, a module as it
        was collected) and that their family would join at exit: handed to the exit guard.

        The code that started such a child may still stop it, in ``pytest_unconfigure`` or an
        ``atexit`` function, which run after the session's end. Ended now, it could break that
        code's shutdown: a child killed while it waits on a ``Condition`` or an ``Event`` leaves
        the ``notify()`` of the parent's ``set()`` waiting for it for ever. The guard ends it as
        Python exits, if it still runs then, and says so.
        """
        guard = self.exit_guard
        if guard is None:
            return []
        from pytest_mpcheck.watch.exitguard import joined_at_exit

        unjoined = joined_at_exit(self.session_pid)
        left = []
        for pid, owner in started_for.items():
            if owner not in OUTSIDE_TESTS or pid not in unjoined:
                continue
            created = procfs.create_time(pid)
            if created is not None:
                guard.watch_until_exit(pid, created, *unjoined[pid])
                left.append(pid)
        return left

    def end_before_exit(self, baseline: Baseline, grace: float) -> list[tuple[ProcessInfo, str]]:
        """End every process of the session still running, as the pytest process is about to
        end with ``os._exit`` (pytest-timeout's ``thread`` method); each with how it ended.

        What :meth:`finish_session` would end, whoever owns it (a wider-scoped fixture, the
        session, a test): after ``os._exit`` nothing would end them, and an orphan that holds
        pytest's output pipe holds the CI job that reads it. The helpers are left alone: a
        tracker or a forkserver ends by itself once pytest's end of its pipe closes (a tracker
        then frees what was left registered). Zombies go with their parent. No new process is
        started meanwhile (:meth:`OriginRecorder.close`): a pool would replace its workers.

        Runs in pytest-timeout's timer thread while the main thread may be anywhere, in the
        plugin's own code too: it reads the process table and the start records, and changes
        nothing of the watch's or the process objects' state. Bounded: a short wait for the
        starts under way, one ``grace`` after SIGTERM, and short waits after SIGKILL.
        """
        from pytest_mpcheck.watch import helpers

        self.recorder.close()
        # A start under way in another thread makes its process, which the look must see.
        poll_until(lambda: not self.recorder.starting, _EXIT_START_WAIT)
        known = helpers.running_helper_pids()
        # Started before the watch and never joined: os._exit skips the join, and it would
        # outlive pytest.
        held = self.exit_guard.still_running() if self.exit_guard is not None else {}
        commands: dict[int, str] = {}

        def helper(pid: int) -> bool:
            if pid not in commands:
                commands[pid] = procfs.cmdline(pid)
            return self._helper_command(pid, commands[pid], known)

        def running(seen: Container[int]) -> list[ProcessInfo]:
            found = []
            for pid, parent in procfs.descendants(self.session_pid).items():
                if pid in seen or (pid in baseline.pids and pid not in held):
                    continue
                if procfs.state(pid) in (None, "Z"):
                    continue
                # As :meth:`is_helper`: a forkserver's children carry its command line.
                if helper(pid) and (parent == self.session_pid or not helper(parent)):
                    continue
                record = self.recorder.records.get(pid)
                info = describe(pid, record.owner if record is not None else "", record, parent)
                if info is not None:
                    found.append(info)
            # In the order they were started: a pid comes round again on a busy machine.
            return sorted(found, key=lambda info: info.create_time)

        ended: list[tuple[ProcessInfo, str]] = []
        seen: set[int] = set()
        # Twice: what a process forked while the first round ended it (C code, which no wrapper
        # sees, or a start that was under way) is ended at once, with no grace.
        for wait in (grace, 0.0):
            found = running(seen)
            if not found:
                break
            # No handle: the process objects are the main thread's, which may be using them.
            outcome = end_processes(
                [Leftover(info.pid, info.create_time) for info in found],
                self.session_pid,
                wait,
                exiting=True,
            )
            ended += [(info, outcome.get(info.pid, "exited by itself")) for info in found]
            seen.update(info.pid for info in found)
        return ended

    def note_ended(self, outcome: dict[int, str]) -> None:
        """Remember the processes that :func:`end_processes` ended itself (``outcome``)."""
        self._ended_by_mpcheck.update(pid for pid, how in outcome.items() if how in SENT_BY_MPCHECK)

    def take_ended_by_mpcheck(self) -> set[int]:
        """The pids that the plugin ended (with a signal, or their pool's ``terminate()``) since
        the last call, rather than the test: an end read after a test was the test's own unless
        its pid is among them."""
        ended, self._ended_by_mpcheck = self._ended_by_mpcheck, set()
        return ended

    def unread_records(self) -> list[StartRecord]:
        """The start records whose process's end was not taken yet (:meth:`take_gone`): those
        of live processes, of processes gone since, and those whose pid was given to another."""
        return [
            *self.recorder.records.values(),
            *self.recorder.displaced,
            *(record for record, _ in self.gone),
        ]

    def take_gone(self) -> list[tuple[StartRecord, int | None]]:
        """The processes that ended since the last call (see :attr:`gone`)."""
        gone, self.gone = self.gone, []
        return gone

    def mark_reported(self, findings: Iterable[Finding]) -> None:
        """Remember the leftovers that a test's report named and that may still run (warn
        mode, or handed to the session): the end of the session names them once more only as
        ended, and does not count them again."""
        for finding in findings:
            process = finding.process
            self.reported[process.pid] = (finding.nodeid, process.create_time)

    def _forget_gone(self) -> None:
        # The records are listed before the look, then the generation read: another thread (a
        # pool's worker handler) may fork and note a process meanwhile, and a record filed
        # after the look began must not be judged by it (its process would be taken for gone,
        # and lose its start record). A record listed here was filed after its process forked,
        # and its note counted in the generation read next. In the order they were started
        # (the records'), which the reports keep.
        recorded = list(self.recorder.records)
        alive = self._last_tree
        if recorded and (alive is None or self._last_generation != self.recorder.generation):
            # A process noted since the last look is not in it.
            alive = frozenset(self.descendants())
        # Records a newer process's note took the pid of, or a descendant's that nothing
        # noted: their processes ended first.
        displaced, self.recorder.displaced = self.recorder.displaced, []
        for ended in displaced:
            if not ended.helper:
                self.gone.append((ended, exit_status(ended)))
        if not recorded or alive is None:
            return
        gone = [pid for pid in recorded if pid not in alive]
        for pid in gone:
            record = self.recorder.records.get(pid)
            if record is not None and not record.helper:
                self.gone.append((record, exit_status(record)))
        self.recorder.forget(gone)
        # Those still running outlive the test (a wider-scoped fixture's): from now on their pids
        # are checked against their create time.
        self.recorder.fill_create_times(alive)
