"""The operating-system plumbing that the watch and the fixtures share (``pytest_mpcheck._os``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_mpcheck._os import prctl, procfs, stacks
from pytest_mpcheck._os.poll import poll_until
from pytest_mpcheck._os.stackfile import STACK_SIGNAL
from tests.conftest import wait_until


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


ANSWERS_ITS_STACK = """
import sys, time
from pytest_mpcheck._os.stackfile import answer_stack_signal
answer_stack_signal(sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""

ASKS_A_SIBLING = """
import os, sys
from pytest_mpcheck._os import procfs, stacks
pid = int(sys.argv[1])
print(sorted(stacks.dump_prepared([pid], 3.0, sys.argv[2])), procfs.parent(pid) == os.getppid())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux procfs")
def test_stacks_are_asked_of_descendants_only(tmp_path: Path) -> None:
    path = str(tmp_path / "stacks.log")
    open(path, "w").close()
    answering = subprocess.Popen(
        [sys.executable, "-c", ANSWERS_ITS_STACK, path], stdout=subprocess.PIPE, text=True
    )
    grandchild = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert answering.stdout is not None
        assert answering.stdout.readline() == "ready\n"
        assert grandchild.stdout is not None
        grandchild_pid = int(grandchild.stdout.readline())
        ours = procfs.descendants(os.getpid())
        assert ours[answering.pid] == os.getpid()
        assert ours[grandchild_pid] == grandchild.pid
        assert answering.pid not in procfs.descendants(grandchild.pid)
        # A sibling of the prepared child (same parent), which did not start it, does not
        # signal it.
        sibling = subprocess.run(
            [sys.executable, "-c", ASKS_A_SIBLING, str(answering.pid), path],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert sibling.stdout == "[] True\n", sibling.stderr
        assert os.path.getsize(path) == 0
        # Its parent does, and reads its stack.
        dumps = stacks.dump_prepared([answering.pid], 10.0, path)
        assert list(dumps) == [answering.pid]
        assert 'File "<string>", line 6, in <module>' in dumps[answering.pid]
    finally:
        for process in (answering, grandchild):
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if "grandchild_pid" in locals():
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild_pid, signal.SIGKILL)


ANSWERS_WHEN_TOLD = """
import signal, sys, time
from pytest_mpcheck._os.stackfile import STACK_SIGNAL, answer_without_descriptor
answer_without_descriptor(sys.argv[1])
# As a child stuck in C code that holds the GIL: the signal waits until it is let through.
signal.pthread_sigmask(signal.SIG_BLOCK, [STACK_SIGNAL])
print("ready", flush=True)
sys.stdin.readline()

def first_child():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [STACK_SIGNAL])
    time.sleep(60)

def second_child():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [STACK_SIGNAL])
    time.sleep(60)

globals()[sys.argv[2]]()
"""


def _pending(pid: int, signum: int) -> bool:
    """Whether ``signum`` waits to be delivered to ``pid`` (blocked, sent)."""
    with open(f"/proc/{pid}/status") as status:
        masks = dict(
            line.split(":\t", 1) for line in status if line.startswith(("SigPnd", "ShdPnd"))
        )
    return any(int(mask, 16) & (1 << (signum - 1)) for mask in masks.values())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux procfs")
def test_a_late_answer_is_not_taken_for_another_childs_stack(tmp_path: Path) -> None:
    """Children share the session's stack file: a child that answers an earlier signal late is
    not read as the stack of the child asked now."""
    path = str(tmp_path / "stacks.log")
    open(path, "w").close()
    late, asked = (
        subprocess.Popen(
            [sys.executable, "-c", ANSWERS_WHEN_TOLD, path, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("first_child", "second_child")
    )
    try:
        for child in (late, asked):
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
        assert stacks.dump_prepared([late.pid], 0.3, path) == {}  # no answer in time
        assert _pending(late.pid, STACK_SIGNAL)
        read: dict[int, str] = {}
        reader = threading.Thread(
            target=lambda: read.update(stacks.dump_prepared([asked.pid], 30.0, path))
        )
        reader.start()
        assert wait_until(lambda: _pending(asked.pid, STACK_SIGNAL), 20.0)
        assert late.stdin is not None
        assert asked.stdin is not None
        late.stdin.write("answer now\n")
        late.stdin.flush()
        # The late answer lands while the reader waits for the asked child's.
        assert wait_until(lambda: os.path.getsize(path) > 0, 20.0)
        time.sleep(0.3)  # long enough for the reader to see the file stop growing
        assert reader.is_alive()
        assert not read
        asked.stdin.write("answer now\n")
        asked.stdin.flush()
        reader.join(40.0)
        assert list(read) == [asked.pid]
        assert "in second_child" in read[asked.pid]
        assert "first_child" not in read[asked.pid]
        assert str(late.pid) not in read[asked.pid]
    finally:
        for child in (late, asked):
            child.kill()
            child.wait()
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    stream.close()
