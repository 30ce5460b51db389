"""Every Python child the pytest process starts gives its stacks, with no py-spy and no fixture.

The inner runs find no py-spy (the ``inner`` fixture hides it): each stack below comes from the
child itself, which answers the plugin's stack signal.
"""

from __future__ import annotations

import pytest

from tests.conftest import FAST_ARGS, WITHOUT_PYSPY, InnerRun

LEAKS = """
import concurrent.futures
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

KEEP = []


def started(path):
    # Each child says when it reached the line it waits in: on a loaded machine a spawned
    # child or the first forkserver may take seconds to get there.
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def idle_in_a_thread(path, event):
    threading.Thread(target=event.wait, name="helper", daemon=True).start()
    open(path, "w").close()
    event.wait()  # main thread


def sleep_in_a_task(path):
    open(path, "w").close()
    time.sleep(60)


def test_os_fork(tmp_path):
    if os.fork() == 0:
        open(tmp_path / "started", "w").close()
        time.sleep(60)  # the fork's own line
        os._exit(0)
    started(tmp_path / "started")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_process(method, tmp_path):
    context = multiprocessing.get_context(method)
    event = context.Event()
    KEEP.append(event)
    path = str(tmp_path / "started")
    context.Process(target=idle_in_a_thread, args=(path, event), name="waiter").start()
    started(path)


def test_pool_worker(tmp_path):
    pool = multiprocessing.get_context("spawn").Pool(1)
    KEEP.append(pool)
    pool.apply_async(sleep_in_a_task, (str(tmp_path / "started"),))
    started(tmp_path / "started")


def test_executor_worker(tmp_path):
    context = multiprocessing.get_context("forkserver")
    executor = concurrent.futures.ProcessPoolExecutor(1, mp_context=context)
    KEEP.append(executor)
    executor.submit(sleep_in_a_task, str(tmp_path / "started"))
    started(tmp_path / "started")


#: The plugin's stack signal, which this module's code uses for its own ends.
OWN_SIGNAL = signal.SIGRTMIN + 3
SIGNALLED = os.path.join(os.path.dirname(__file__), "signalled")


def note_signal(signum, frame):
    with open(SIGNALLED, "a") as notes:
        notes.write(f"{os.getpid()}\\n")


def signal_myself(path):
    os.kill(os.getpid(), OWN_SIGNAL)  # the handler it inherited must run
    open(path, "w").close()
    time.sleep(60)


def test_own_handler_of_the_stack_signal(tmp_path):
    previous = signal.signal(OWN_SIGNAL, note_signal)
    try:
        context = multiprocessing.get_context("fork")
        path = str(tmp_path / "started")
        context.Process(target=signal_myself, args=(path,), name="own-handler").start()
        started(path)
    finally:
        signal.signal(OWN_SIGNAL, previous)


def test_python_program():
    # A program of its own (exec): it cannot be asked; without py-spy, the kernel says the rest.
    KEEP.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    time.sleep(0.3)
"""


@pytest.mark.parametrize("inner", [WITHOUT_PYSPY], indirect=True)
def test_children_of_every_kind_give_their_stacks(inner: InnerRun) -> None:
    inner.pytester.makepyfile(test_leaks=LEAKS)
    result = inner(*FAST_ARGS, timeout=120)
    result.assert_outcomes(passed=8, errors=8)
    # A child whose code handles the plugin's signal keeps its handler, and is not sent the
    # signal for its stack (that would run its handler): the one signal it got is its own.
    signalled = (inner.pytester.path / "signalled").read_text().split()
    assert len(signalled) == 1
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_own_handler_of_the_stack_signal*",
            f"leaked process {signalled[0]} 'own-handler': still running, *",
        ]
    )
    for method in ("fork", "spawn", "forkserver"):
        result.stdout.fnmatch_lines(
            [
                f"*ERROR at teardown of test_process[[]{method}[]]*",
                "leaked process * 'waiter': still running, *",
                "    waiting in: a multiprocessing lock, semaphore or condition",
                "    stack (most recent call last):",
                "      Thread 0x* (main thread), most recent call last:",
                '        File "*test_leaks.py", line *, in idle_in_a_thread',
                "          event.wait()  # main thread",
                "*",
                # Every thread, not only the main one.
                "      Thread 0x*, most recent call last:",
                '        File "*threading.py", line *, in *',
            ]
        )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_pool_worker*",
            "leaked process * 'SpawnPoolWorker-*': still running, *",
            "    stack (most recent call last):",
            "      Thread 0x* (main thread), most recent call last:",
            '        File "*multiprocessing/pool.py", line *, in worker',
            "*",
            '        File "*test_leaks.py", line *, in sleep_in_a_task',
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_executor_worker*",
            "leaked process * 'ForkServerProcess-*': still running, *",
            "    stack (most recent call last):",
            '        File "*concurrent/futures/process.py", line *, in _process_worker',
            "*",
            '        File "*test_leaks.py", line *, in sleep_in_a_task',
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_os_fork*",
            "    stack (most recent call last):",
            # Only the fork's own frames: not those of pytest it was copied from.
            "      Thread 0x* (main thread), most recent call last:",
            '        File "*test_leaks.py", line *, in test_os_fork',
            "          time.sleep(60)  # the fork's own line",
            "",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_python_program*",
            "    command:    * -c import time; time.sleep(60)",
            "    no Python stack: it does not answer the stack signal (the children that pytest "
            "starts through multiprocessing or os.fork do), and py-spy is not installed; *",
        ]
    )
    assert "_pytest/runner.py" not in result.stdout.str()
