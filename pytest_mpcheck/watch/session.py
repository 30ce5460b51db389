"""The state of one pytest run: the watch, the recorder, the tally, and what each test found."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from types import ModuleType
from typing import Any

import pytest

from pytest_mpcheck import report
from pytest_mpcheck._os import scratch
from pytest_mpcheck.errors import MpCheckInternalWarning, warn_at_test
from pytest_mpcheck.findings import ENDED, Finding, ProcessInfo, SessionTally
from pytest_mpcheck.settings import Settings, marker_join_timeout, marker_mode
from pytest_mpcheck.watch import forkthreads
from pytest_mpcheck.watch.origins import OriginRecorder
from pytest_mpcheck.watch.process_watch import Baseline, ProcessWatch
from pytest_mpcheck.watch.reaper import get_subreaper, set_subreaper
from pytest_mpcheck.watch.resources import ResourceFinding, ResourceWatch

# Not ``StashKey[Baseline]()``: typing caches each subscription, and the entry would keep this copy
# of the plugin's modules alive after pytester's in-process run drops them from sys.modules.
baseline_key: pytest.StashKey[Baseline] = pytest.StashKey()
mode_key = pytest.StashKey[str]()


class MpCheckSession:
    """Everything the plugin keeps for one run, and what the pytest hooks call into."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.recorder = OriginRecorder(config.rootpath)
        self.watch = ProcessWatch(settings, self.recorder)
        self.resources = ResourceWatch(self.recorder.owner_of)
        self.resource_findings: list[ResourceFinding] = []
        self._pending_resources: list[ResourceFinding] = []
        """Of fixture scopes that ended during the current teardown."""
        self.resources_left_at_end: list[ResourceFinding] = []
        self._log_generation = -1
        self.tally = SessionTally()
        self.findings: list[Finding] = []
        self.worker_findings: list[dict[str, Any]] = []
        self.worker_resource_findings: list[dict[str, Any]] = []
        self.subreaper = False
        self._was_subreaper: bool | None = None
        self._current: pytest.Item | None = None
        self._session_baseline: Baseline | None = None
        self.left_at_end: list[Finding] = []

    # -- lifetime -------------------------------------------------------------------------------

    def start(self) -> None:
        """Wrap the process-starting calls, become a subreaper, reap orphans as they die."""
        self._session_baseline = self.watch.baseline()
        self.recorder.install()
        if self.settings.use_subreaper:
            self._was_subreaper = get_subreaper()
            self.subreaper = set_subreaper(True)
            # Orphans reparent here only to a subreaper: without one there is nothing to reap.
            self.watch.reaper.enabled = self.subreaper
            if self.subreaper:
                self.watch.reaper.install()
        self.resources.start()

    def stop(self) -> None:
        """Undo :meth:`start` (``config.add_cleanup``)."""
        self.watch.reaper.uninstall()
        self.resources.stop()
        try:
            scratch.sweep()  # what runs that were killed left in /dev/shm
        except Exception:
            self._internal_error("removing the files of earlier runs")
        if self._was_subreaper is False:
            set_subreaper(False)
        self.recorder.uninstall()

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
        self._current = item
        item.stash[baseline_key] = self.watch.baseline()
        self.recorder.set_owner(item.nodeid)

    def check_markers(self, item: pytest.Item) -> None:
        """Fail the test's setup if one of its markers has bad arguments."""
        names = {mark.name for mark in item.iter_markers()}  # one walk up the nodes, not two
        if "mp_check" in names:
            item.stash[mode_key] = marker_mode(item, self.settings.mode)
        if "mp_join_timeout" in names:
            marker_join_timeout(item, self.settings.join_timeout)

    def test_mode(self, item: pytest.Item) -> str:
        """The mode of one test: its ``mp_check`` marker, or the run's ``--mp-check``."""
        return item.stash.get(mode_key, self.settings.mode)

    def end_test(self, item: pytest.Item, teardown_failed: bool) -> None:
        """After the teardown: fail or warn the test for what it left behind.

        When the teardown itself failed, the findings are added as a report section instead, so
        that the user's own error stays what pytest shows first.
        """
        baseline = item.stash.get(baseline_key, None)
        mode = self.test_mode(item)
        threaded_forks = self.recorder.threaded_forks.take()
        if threaded_forks and mode != "off":  # a warning in every mode, as Python's own
            try:
                message = forkthreads.format_warning(item.nodeid, threaded_forks)
            except Exception:
                self._internal_error("describing the forks of " + item.nodeid)
            else:
                warn_at_test(item, message)
        if self.recorder.records or self.recorder.generation != self._log_generation:
            # Only children write the log: none was started, none still runs, none wrote.
            self._log_generation = self.recorder.generation
            try:
                self.resources.read_log()  # while the test still owns what it started
            except Exception:
                self._internal_error("reading the resource log after " + item.nodeid)
        self.recorder.set_owner("<between tests>")
        self._current = None
        if baseline is None:
            return
        try:
            # Only mode fail ends anything: warn observes, off ignores (DESIGN s.0).
            findings = self.watch.finish_test(
                baseline, item.nodeid, self._veto(item), end=mode == "fail"
            )
        except Exception:
            self._internal_error("checking the processes of " + item.nodeid)
            return
        resource_findings = self._pending_resources
        self._pending_resources = []
        try:
            if mode == "off":
                self.resources.forget_test(item.nodeid)
            else:
                resource_findings += self.resources.finish_test(item.nodeid)
        except Exception:
            self._internal_error("checking the named resources of " + item.nodeid)
        if mode == "off" or not (findings or resource_findings):
            return
        self.watch.mark_reported(findings)
        for finding in findings:
            self.tally.count(finding)
            self.findings.append(finding)
            self.config.hook.pytest_mpcheck_finding(config=self.config, item=item, finding=finding)
        self.tally.resources += len(resource_findings)
        self.resource_findings.extend(resource_findings)
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

    def scope_finished(self, scope: object) -> None:
        """A module-, class-, package- or session-scoped fixture was finalized."""
        item = self._current
        if item is None:
            return
        try:
            end = self.test_mode(item) == "fail"
            self.watch.finish_scope(scope, item.nodeid, self._veto(item), end=end)
        except Exception:
            self._internal_error("checking the processes of a fixture")
        try:
            self._pending_resources.extend(self.resources.finish_scope(scope))
        except Exception:
            self._internal_error("checking the named resources of a fixture")

    def _veto(self, item: pytest.Item) -> Any:
        def veto(process: ProcessInfo) -> bool:
            answer = self.config.hook.pytest_mpcheck_ignore_process(
                config=self.config, item=item, process=process
            )
            return bool(answer)

        return veto

    def _internal_error(self, doing: str) -> None:
        internal_error(doing)

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
            self._internal_error("ending what was left at the end of the session")
            return
        for finding in self.left_at_end:
            if finding.reported_by is None:
                self.tally.count(finding)
            elif finding.ended_by in ENDED:
                self.tally.ended += 1
            self.findings.append(finding)
        try:
            self.resources_left_at_end = self.resources.finish_session()
        except Exception:
            self._internal_error("freeing the named resources left at the end of the session")
            return
        self.tally.resources += len(self.resources_left_at_end)
        self.resource_findings.extend(self.resources_left_at_end)

    def finish(self) -> None:
        """Count what was started and write the JSON report."""
        self.tally.started += self.recorder.started
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # a pytest-xdist worker: the controller adds it up
            workeroutput["mpcheck_tally"] = self.tally.to_json()
            workeroutput["mpcheck_findings"] = [f.to_json() for f in self.findings]
            workeroutput["mpcheck_resource_findings"] = [
                f.to_json() for f in self.resource_findings
            ]
            return
        if self.settings.report_path:
            extra: dict[str, Any] = {}
            if self.worker_findings:
                extra["worker_findings"] = self.worker_findings
            resource_findings = [f.to_json() for f in self.resource_findings]
            resource_findings += self.worker_resource_findings
            if resource_findings:
                extra["resource_findings"] = resource_findings
            lockcheck = loaded_lockcheck()
            if lockcheck is not None:
                extra.update(lockcheck.json_section(self.config))
            report.write_json(self.settings.report_path, self.tally, self.findings, extra)

    def add_worker(self, workeroutput: dict[str, Any]) -> None:
        """Add the figures of a pytest-xdist worker to the controller's."""
        self.tally.add(workeroutput.get("mpcheck_tally", {}))
        self.worker_findings.extend(workeroutput.get("mpcheck_findings", []))
        self.worker_resource_findings.extend(workeroutput.get("mpcheck_resource_findings", []))

    def summary_lines(self) -> list[str]:
        """Lines for the terminal summary."""
        if self.settings.mode == "off" and not self.tally.started:
            return []
        lines = [report.summary_line(self.tally)]
        if self.tally.resources:
            lines.append(report.resource_summary_line(self.tally))
        if self.left_at_end:
            lines.append(report.format_session_leftovers(self.left_at_end))
        if self.resources_left_at_end:
            lines.append(report.format_session_resources(self.resources_left_at_end))
        return lines


def internal_error(doing: str) -> None:
    """Say that the plugin itself failed, without changing the run's outcome.

    A warning that no filter can escalate (``-W error`` or ``filterwarnings = error`` would
    otherwise turn the plugin's own bug into the user's failure, or an INTERNALERROR).
    """
    details = "".join(traceback.format_exception(*sys.exc_info()))
    with warnings.catch_warnings():
        warnings.simplefilter("always", MpCheckInternalWarning)
        warnings.warn(
            MpCheckInternalWarning(
                f"pytest-mpcheck failed while {doing}; please report this bug:\n{details}"
            ),
            stacklevel=2,
        )


def loaded_lockcheck() -> ModuleType | None:
    """The lock checker's session module (figures and findings), if a test used the checker: it is
    imported only then, and has nothing to report, add up or write otherwise."""
    return sys.modules.get("pytest_mpcheck.locks.tally")


#: Where the run's :class:`MpCheckSession` lives: ``config.stash[session_key]``.
session_key: pytest.StashKey[MpCheckSession] = pytest.StashKey()  # not subscripted: see above
