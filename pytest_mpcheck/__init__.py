"""pytest-mpcheck: a pytest plugin for multiprocessing correctness.

Every test is watched for child processes it leaves behind; fixtures spawn tracked processes,
pools and executors; instrumented locks check mutual exclusion across processes.
"""

from __future__ import annotations

from pytest_mpcheck.errors import MpCheckInternalWarning, MpCheckWarning
from pytest_mpcheck.findings import Finding, ProcessInfo

__all__ = [
    "Finding",
    "MpCheckInternalWarning",
    "MpCheckWarning",
    "ProcessInfo",
]
