"""The plugin's state for one pytest run, and the pytest hooks that use it.

An :class:`MpCheckRun` is made in ``pytest_configure`` and registered as a plugin
(``mpcheck-run``, as pytest-xdist registers its ``DSession``) for as long as the config lives:
through one session or, for a config that pytester or another tool reuses, several. Everything
it changes in the process (the wrapped process-creating calls, the subreaper, the ``SIGCHLD``
handler, the resource tracker's wrapper, the checks of the fixtures' children) is installed by
:meth:`MpCheckRun.start` and undone by a ``config.add_cleanup`` of its own, as pytest's
``threadexception`` and ``unraisableexception`` plugins do: two runs in one process (pytester's
``runpytest_inprocess``) are independent.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Generator
from types import ModuleType
from typing import Any

import pytest

from pytest_mpcheck import report, timeouts, xdist
from pytest_mpcheck._os import scratch
from pytest_mpcheck._os.prctl import get_subreaper, set_subreaper
from pytest_mpcheck.errors import internal_error, take_escalated, warn_at_test
from pytest_mpcheck.findings import (
    ENDED,
    HUNG,
    ChildDeath,
    Finding,
    FindingLog,
    ProcessInfo,
    ResourceFinding,
)
from pytest_mpcheck.fixtures import startmethods
from pytest_mpcheck.settings import Settings, marker_join_timeout, marker_mode
from pytest_mpcheck.watch import exitguard, forkthreads
from pytest_mpcheck.watch.origins import BETWEEN_TESTS, OriginRecorder, StartRecord
from pytest_mpcheck.watch.preparation import ChildPreparation
from pytest_mpcheck.watch.process_watch import Baseline, ProcessWatch, VetoFn, exit_status
from pytest_mpcheck.watch.queues import QueueWatch
from pytest_mpcheck.watch.resources import ResourceWatch

# Not ``StashKey[Baseline]()``: typing caches each subscription, and the entry would keep this copy
# of the plugin's modules alive after pytester's in-process run drops them from sys.modules.
baseline_key: pytest.StashKey[Baseline] = pytest.StashKey()
mode_key: pytest.StashKey[str] = pytest.StashKey()
exit_guard_key: pytest.StashKey[exitguard.ExitGuard] = pytest.StashKey()

#: The markers that change how one test is checked: their arguments are checked at its setup.
_PER_TEST_MARKERS = frozenset({"mp_check", "mp_join_timeout"})


def _carries_per_test_markers(item: pytest.Item) -> bool:
    """Whether the test or a node above it has one of :data:`_PER_TEST_MARKERS`: one plain
    walk, a third of what pytest's marker look-ups cost (which the usual test, with neither
    marker, need not pay)."""
    node: pytest.Item | pytest.Collector | None = item
    while node is not None:
        for mark in node.own_markers:
            if mark.name in _PER_TEST_MARKERS:
                return True
        node = node.parent
    return False


#: The name the run is registered under as a plugin.
PLUGIN_NAME = "mpcheck-run"


class MpCheckRun:
    """Everything the plugin keeps for one config, and the pytest hooks that need it."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.recorder = OriginRecorder(config.rootpath)
        self.watch = ProcessWatch(settings, self.recorder)
        self.child_preparation = ChildPreparation()
        self.resources = ResourceWatch(self.recorder.owner_of)
        self.queues = QueueWatch(config.rootpath)
        """The queues the test process makes, and the children that fed them."""
        self.log = FindingLog(config)
        """Every finding of the run: the tally, the JSON report, the hooks."""
        self._pending_resources: list[ResourceFinding] = []
        """Of fixture scopes that ended during the current teardown."""
        self._log_generation = -1
        self.subreaper = False
        self._current: pytest.Item | None = None
        self._scope_hook: _FixtureScopes | None = None
        self._scope_lock = threading.Lock()
        self.recorder.on_fixture_owner = self.watch_fixture_scopes
        self._session_baseline: Baseline | None = None
        self.left_at_end: list[Finding] = []
        self.resources_left_at_end: list[ResourceFinding] = []
        self.report_problem: str | None = None
        """The line that says the JSON report could not be written."""
        self.summary_written = False
        """Whether the terminal summary was written (pytest calls it for some exit statuses only,
        see :class:`_SummaryOnAnyExit`)."""

    # -- lifetime -------------------------------------------------------------------------------

    def start(self) -> None:
        """Wrap the process-starting calls, become a subreaper, reap orphans as they die.

        Each change is undone by a cleanup of the config of its own, registered before it is
        made (each undoes only what was done): should one fail half-way, what it and the
        earlier ones changed is undone all the same.
        """
        config = self.config
        self._session_baseline = self.watch.baseline()
        summary = _SummaryOnAnyExit(self)
        config.pluginmanager.register(summary, PLUGIN_NAME + "-summary")
        config.add_cleanup(functools.partial(config.pluginmanager.unregister, summary))
        guard = config.stash.get(exit_guard_key, None)
        if guard is not None:
            config.add_cleanup(guard.release_if_idle)
            guard.watch_from(self._session_baseline.pids, self.settings.kill_grace)
            self.watch.exit_guard = guard
        config.add_cleanup(self.recorder.uninstall)
        self.recorder.install()
        if self.settings.use_subreaper:
            was_subreaper = get_subreaper()
            self.subreaper = set_subreaper(True)
            if self.subreaper and was_subreaper is False:
                config.add_cleanup(_stop_being_subreaper)
            # Orphans reparent here only to a subreaper: without one there is nothing to reap.
            self.watch.reaper.enabled = self.subreaper
            if self.subreaper:
                config.add_cleanup(self.watch.reaper.uninstall)
                self.watch.reaper.install()
        config.add_cleanup(self.resources.stop)
        self.resources.start()
        if self.settings.mode != "off":
            # Every Python child answers the stack signal (its report can show its stacks) and
            # reports the named resources it makes; a spawned one checks its module-level objects.
            config.add_cleanup(self._stop_child_preparation)
            self.child_preparation.install(self.resources.log_path)
            # Where each queue is made: a child that feeds one says so (the feeder log).
            config.add_cleanup(self.queues.uninstall)
            self.queues.install(self.child_preparation.feeder_log)
            self.recorder.child_setup = self.child_preparation.setup_for
            self.recorder.fork_setup = self.child_preparation.fork_setup
            self.watch.stack_file = self.child_preparation.stack_path
        # The checks of the fixtures' children as they were before this run's conftest files
        # were imported: what the run's own code registers is forgotten at its end.
        checks = config.stash.get(child_checks_key, None)
        config.add_cleanup(
            functools.partial(_restore_child_checks, _child_checks() if checks is None else checks)
        )
        config.add_cleanup(_sweep_scratch)

    def _stop_child_preparation(self) -> None:
        self.recorder.child_setup = None
        self.recorder.fork_setup = None
        self.watch.stack_file = None
        self.child_preparation.uninstall()

    def header(self) -> str:
        """The line for pytest's report header."""
        if self.subreaper:
            orphans = "orphans reparent to pytest (subreaper)"
        elif not self.settings.use_subreaper:
            why = (
                "--mp-subreaper=off"
                if self.settings.subreaper == "off"
                else f"mode {self.settings.mode} only observes; --mp-subreaper=on finds them"
            )
            orphans = f"subreaper off ({why}): orphaned grandchildren reparent to init, unseen"
        else:
            orphans = "no subreaper on this platform: orphaned grandchildren cannot be found"
        if self.settings.mode == "off":
            return (
                "mpcheck: process watch off (--mp-check=off); what still runs at the end of "
                f"the session is reported and ended; {orphans}"
            )
        return (
            f"mpcheck: process watch {self.settings.mode}, settle {self.settings.settle:g}s, "
            f"kill grace {self.settings.kill_grace:g}s; {orphans}"
        )

    # -- one test -------------------------------------------------------------------------------

    def begin_test(self, item: pytest.Item) -> None:
        """Note the descendants alive before the test's setup."""
        if os.getpid() != self.watch.session_pid:
            # pytest-forked runs each test in a fork of this process: watch from there.
            self.watch.rebase()
            self.recorder.rebase()
            self._log_generation = -1
        self.recorder.wrap_process_families()
        # Before the look: orphans that ended while code replaced the handler are reaped.
        self.watch.reaper.keep_installed()
        self._current = item
        item.stash[baseline_key] = self.watch.baseline()
        self.recorder.set_owner(item.nodeid)

    def check_markers(self, item: pytest.Item) -> None:
        """Fail the test's setup if one of its markers has bad arguments."""
        if not _carries_per_test_markers(item):
            return  # the usual test
        if item.get_closest_marker("mp_check") is not None:
            item.stash[mode_key] = marker_mode(item, self.settings.mode)
        if item.get_closest_marker("mp_join_timeout") is not None:
            marker_join_timeout(item, self.settings.join_timeout)

    def test_mode(self, item: pytest.Item) -> str:
        """The mode of one test: its ``mp_check`` marker, or the run's ``--mp-check``."""
        return item.stash.get(mode_key, self.settings.mode)

    def end_test(self, item: pytest.Item, teardown_failed: bool) -> None:
        """After the teardown: fail or warn the test for what it left behind.

        When the teardown itself failed, the findings are added as a report section instead, so
        that the user's own error stays what pytest shows first.
        """
        # The test may have replaced the orphan reaper's handler: before the look, which reaps
        # at each test's end while it is not installed.
        self.watch.reaper.keep_installed()
        baseline = item.stash.get(baseline_key, None)
        if baseline is not None and self._left_nothing(baseline):
            self.recorder.set_owner(BETWEEN_TESTS)
            self._current = None
            return
        mode = self.test_mode(item)
        for fault in self.watch.reaper.take_faults():
            internal_error("reaping orphans during " + item.nodeid, fault)
        threaded_forks = self.recorder.threaded_forks.take()
        if threaded_forks and mode != "off":  # a warning in every mode, as Python's own
            try:
                message = forkthreads.format_warning(item.nodeid, threaded_forks)
            except Exception:
                internal_error("describing the forks of " + item.nodeid)
            else:
                warn_at_test(item, message)
        if self.recorder.records or self.recorder.generation != self._log_generation:
            # Only children write the logs: none was started, none still runs, none wrote.
            self._log_generation = self.recorder.generation
            try:
                self.resources.read_log()  # while the test still owns what it started
            except Exception:
                internal_error("reading the resource log after " + item.nodeid)
            try:
                # Read in mode off too: what this test's children said is not the next test's.
                said = self.child_preparation.read_messages()
                if said and mode != "off":
                    warn_at_test(item, report.format_child_messages(item.nodeid, said))
            except Exception:
                internal_error("reading what the children of " + item.nodeid + " said")
            try:
                # Before the watch forgets the records of the children that ended.
                feeders = self.child_preparation.read_feeders()
                if feeders:
                    self.queues.note_feeders(feeders, self.watch.unread_records())
            except Exception:
                internal_error("reading which queues the children of " + item.nodeid + " fed")
        self.recorder.set_owner(BETWEEN_TESTS)
        self._current = None
        if baseline is None:
            return
        try:
            # Only mode fail ends anything: warn observes, off ignores (DESIGN s.0).
            self.recorder.finishing = item.nodeid
            try:
                findings = self.watch.finish_test(
                    baseline, item.nodeid, self._veto(item), end=mode == "fail"
                )
            finally:
                self.recorder.finishing = None
        except Exception:
            internal_error("checking the processes of " + item.nodeid)
            return
        gone = self.watch.take_gone()
        ended_by_mpcheck = self.watch.take_ended_by_mpcheck()
        try:
            self._report_deaths(item, findings, mode, gone, ended_by_mpcheck)
        except Exception:
            internal_error("reading how the children of " + item.nodeid + " ended")
        try:
            self._report_terminated_feeders(item, mode, gone, ended_by_mpcheck)
        except Exception:
            internal_error("reading which queues the children of " + item.nodeid + " broke")
        resource_findings = self._pending_resources
        self._pending_resources = []
        try:
            if mode == "off":
                self.resources.forget_test(item.nodeid)
            else:
                # Only mode fail frees: a later test may attach to a segment by name (DESIGN s.0).
                resource_findings += self.resources.finish_test(item.nodeid, end=mode == "fail")
        except Exception:
            internal_error("checking the named resources of " + item.nodeid)
        if mode == "off" or not (findings or resource_findings):
            return
        self.watch.mark_reported(findings)
        for finding in findings:
            self.log.record(item, finding)
        for resource in resource_findings:
            self.log.record(item, resource)
        parts = []
        if findings:
            parts.append(report.format_findings(item.nodeid, findings))
        if resource_findings:
            parts.append(report.format_resource_findings(item.nodeid, resource_findings))
        message = "\n\n".join(parts)
        if teardown_failed:
            item.add_report_section("teardown", "mpcheck", message)
        elif mode == "fail":
            pytest.fail(message, pytrace=False)
        else:
            warn_at_test(item, message)

    def _left_nothing(self, baseline: Baseline) -> bool:
        """Whether the test left nothing to read, check or report: it started no process,
        has none now, made no named resource and no queue that was collected, and no fork or
        fault was noted. The usual test of a large suite, which :meth:`end_test` then leaves
        after a few attribute reads and one system call."""
        return (
            not self.recorder.threaded_forks
            and self.recorder.generation == self._log_generation
            and not self._pending_resources
            and not self.resources.live
            and not self.queues.collected_any()
            and self.watch.quiet_test(baseline)
        )

    def exit_status_of(self, pid: int) -> int | None:
        """The exit status of a child that the run recorded, where its process object read it."""
        record = self.recorder.records.get(pid)
        return exit_status(record) if record is not None else None

    def ended_as_hung(self, item: pytest.Item, pid: int) -> str | None:
        """How the plugin ended ``pid`` when it reported it as hung in ``item``'s test
        (``"SIGTERM"``, ``"SIGKILL"``, ``"Pool.terminate()"``); ``None`` when it did not."""
        for finding in reversed(self.log.findings):
            if (
                finding.process.pid == pid
                and finding.nodeid == item.nodeid
                and finding.kind == HUNG
                and finding.ended_by in ENDED
            ):
                return finding.ended_by
        return None

    def _report_deaths(
        self,
        item: pytest.Item,
        findings: list[Finding],
        mode: str,
        gone: list[tuple[StartRecord, int | None]],
        ended_by_mpcheck: set[int],
    ) -> None:
        """A section of the test's report on its children that died of a signal (a crash, or
        SIGKILL), and on the workers of pools and executors that exited with an error (a worker
        exits with 0 when its pool is done with it): the outcome stays the test's.

        A child ended by SIGTERM, or by the plugin itself, is no news; a test in mode off gets
        no section.
        """
        if not gone:
            return
        if mode == "off":
            for record, _ in gone:
                self.child_preparation.forget(record.pid, record.create_time)
            return
        ended_here = {finding.process.pid for finding in findings} | ended_by_mpcheck
        deaths = []
        preparation = self.child_preparation
        for record, status in gone:
            signum = -status if status is not None and status < 0 else None
            exit_code = status if status and status > 0 and record.worker else None
            if (
                (signum is None and exit_code is None)
                or signum in _ORDINARY_ENDS
                or record.is_among(ended_here)
            ):
                preparation.forget(record.pid, record.create_time)
                continue
            task = preparation.forget(record.pid, record.create_time, read=True)
            deaths.append(
                ChildDeath(
                    pid=record.pid,
                    name=record.name,
                    started_at=record.site,
                    started_by=record.started_by,
                    owner=record.owner,
                    signal=signum,
                    task=task,
                    exit_code=exit_code,
                )
            )
        if deaths:
            # The children's standard error is the pytest process's descriptor 2, which only
            # the fd capture (pytest's default) turns into the test's captured stderr.
            captured = item.config.getoption("capture", "fd") == "fd"
            stderr = "".join(
                content
                for _, key, content in getattr(item, "_report_sections", ())
                if key == "stderr"
            )
            from pytest_mpcheck._os import stacks  # only for a death: it is a large module

            crashes = stacks.fatal_errors(stderr) if captured else []
            item.add_report_section(
                "teardown",
                "mpcheck",
                report.format_deaths(item.nodeid, deaths, crashes, captured),
            )

    def _report_terminated_feeders(
        self,
        item: pytest.Item,
        mode: str,
        gone: list[tuple[StartRecord, int | None]],
        ended_by_mpcheck: set[int],
    ) -> None:
        """Warn the test of each queue that a child fed before a signal ended it, unless the
        plugin sent that signal (a leftover it ended).

        A warning in modes fail and warn alike, never a failure: a test may end a worker on
        purpose and never use its queue again, and only the queue's next use could tell whether
        it was broken (a filter naming ``MpCheckWarning`` makes it an error). None in mode off.
        """
        try:
            feeders = self.queues.ended(gone, ended_by_mpcheck) if gone else []
        finally:
            self.queues.forget_collected()
        if feeders and mode != "off":
            warn_at_test(item, report.format_terminated_feeders(item.nodeid, feeders))

    def watch_fixture_scopes(self) -> None:
        """Check each wider-scoped fixture's processes when it is finalized, from now on.

        Called (by :class:`OriginRecorder`) when a process, a thread or a named resource is
        first attributed to such a fixture: until then no hook runs at each fixture's
        finalization, which the tests of a suite whose fixtures start nothing would all pay.
        """
        with self._scope_lock:  # a thread started by a fixture may get here at the same time
            if self._scope_hook is not None:
                return
            self._scope_hook = _FixtureScopes(self)
        manager = self.config.pluginmanager
        manager.register(self._scope_hook, PLUGIN_NAME + "-scopes")
        self.config.add_cleanup(functools.partial(manager.unregister, self._scope_hook))

    def scope_finished(self, scope: object) -> None:
        """A module-, class-, package- or session-scoped fixture was finalized."""
        item = self._current
        if item is None:
            return
        end = self.test_mode(item) == "fail"
        try:
            self.watch.finish_scope(scope, item.nodeid, self._veto(item), end=end)
        except Exception:
            internal_error("checking the processes of a fixture")
        try:
            self._pending_resources.extend(self.resources.finish_scope(scope, end=end))
        except Exception:
            internal_error("checking the named resources of a fixture")

    def _veto(self, item: pytest.Item) -> VetoFn:
        def veto(process: ProcessInfo) -> bool:
            answer = self.config.hook.pytest_mpcheck_ignore_process(
                config=self.config, item=item, process=process
            )
            return bool(answer)

        return veto

    @property
    def session_baseline(self) -> Baseline | None:
        """The descendants that were alive when the run began: not the session's to end."""
        return self._session_baseline

    def baseline_of(self, item: pytest.Item) -> Baseline | None:
        """The descendants that were alive before ``item`` began."""
        return item.stash.get(baseline_key, None)

    # -- the end of the run ---------------------------------------------------------------------

    def sweep(self) -> None:
        """After the last fixture: end what is still running, so that nothing outlives pytest.

        In every mode, off included: a process left running would hold pytest's exit (the
        interpreter joins its children) or outlive it.
        """
        if self._session_baseline is None or os.getpid() != self.watch.session_pid:
            return
        try:
            self.left_at_end = self.watch.finish_session(self._session_baseline)
        except Exception:
            internal_error("ending what was left at the end of the session")
            return
        for finding in self.left_at_end:
            self._record_at_end(finding)
        try:
            # With the children ended, a queue feeder that still writes may have no reader left.
            exitguard.guard_feeders(self.recorder.thread_start)
        except Exception:
            internal_error("looking at the queue feeders still running at the end of the session")
        try:
            self.resources_left_at_end = self.resources.finish_session()
        except Exception:
            internal_error("freeing the named resources left at the end of the session")
            return
        for resource in self.resources_left_at_end:
            self._record_at_end(resource)

    def _record_at_end(self, finding: Finding | ResourceFinding) -> None:
        # A hook written before it was called with item=None (at the end of the session) may
        # fail on it: the finding is counted and kept all the same, and the report written.
        try:
            self.log.record(None, finding)
        except Exception:
            internal_error("showing a finding of the end of the session to the hooks")

    def finish(self) -> None:
        """Count what was started; hand it all to pytest-xdist's controller, or write the JSON
        report."""
        self.log.tally.started += self.recorder.started
        locks = loaded_lockcheck()
        tally = self.config.stash.get(locks.contention_key, None) if locks is not None else None
        contention: list[dict[str, Any]] | None = tally.rows if tally is not None else None
        if xdist.hand_over(self.config, self.log, contention):
            return  # the controller adds it up and writes the report
        if self.settings.report_path:
            report.write_json(self.settings.report_path, self.log, contention)

    def summary_if_not_written(self) -> None:
        """What the session's end found, where pytest called no terminal summary (see
        :class:`_SummaryOnAnyExit`); nothing when it found nothing. An xdist worker hands its
        findings to the controller instead."""
        if xdist.is_worker(self.config):
            return
        if not (self.left_at_end or self.resources_left_at_end or self.report_problem):
            return
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            self.pytest_terminal_summary(terminal)

    def summary_lines(self) -> list[str]:
        """Lines for the terminal summary."""
        tally = self.log.tally
        if self.settings.mode == "off" and not tally.started:
            return []
        lines = [report.summary_line(tally)]
        if tally.resources:
            lines.append(report.resource_summary_line(tally))
        if self.left_at_end:
            lines.append(report.format_session_leftovers(self.left_at_end))
        if self.resources_left_at_end:
            lines.append(report.format_session_resources(self.resources_left_at_end))
        return lines

    # -- pytest hooks ---------------------------------------------------------------------------

    def pytest_report_header(self) -> str | None:
        try:
            return self.header()
        except Exception:
            internal_error("writing the report header")
            return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # Not a wrapper: a marker with bad arguments fails the setup like any setup error, and
        # the other plugins' wrappers have begun their setup and see the failure. One call per
        # test, which the suites of thousands of tests pay.
        try:
            self.begin_test(item)
        except Exception:
            internal_error("noting the processes before " + item.nodeid)
        self.check_markers(item)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        try:
            result = yield
            # After every teardown: a test that went on after its children were ended for
            # pytest-timeout's thread method fails here.
            timeouts.check_teardown(item)
        except BaseException as error:
            self.end_test(item, teardown_failed=True)
            escalated = take_escalated(item)
            if escalated:  # the teardown's own error stays what pytest shows first
                item.add_report_section("teardown", "mpcheck", "\n\n".join(escalated))
            merged = _one_teardown_failure(error)
            if merged is None:
                raise
            raise merged from None
        self.end_test(item, teardown_failed=False)
        escalated = take_escalated(item)
        if escalated:
            pytest.fail("\n\n".join(escalated), pytrace=False)
        return result

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        startmethods.parametrize(metafunc, self.settings.start_methods)

    @pytest.hookimpl(wrapper=True, optionalhook=True)
    def pytest_timeout_set_timer(
        self, item: pytest.Item, settings: Any
    ) -> Generator[None, Any, Any]:
        """pytest-timeout: end the test's children, with their stacks, before it ends the test;
        and, before its ``os._exit``, every process of the session."""
        with timeouts.ending_the_session_first(self):
            result = yield
        timeouts.after_set_timer(self, item, settings)
        return result

    @pytest.hookimpl(wrapper=True, optionalhook=True)
    def pytest_timeout_cancel_timer(self, item: pytest.Item) -> Generator[None, Any, Any]:
        result = yield
        timeouts.after_cancel_timer(item)
        return result

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """pytest-xdist: add up what a worker that finished found."""
        workeroutput = getattr(node, "workeroutput", None)
        if not workeroutput:
            return
        try:
            xdist.take_over(self.config, self.log, workeroutput)
        except Exception:
            internal_error("adding up the figures of an xdist worker")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # trylast: after pytest's own implementation has torn down the remaining fixtures.
        try:
            self.sweep()
            try:
                self.finish()
            except report.ReportNotWritten as problem:
                # One line in the summary; pytest's own summary and exit status stay as they are.
                self.report_problem = str(problem)
        except Exception:
            internal_error("finishing the session")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.summary_written:  # written already (see _SummaryOnAnyExit)
            return
        self.summary_written = True
        if self.report_problem is not None:
            terminalreporter.write_line(self.report_problem, yellow=True, bold=True)
        try:
            for line in self.summary_lines():
                terminalreporter.write_line(line)
            lockcheck = loaded_lockcheck()
            if lockcheck is not None:
                for line in lockcheck.summary_lines(self.config):
                    terminalreporter.write_line(line)
        except Exception:
            internal_error("writing the terminal summary")


def _is_our_failure(error: BaseException) -> bool:
    """Whether ``error`` is a failure of the plugin's report (``pytest.fail`` without traceback)."""
    return (
        isinstance(error, pytest.fail.Exception)
        and not error.pytrace
        and str(error.msg).startswith("mpcheck: ")
    )


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions of an exception group (pytest raises one when several finalizers of a
    teardown failed), groups within it opened; ``error`` itself when it is no group."""
    inner = getattr(error, "exceptions", None)
    if isinstance(error, BaseException) and isinstance(inner, tuple) and inner:
        return [leaf for each in inner for leaf in _leaves(each)]
    return [error]


def _one_teardown_failure(error: BaseException) -> BaseException | None:
    """One failure with the text of each, when a teardown's failures are all the plugin's reports.

    Several ``mp_*`` fixtures may each fail one teardown (a child that failed, and a lock
    problem): pytest would show their exception group, with a traceback through the fixtures.
    They become one failure whose text carries each report as it reads alone, in pytest's order.
    ``None`` when there is nothing to merge (a single failure, or one that is not the plugin's).
    """
    leaves = _leaves(error)
    if len(leaves) < 2 or not all(_is_our_failure(leaf) for leaf in leaves):
        return None
    text = "\n\n".join(str(leaf.msg) for leaf in leaves if isinstance(leaf, pytest.fail.Exception))
    return pytest.fail.Exception(text, pytrace=False)


#: The exit statuses after which pytest calls ``pytest_terminal_summary`` (pytest 8 and 9).
_STATUSES_WITH_SUMMARY = frozenset(
    status
    for status in (
        pytest.ExitCode.OK,
        pytest.ExitCode.TESTS_FAILED,
        pytest.ExitCode.INTERRUPTED,
        pytest.ExitCode.USAGE_ERROR,
        pytest.ExitCode.NO_TESTS_COLLECTED,
        getattr(pytest.ExitCode, "MAX_WARNINGS_ERROR", None),  # pytest 9
    )
    if status is not None
)


class _SummaryOnAnyExit:
    """Shows what the session's end found when pytest shows no terminal summary.

    pytest calls ``pytest_terminal_summary`` only for some exit statuses: not after
    ``pytest.exit(returncode=N)`` with a status of the user's, nor after an internal error. The
    processes and named resources that the session's end ended or freed would then go unsaid.
    """

    def __init__(self, run: MpCheckRun) -> None:
        self._run = run

    # trylast: the innermost wrapper, whose end runs right after the session-end sweep and
    # before the terminal reporter's, which writes pytest's last line ("1 passed in 0.12s"):
    # the report comes before it, as in the terminal summary.
    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_sessionfinish(self, exitstatus: int) -> Generator[None, None, None]:
        result = yield
        if exitstatus not in _STATUSES_WITH_SUMMARY:
            try:
                self._run.summary_if_not_written()
            except Exception:
                internal_error("writing what the end of the session found")
        return result


class _FixtureScopes:
    """The hook that checks a wider-scoped fixture once it is finalized (see
    :meth:`MpCheckRun.watch_fixture_scopes`)."""

    def __init__(self, run: MpCheckRun) -> None:
        self._run = run

    def pytest_fixture_post_finalizer(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
        if fixturedef.scope != "function":
            self._run.scope_finished(fixturedef)


#: The checks of the fixtures' children before the run's conftest files were imported.
child_checks_key: pytest.StashKey[tuple[str, ...]] = pytest.StashKey()


#: Signals that end a child as it was asked to: no news for a report.
_ORDINARY_ENDS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def remember_child_checks(config: pytest.Config) -> None:
    """Note the checks of the fixtures' children before the run imports its conftest files."""
    config.stash[child_checks_key] = _child_checks()


def guard_the_exit(config: pytest.Config) -> None:
    """Before the run imports its conftest files: note the children the pytest process has, and
    register the function that ends, as Python exits, a never-joined child that those files
    start (see :mod:`pytest_mpcheck.watch.exitguard`)."""
    guard = exitguard.ExitGuard()
    guard.install()
    config.stash[exit_guard_key] = guard


def _child_checks() -> tuple[str, ...]:
    bootstrap = sys.modules.get("pytest_mpcheck.fixtures.bootstrap")
    return tuple(bootstrap.CHILD_CHECKS) if bootstrap is not None else ()


def _restore_child_checks(checks: tuple[str, ...]) -> None:
    """Forget the checks of the fixtures' children that the run's tests registered: another run
    in this process must not run them."""
    bootstrap = sys.modules.get("pytest_mpcheck.fixtures.bootstrap")
    if bootstrap is not None:
        bootstrap.CHILD_CHECKS[:] = checks


def _stop_being_subreaper() -> None:
    set_subreaper(False)


def _sweep_scratch() -> None:
    try:
        scratch.sweep()  # what runs that were killed left in /dev/shm
    except Exception:
        internal_error("removing the files of earlier runs")


def loaded_lockcheck() -> ModuleType | None:
    """The lock checker's session module (figures and findings), if a test used the checker: it is
    imported only then, and has nothing to report, add up or write otherwise."""
    return sys.modules.get("pytest_mpcheck.locks.tally")


#: Where the run's :class:`MpCheckRun` lives: ``config.stash[run_key]``.
run_key: pytest.StashKey[MpCheckRun] = pytest.StashKey()  # not subscripted: see above
