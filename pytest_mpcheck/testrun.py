"""What the ``mp_*`` fixtures of one test share: its start method, join timeout and work directory.

The work directory holds the children's output log, their stack files and their results; it is
removed after the test's fixtures have been torn down.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import NoReturn

import pytest

from pytest_mpcheck import bootstrap, hangs, scratch, timeouts
from pytest_mpcheck.findings import Finding
from pytest_mpcheck.output import LOG_NAME, OutputLog
from pytest_mpcheck.session import MpCheckSession, session_key
from pytest_mpcheck.settings import Settings, marker_join_timeout


class MpTest:
    """The shared state of the ``mp_*`` fixtures of one test."""

    def __init__(self, item: pytest.Item, method: str) -> None:
        self.item = item
        self.method = method
        self.context: BaseContext = multiprocessing.get_context(method)
        self.session: MpCheckSession | None = item.config.stash.get(session_key, None)
        settings = self.session.settings if self.session is not None else Settings()
        self.join_timeout = marker_join_timeout(item, settings.join_timeout)
        self.kill_grace = settings.kill_grace
        self.settle = settings.settle
        self.workdir = scratch.make_directory("test")
        self.output = OutputLog(Path(self.workdir) / LOG_NAME)
        self.spec = bootstrap.ChildSpec(
            workdir=self.workdir,
            session_pid=os.getpid(),
            checks=tuple(bootstrap.CHILD_CHECKS),
            resource_log=self.session.resources.log_path if self.session is not None else None,
        )
        bootstrap.create_files(self.workdir)
        self._results: dict[str, bytes] = {}
        self._results_offset = 0
        item.stash[timeouts.workdir_key] = self.workdir
        bootstrap.warm_up()

    def result_data(self, token: str) -> bytes | None:
        """The pickled result that the child of ``token`` sent, if it did."""
        if token not in self._results:
            found, self._results_offset = bootstrap.read_results(self.workdir, self._results_offset)
            self._results.update(found)
            if token not in found:
                spilled = bootstrap.read_spilled_result(self.workdir, token)
                if spilled is not None:
                    self._results[token] = spilled
        return self._results.get(token)

    def end_hung(
        self, suspects: Sequence[hangs.Suspect], why: str, grace: float | None = None
    ) -> list[Finding]:
        """Diagnose and end hung children of this test; the findings (already recorded)."""
        return hangs.end_hung(
            self.session,
            self.item,
            suspects,
            why,
            self.workdir,
            self.kill_grace if grace is None else grace,
        )

    def fail_hung(self, suspects: Sequence[hangs.Suspect], headline: str, why: str) -> NoReturn:
        """Diagnose and end hung children, then fail the test with their stacks."""
        __tracebackhide__ = True
        findings = self.end_hung(suspects, why)
        pytest.fail(
            hangs.format_hung(headline, findings, hangs.join_advice(self.join_timeout)),
            pytrace=False,
        )

    def cleanup(self) -> None:
        """Remove the work directory."""
        scratch.remove_directory(self.workdir)
