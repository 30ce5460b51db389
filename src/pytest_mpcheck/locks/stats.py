"""Contention figures of the checked locks, as the kernel's lockstat reports them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pytest_mpcheck.locks.replay import Hold


@dataclass
class LockCounts:
    """Contention figures, as lockstat reports them (times in seconds)."""

    acquisitions: int = 0
    contended: int = 0
    """Acquisitions that found the lock taken and had to wait."""
    total_wait: float = 0.0
    max_wait: float = 0.0
    total_hold: float = 0.0
    max_hold: float = 0.0

    def _add(self, hold: Hold) -> None:
        self.acquisitions += 1
        wait = hold.wait / 1e9
        if hold.contended:
            self.contended += 1
        self.total_wait += wait
        self.max_wait = max(self.max_wait, wait)
        if hold.end is not None:
            held = (hold.end - hold.start) / 1e9
            self.total_hold += held
            self.max_hold = max(self.max_hold, held)


@dataclass
class LockStats(LockCounts):
    """The figures of one lock, with the same figures per process and per acquisition site."""

    name: str = ""
    by_process: dict[str, LockCounts] = field(default_factory=dict)
    """By ``"name (pid N)"``."""
    by_site: dict[str, LockCounts] = field(default_factory=dict)
    """By ``file:line`` of the acquisition."""

    def format(self) -> str:
        """A lockstat-like table."""
        lines = [
            f"lock {self.name!r}: {self.acquisitions} acquisitions, {self.contended} contended, "
            f"wait total {self.total_wait * 1e3:.3f} ms max {self.max_wait * 1e3:.3f} ms, "
            f"hold max {self.max_hold * 1e3:.3f} ms"
        ]
        for title, table in (("process", self.by_process), ("site", self.by_site)):
            for key, counts in table.items():
                lines.append(
                    f"    {title} {key}: {counts.acquisitions} acq, {counts.contended} contended, "
                    f"wait max {counts.max_wait * 1e3:.3f} ms, hold max "
                    f"{counts.max_hold * 1e3:.3f} ms"
                )
        return "\n".join(lines)


def lock_stats(name: str, holds: Iterable[Hold]) -> LockStats:
    """The figures of the lock ``name`` from its holds, overall, per process and per site."""
    stats = LockStats(name=name)
    for hold in holds:
        stats._add(hold)
        stats.by_process.setdefault(str(hold.process), LockCounts())._add(hold)
        stats.by_site.setdefault(hold.site or "unknown site", LockCounts())._add(hold)
    return stats
