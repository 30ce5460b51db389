"""The session's side of the lock checker: the most contended locks in the terminal summary, the
lock figures and findings in the JSON report, and their way from pytest-xdist workers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_mpcheck.locks.checks import LockFinding
from pytest_mpcheck.locks.stats import LockStats


@dataclass
class ContentionTally:
    """The most contended locks of the run, for the terminal summary."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    """Every lock finding of the run, for the JSON report."""

    def add_findings(self, nodeid: str, found: Iterable[LockFinding]) -> None:
        """Note the lock findings of one test."""
        for finding in found:
            self.findings.append(
                {
                    "nodeid": nodeid,
                    "kind": finding.kind,
                    "lock": finding.lock,
                    "processes": [{"pid": p.pid, "name": p.name} for p in finding.processes],
                    "message": finding.message,
                }
            )

    def add(self, nodeid: str, stats: dict[str, LockStats]) -> None:
        """Note the figures of one test's locks."""
        for name, figures in stats.items():
            if figures.acquisitions:
                self.rows.append(
                    {
                        "test": nodeid,
                        "lock": name,
                        "acquisitions": figures.acquisitions,
                        "contended": figures.contended,
                        "total_wait": figures.total_wait,
                        "max_wait": figures.max_wait,
                    }
                )

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows from a pytest-xdist worker."""
        self.rows.extend(rows)

    def summary_lines(self, top: int = 5) -> list[str]:
        """Lines for the terminal summary: the locks that waited most."""
        contended = [row for row in self.rows if row["contended"]]
        if not contended:
            return []
        contended.sort(key=lambda row: (-row["total_wait"], -row["contended"]))
        lines = ["mpcheck: most contended locks:"]
        for row in contended[:top]:
            lines.append(
                f"  {row['lock']!r} in {row['test']}: {row['contended']} of {row['acquisitions']} "
                f"acquisitions waited, wait total {row['total_wait'] * 1e3:.1f} ms "
                f"max {row['max_wait'] * 1e3:.1f} ms"
            )
        return lines


# Not ``StashKey[ContentionTally]()``: typing caches each subscription, and the entry would keep
# this copy of the module alive after pytester's in-process run drops it from sys.modules.
contention_key: pytest.StashKey[ContentionTally] = pytest.StashKey()


def tally_of(config: pytest.Config) -> ContentionTally:
    tally = config.stash.get(contention_key, None)
    if tally is None:
        tally = config.stash[contention_key] = ContentionTally()
    return tally


def session_finish(config: pytest.Config) -> None:
    """A pytest-xdist worker hands its lock figures to the controller."""
    workeroutput = getattr(config, "workeroutput", None)
    tally = config.stash.get(contention_key, None)
    if workeroutput is not None and tally is not None:
        workeroutput["mpcheck_locks"] = {"rows": tally.rows, "findings": tally.findings}


def add_worker(config: pytest.Config, workeroutput: dict[str, Any]) -> None:
    """The controller adds the lock figures of a pytest-xdist worker."""
    section = workeroutput.get("mpcheck_locks")
    if section:
        tally = tally_of(config)
        tally.extend(section.get("rows", []))
        tally.findings.extend(section.get("findings", []))


def json_section(config: pytest.Config) -> dict[str, Any]:
    """The locks' part of the JSON report (``--mp-report``): figures and findings."""
    tally = config.stash.get(contention_key, None)
    if tally is None:
        return {}
    return {"locks": {"contention": tally.rows, "findings": tally.findings}}


def summary_lines(config: pytest.Config) -> list[str]:
    """The terminal summary's lines on the most contended locks of the run."""
    tally = config.stash.get(contention_key, None)
    return tally.summary_lines() if tally is not None else []
