"""pytest-mpcheck: a pytest plugin for multiprocessing correctness.

Every test is watched for child processes it leaves behind; fixtures spawn tracked processes,
pools and executors; instrumented locks check mutual exclusion across processes.
"""

from __future__ import annotations

from pytest_mpcheck.errors import MpCheckInternalWarning, MpCheckWarning
from pytest_mpcheck.findings import Finding, ProcessInfo
from pytest_mpcheck.lockcheck import (
    Hold,
    LockChecker,
    LockCounts,
    LockFinding,
    LockStats,
    ProcessName,
)
from pytest_mpcheck.locks import CheckedLock
from pytest_mpcheck.output import OutputLine, OutputLog
from pytest_mpcheck.pools import ExecutorFactory, PoolFactory, TrackedExecutor, TrackedPool
from pytest_mpcheck.spawn import ChildError, ProcessFailed, RemoteTraceback, Spawner, TrackedProcess

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
