"""The session's side of the lock checker: the figures of each test's locks, and the most
contended ones in the terminal summary. (The JSON report and pytest-xdist's hand-over take the
figures from here: :mod:`pytest_mpcheck.report`, :mod:`pytest_mpcheck.xdist`.)"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_mpcheck.locks.stats import LockStats


@dataclass
class ContentionTally:
    """The most contended locks of the run, for the terminal summary."""

    rows: list[dict[str, Any]] = field(default_factory=list)

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
    """The run's tally, made when a test first uses the lock checker."""
    tally = config.stash.get(contention_key, None)
    if tally is None:
        tally = config.stash[contention_key] = ContentionTally()
    return tally


def summary_lines(config: pytest.Config) -> list[str]:
    """The terminal summary's lines on the most contended locks of the run."""
    tally = config.stash.get(contention_key, None)
    return tally.summary_lines() if tally is not None else []
