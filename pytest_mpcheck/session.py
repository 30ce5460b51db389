"""The state of one pytest run: the watch, the recorder, the tally, and what each test found."""

from __future__ import annotations

import sys
import traceback
import warnings
from types import ModuleType
from typing import Any

import pytest

from pytest_mpcheck import report, scratch
from pytest_mpcheck.errors import MpCheckInternalWarning, warn_at_test
from pytest_mpcheck.findings import Finding, ProcessInfo, SessionTally
from pytest_mpcheck.origins import OriginRecorder
from pytest_mpcheck.reaper import get_subreaper, set_subreaper
from pytest_mpcheck.resources import ResourceFinding, ResourceWatch
from pytest_mpcheck.settings import Settings, marker_join_timeout, marker_mode
from pytest_mpcheck.watch import Baseline, ProcessWatch

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
        self._was_subreaper = get_subreaper()
        self.subreaper = set_subreaper(True)
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
        if self.settings.mode == "off":
            return "mpcheck: process watch off (--mp-check=off)"
        orphans = (
            "orphans reparent to pytest (subreaper)"
            if self.subreaper
            else "no subreaper on this platform: orphaned grandchildren cannot be found"
        )
        return (
            f"mpcheck: process watch {self.settings.mode}, settle {self.settings.settle:g}s, "
            f"kill grace {self.settings.kill_grace:g}s; {orphans}"
        )

    # -- one test -------------------------------------------------------------------------------

    def begin_test(self, item: pytest.Item) -> None:
        """Note the descendants alive before the test's setup."""
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
            findings = self.watch.finish_test(
                baseline, item.nodeid, self._veto(item), end=mode != "off"
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
            self.watch.finish_scope(scope, item.nodeid, self._veto(item))
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
        details = "".join(traceback.format_exception(*sys.exc_info()))
        warnings.warn(
            MpCheckInternalWarning(
                f"pytest-mpcheck failed while {doing}; please report this bug:\n{details}"
            ),
            stacklevel=1,
        )

    # -- the end of the run ---------------------------------------------------------------------

    def sweep(self) -> None:
        """After the last fixture: end what is still running, so that nothing outlives pytest."""
        if self.settings.mode == "off" or self._session_baseline is None:
            return
        try:
            self.left_at_end = self.watch.finish_session(self._session_baseline)
        except Exception:
            self._internal_error("ending what was left at the end of the session")
            return
        for finding in self.left_at_end:
            self.tally.count(finding)
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


def loaded_lockcheck() -> ModuleType | None:
    """The lock checker's module, if a test used it: it is imported only then, and has nothing to
    report, add up or write otherwise."""
    return sys.modules.get("pytest_mpcheck.lockcheck")


#: Where the run's :class:`MpCheckSession` lives: ``config.stash[session_key]``.
session_key: pytest.StashKey[MpCheckSession] = pytest.StashKey()  # not subscripted: see above
