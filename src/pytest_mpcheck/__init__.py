"""pytest-mpcheck: a pytest plugin for multiprocessing correctness.

Every test is watched for child processes it leaves behind; fixtures spawn tracked processes,
pools and executors; instrumented locks check mutual exclusion across processes.

The public names below are imported on first use: pytest loads this package in every run, and a
suite that uses no fixture should not pay for the lock checker, the pools and the spawner (nor
should each child that a spawn start method starts).

PYTEST_DONT_REWRITE: this module has no assertion to rewrite. Said here because at the end of a
run the plugin gives its modules a plain loader (see ``plugin._release_loaders``), and pytest
warns of a plugin package imported without its rewriter, which a second ``pytest.main()`` in the
same process would then find (an error under ``-W error``), unless the package says this.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: every child that the plugin prepares imports this package, and a
# spawned child that never imports typing would pay some 4 ms for it (mypy knows the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pytest_mpcheck.errors import MpCheckInternalWarning, MpCheckWarning
    from pytest_mpcheck.findings import Finding, ProcessInfo
    from pytest_mpcheck.fixtures.output import OutputLine, OutputLog
    from pytest_mpcheck.fixtures.pools import (
        ExecutorFactory,
        PoolFactory,
        TrackedExecutor,
        TrackedPool,
    )
    from pytest_mpcheck.fixtures.spawn import (
        ChildError,
        ProcessFailed,
        RemoteTraceback,
        Spawner,
        TrackedProcess,
    )
    from pytest_mpcheck.locks.checked import CheckedLock
    from pytest_mpcheck.locks.checker import LockChecker
    from pytest_mpcheck.locks.checks import LockFinding
    from pytest_mpcheck.locks.replay import Hold, ProcessName
    from pytest_mpcheck.locks.stats import LockCounts, LockStats

#: Where each public name lives.
_EXPORTS = {
    "CheckedLock": "locks.checked",
    "ChildError": "fixtures.spawn",
    "ExecutorFactory": "fixtures.pools",
    "Finding": "findings",
    "Hold": "locks.replay",
    "LockChecker": "locks.checker",
    "LockCounts": "locks.stats",
    "LockFinding": "locks.checks",
    "LockStats": "locks.stats",
    "MpCheckInternalWarning": "errors",
    "MpCheckWarning": "errors",
    "OutputLine": "fixtures.output",
    "OutputLog": "fixtures.output",
    "PoolFactory": "fixtures.pools",
    "ProcessFailed": "fixtures.spawn",
    "ProcessInfo": "findings",
    "ProcessName": "locks.replay",
    "RemoteTraceback": "fixtures.spawn",
    "Spawner": "fixtures.spawn",
    "TrackedExecutor": "fixtures.pools",
    "TrackedPool": "fixtures.pools",
    "TrackedProcess": "fixtures.spawn",
}

__all__ = [
    "CheckedLock",
    "ChildError",
    "ExecutorFactory",
    "Finding",
    "Hold",
    "LockChecker",
    "LockCounts",
    "LockFinding",
    "LockStats",
    "MpCheckInternalWarning",
    "MpCheckWarning",
    "OutputLine",
    "OutputLog",
    "PoolFactory",
    "ProcessFailed",
    "ProcessInfo",
    "ProcessName",
    "RemoteTraceback",
    "Spawner",
    "TrackedExecutor",
    "TrackedPool",
    "TrackedProcess",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_mpcheck' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pytest_mpcheck.{module}"), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
