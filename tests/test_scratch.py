"""The plugin's own files: removed after each test, and swept when a killed run left them."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest


def test_files_of_dead_runs_are_swept(pytester: pytest.Pytester) -> None:
    # A run that was SIGKILLed (or ended by pytest-timeout's os._exit) cannot remove its work
    # directories: the next run removes those of processes that are gone, once they are stale.
    from pytest_mpcheck._os import scratch

    # A pid no process can have (the pid of an ended one may be another's a moment later).
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    where = scratch.base() or tempfile.gettempdir()
    stale = tempfile.mkdtemp(prefix=f"mpcheck-test-{gone}-", dir=where)
    Path(stale, "output.log").write_text("left behind")
    recent = tempfile.mkdtemp(prefix=f"mpcheck-test-{gone}-", dir=where)
    running = tempfile.mkdtemp(prefix=f"mpcheck-locks-{os.getpid()}-", dir=where)
    old = time.time() - scratch.STALE_AFTER - 60
    for path in (stale, running):
        os.utime(path, (old, old))
    try:
        pytester.makepyfile("def test_nothing():\n    pass\n")
        result = pytester.runpytest_subprocess(timeout=60)
        result.assert_outcomes(passed=1)
        assert not os.path.exists(stale)
        assert os.path.isdir(recent)  # may belong to a run in another pid namespace
        assert os.path.isdir(running)  # its process (this one) is alive
    finally:
        for path in (stale, recent, running):
            shutil.rmtree(path, ignore_errors=True)
