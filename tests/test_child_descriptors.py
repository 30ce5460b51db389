"""A child holds exactly the descriptors its own code opened: none of the plugin's.

loky's suite counts the files a child has open (``lsof``) and fails on any it did not expect; a
plugin that prepares every child (for its stacks, its resources) must not leave one there. Nor
does a fork child keep the plugin's ``SIGCHLD`` handler (the orphan reaper is the pytest
process's), and what prepares it writes nothing to its standard error.
"""

from __future__ import annotations

import pytest

from tests.conftest import FAST_ARGS

COUNTS_ITS_FILES = """
import multiprocessing
import os
import signal

import pytest


def open_files():
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return found


def own_files(queue):
    queue.put(open_files())


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_child_has_no_file_of_the_plugin(method):
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=own_files, args=(queue,))
    child.start()
    files = queue.get(timeout=60)
    child.join()
    assert not [f for f in files if "mpcheck-" in f], files


def own_files_and_maps():
    with open("/proc/self/maps") as maps:
        mapped = [line.split()[-1] for line in maps if "mpcheck-" in line]
    with open("/proc/self/stat") as stat:
        start = stat.read().rsplit(")", 1)[1].split()[22 - 3]  # field 22: start, in ticks
    return f"{os.getpid()}-{start}", open_files(), mapped


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_worker_maps_its_task_note_and_holds_no_file(method):
    with multiprocessing.get_context(method).Pool(1) as pool:
        worker, files, mapped = pool.apply(own_files_and_maps)
    assert not [f for f in files if "mpcheck-" in f], files
    # The one file of the plugin's in a worker: its task note (named by its pid and start),
    # mapped, its descriptor closed.
    assert [os.path.basename(path) for path in mapped] == [f"tasks-{worker}"], mapped


def sigchld_handler(queue):
    queue.put(repr(signal.getsignal(signal.SIGCHLD)))


@pytest.mark.parametrize("how", ["Process", "os.fork"])
def test_fork_child_has_the_sigchld_handler_of_before_and_a_quiet_start(how, capfd):
    before = repr(signal.SIG_DFL)
    queue = multiprocessing.get_context("fork").SimpleQueue()
    if how == "Process":
        child = multiprocessing.get_context("fork").Process(target=sigchld_handler, args=(queue,))
        child.start()
        child.join()
        assert child.exitcode == 0
    else:
        pid = os.fork()
        if pid == 0:
            try:
                sigchld_handler(queue)
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
    assert queue.get() == before
    assert capfd.readouterr().err == ""
"""


@pytest.mark.parametrize("mode", ["fail", "warn"])
def test_a_child_holds_no_descriptor_of_the_plugin(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_files=COUNTS_ITS_FILES)
    result = pytester.runpytest_subprocess(*FAST_ARGS, f"--mp-check={mode}", timeout=120)
    result.assert_outcomes(passed=8)
