"""The operating-system plumbing that the watch and the fixtures share (``pytest_mpcheck._os``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pytest_mpcheck._os import prctl, procfs
from pytest_mpcheck._os.poll import poll_until


class Asked:
    """A condition that counts how often it was asked, and answers ``answer``."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.times = 0

    def __call__(self) -> bool:
        self.times += 1
        return self.answer


def test_poll_until_answers_at_once_when_done() -> None:
    asked = Asked(True)
    assert poll_until(asked, timeout=5.0)
    assert asked.times == 1


def test_poll_until_is_bounded() -> None:
    started = time.monotonic()
    assert not poll_until(lambda: False, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2.0


def test_poll_until_without_time_asks_once() -> None:
    asked = Asked(False)
    assert not poll_until(asked, timeout=0)
    assert asked.times == 1


def test_poll_until_sees_a_process_end() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.1)"])
    try:
        assert poll_until(lambda: child.poll() is not None, timeout=30.0)
    finally:
        child.kill()
        child.wait()


def test_procfs_reads_parent_state_and_signals() -> None:
    if not os.path.isdir("/proc/self"):
        pytest.skip("no procfs")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert procfs.parent(child.pid) == os.getpid()
        assert procfs.state(child.pid) in ("R", "S", "D")
        assert procfs.create_time(child.pid) is not None
    finally:
        child.kill()
        child.wait()
    assert procfs.parent(child.pid) is None  # reaped: gone
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    try:
        assert signal.SIGUSR2 in procfs.caught_signals(os.getpid())
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_prctl_reads_the_subreaper_flag() -> None:
    assert prctl.get_subreaper() in (True, False)
