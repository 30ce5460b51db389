"""Clean code passes with no finding and no warning; orphans are reaped as they die."""

from __future__ import annotations

import sys

import pytest

CLEAN_CODE = """
import concurrent.futures
import multiprocessing
import subprocess
import sys
import threading
import time

import pytest


def square(n):
    return n * n


def say(q, text):
    q.put(text)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_joined_processes(method):
    ctx = multiprocessing.get_context(method)
    q = ctx.Queue()
    procs = [ctx.Process(target=say, args=(q, f"hi {i}")) for i in range(2)]
    for p in procs:
        p.start()
    got = sorted(q.get(timeout=30) for _ in procs)
    for p in procs:
        p.join()  # joined in the last line: no false alarm
    assert got == ["hi 0", "hi 1"]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_with_block(method):
    with multiprocessing.get_context(method).Pool(2) as pool:
        assert pool.map(square, [1, 5, 9]) == [1, 25, 81]


def test_pool_close_join():
    pool = multiprocessing.get_context("fork").Pool(2)
    assert pool.apply_async(square, (10,)).get(timeout=30) == 100
    pool.close()
    pool.join()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor(method):
    ctx = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert list(ex.map(square, [2, 3])) == [4, 9]


def test_executor_shutdown_without_wait_settles():
    # The workers are still exiting when the test ends; the settle window lets them finish.
    ex = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    assert ex.submit(square, 4).result(timeout=30) == 16
    ex.shutdown(wait=False)


def test_subprocess_run():
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True).returncode == 0


def test_own_exit_statuses_are_left_to_their_owners():
    # The SIGCHLD handler must not take the status of a child that the test waits for.
    popen = subprocess.Popen(["sh", "-c", "exit 3"])
    proc = multiprocessing.get_context("fork").Process(target=sys.exit, args=(7,))
    proc.start()
    time.sleep(0.3)
    assert popen.wait(timeout=10) == 3
    proc.join(10)
    assert proc.exitcode == 7


def test_no_thread_in_the_test_process():
    assert threading.active_count() == 1, threading.enumerate()
"""


#: A test that kills a parent and then checks that its worker, orphaned, is gone once killed:
#: the orphan reparented to pytest (the subreaper, Linux only) and is reaped as it dies.
ORPHANS = """
import multiprocessing, os, signal, subprocess, time
import psutil

def parent(conn):
    worker = subprocess.Popen(["sleep", "60"])
    conn.send(worker.pid)
    time.sleep(60)

def test_kill_parent_then_its_worker():
    here, there = multiprocessing.Pipe()
    p = multiprocessing.get_context("fork").Process(target=parent, args=(there,))
    p.start()
    worker = here.recv()
    p.kill()
    p.join()
    # the worker is now an orphan; it reparented to pytest (the subreaper)
    assert psutil.Process(worker).ppid() == os.getpid()
    created = psutil.Process(worker).create_time()

    def gone():  # or the pid is another process's already
        try:
            return psutil.Process(worker).create_time() != created
        except psutil.NoSuchProcess:
            return True

    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone(), "the dead orphan was left a zombie"
"""


def test_clean_code_passes_without_warnings_and_orphans_are_reaped(
    pytester: pytest.Pytester,
) -> None:
    # One inner run for both (an interpreter start is most of the cost of a run); the orphans'
    # test, Linux only, runs under -W error too.
    linux = sys.platform.startswith("linux")
    pytester.makepyfile(test_clean=CLEAN_CODE, **({"test_orphans": ORPHANS} if linux else {}))
    # -W error: a thread of the plugin would turn fork into a DeprecationWarning on 3.12+.
    result = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=12 + linux, warnings=0)
    result.stdout.no_fnmatch_line("*warnings summary*")
    result.stdout.fnmatch_lines(
        ["mpcheck: * started by tests, 0 leaked, 0 unreaped, 0 hung, 0 ended*"]
    )
