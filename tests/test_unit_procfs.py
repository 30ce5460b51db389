"""procfs read in one place: the stat line (a command name may hold spaces and parentheses),
start times, and what a gone process reads as. Only this test process is read, but for the
one ``waitid`` reading of its children, which runs in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pytest_mpcheck._os import procfs

#: A pid above the largest pid_max Linux allows: no process has it.
NO_SUCH_PID = 4_194_305

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs procfs")


@pytest.fixture
def odd_name() -> Iterator[str]:
    """This process's command name (``comm``), for the test, made to fool a naive stat parser."""
    with open("/proc/self/comm") as comm:
        before = comm.read().rstrip("\n")
    name = "x) Z 1 (y"  # the state after the first ")" would read as "Z"
    with open("/proc/self/comm", "w") as comm:
        comm.write(name)
    try:
        yield name
    finally:
        with open("/proc/self/comm", "w") as comm:
            comm.write(before)


def test_state_of_a_process_whose_name_holds_parentheses(odd_name: str) -> None:
    assert psutil.Process().name() == odd_name
    # Reading its own stat, the process is running.
    assert procfs.state(os.getpid()) == "R"
    assert not procfs.is_zombie(os.getpid())


def test_start_time_of_a_process_whose_name_holds_parentheses(odd_name: str) -> None:
    created = procfs.create_time(os.getpid())
    assert created is not None
    assert abs(created - psutil.Process().create_time()) < 0.01
    assert procfs.is_same_process(os.getpid(), created)
    # Another start time is another process that got the same pid.
    assert not procfs.is_same_process(os.getpid(), created - 1)
    age = procfs.age(os.getpid())
    assert age is not None
    assert 0 <= age <= time.time() - created + 1


def test_a_gone_process_reads_as_gone() -> None:
    assert procfs.state(NO_SUCH_PID) is None
    assert not procfs.is_zombie(NO_SUCH_PID)
    assert procfs.create_time(NO_SUCH_PID) is None
    assert not procfs.is_same_process(NO_SUCH_PID, 0.0)
    assert procfs.age(NO_SUCH_PID) is None
    assert procfs.describe(NO_SUCH_PID) is None
    assert procfs.cmdline(NO_SUCH_PID) == ""
    assert procfs.children(NO_SUCH_PID) == []
    assert procfs.descendants(NO_SUCH_PID) == {}


def test_command_line_and_description_of_this_process() -> None:
    expected = " ".join(psutil.Process().cmdline())
    assert procfs.cmdline(os.getpid()) == expected
    described = procfs.describe(os.getpid())
    assert described is not None
    name, cmdline, status, created, age, ppid = described
    assert (name, cmdline, status, ppid) == (
        psutil.Process().name(),
        expected,
        psutil.Process().status(),
        os.getppid(),
    )
    assert created == psutil.Process().create_time()
    assert age >= 0


def test_read_small_reads_past_a_short_read(tmp_path: Path) -> None:
    # More than one read's worth (64 KiB) comes back whole.
    data = bytes(range(256)) * 1000
    (tmp_path / "big").write_bytes(data)
    assert procfs._read_small(str(tmp_path / "big")) == data
    (tmp_path / "empty").write_bytes(b"")
    assert procfs._read_small(str(tmp_path / "empty")) == b""


EXITED_CHILD = """
import os, subprocess, sys, time
from pytest_mpcheck._os import procfs

seen = [procfs.may_have_exited_child()]  # no child at all
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
seen.append(procfs.may_have_exited_child())  # a child, still running
child.stdin.close()
deadline = time.monotonic() + 30
while procfs.state(child.pid) != "Z" and time.monotonic() < deadline:
    time.sleep(0.01)
seen.append(procfs.may_have_exited_child())  # a child that exited, not reaped
seen.append(os.waitpid(child.pid, 0)[1])  # still there to be reaped, with its status
seen.append(procfs.may_have_exited_child())  # reaped
print(seen)
"""


def test_an_exited_child_is_told_in_one_call_and_left_to_its_owner() -> None:
    # In a process of its own: this test's process may have children of other tests.
    out = subprocess.run(
        [sys.executable, "-c", EXITED_CHILD], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[False, False, True, 0, False]"
