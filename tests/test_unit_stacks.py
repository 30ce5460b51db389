"""Stacks as the reports show them: faulthandler's and py-spy's dumps turned into traceback text,
and what a process waits in, from its innermost frame and the kernel. No process is read."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_mpcheck._os import stacks

#: Paths that exist nowhere: their frames have no source line.
MP = "/nowhere/lib/python3.11/multiprocessing"
PLUGIN = "/nowhere/site-packages/pytest_mpcheck"


@pytest.fixture
def source(tmp_path: Path) -> str:
    """A file whose lines the stacks show."""
    path = tmp_path / "child.py"
    path.write_text("def hang():\n    time.sleep(60)\n\ndef work():\n    hang()\n")
    return str(path)


def test_faulthandler_dump_becomes_a_traceback(source: str) -> None:
    # faulthandler writes the most recent call first, the thread that took the signal as
    # "Current thread"; what led to the child's own code (a fork of pytest) is left out.
    dump = textwrap.dedent(
        f"""\
        Thread 0x00007f0000000002 (most recent call first):
          File "{MP}/threading.py", line 320 in wait

        Current thread 0x00007f0000000001 (most recent call first):
          File "{source}", line 2 in hang
          File "{source}", line 5 in work
          File "{MP}/process.py", line 108 in run
          File "{MP}/process.py", line 314 in _bootstrap
          File "{MP}/popen_fork.py", line 71 in _launch
          File "/nowhere/_pytest/python.py", line 159 in pytest_pyfunc_call
        """
    )
    assert stacks._from_faulthandler(dump).splitlines() == [
        "Thread 0x00007f0000000001 (main thread), most recent call last:",
        f'  File "{MP}/process.py", line 108, in run',
        f'  File "{source}", line 5, in work',
        "    hang()",
        f'  File "{source}", line 2, in hang',
        "    time.sleep(60)",
        "Thread 0x00007f0000000002, most recent call last:",
        f'  File "{MP}/threading.py", line 320, in wait',
    ]


def test_a_dump_without_threads_is_kept_as_it_is() -> None:
    assert stacks._from_faulthandler("  garbled\n") == "garbled"
    assert stacks._from_pyspy("Error: failed to attach\n") == "Error: failed to attach"


def test_pyspy_dump_becomes_a_traceback(source: str) -> None:
    dump = textwrap.dedent(
        f"""\
        Process 4242: /usr/bin/python3 -c from multiprocessing.spawn import spawn_main
        Python v3.11.7 (/usr/bin/python3.11)

        Thread 4242 (idle): "MainThread"
            hang ({source}:2)
            work ({source}:5)
            run ({PLUGIN}/fixtures/spawn.py:180)
            BaseProcess._bootstrap ({MP}/process.py:314)
            _main ({MP}/spawn.py:135)
        Thread 4250 (active)
            select ({MP}/connection.py:930)
        """
    )
    assert stacks._from_pyspy(dump).splitlines() == [
        # Cut after the plugin's own run (and multiprocessing's _bootstrap, py-spy's
        # Class.method): what follows is the child's own code.
        "Thread 4242 'MainThread' (idle), most recent call last:",
        f'  File "{source}", line 5, in work',
        "    hang()",
        f'  File "{source}", line 2, in hang',
        "    time.sleep(60)",
        "Thread 4250 (active), most recent call last:",
        f'  File "{MP}/connection.py", line 930, in select',
    ]


def test_trim_keeps_the_last_start_up_frame_when_nothing_follows_it() -> None:
    # A target that is a C function (time.sleep): its caller's line shows the call, and the
    # copy of pytest's stack before it (a fork child's) is left out.
    frames = [("a.py", 1, "main"), (f"{MP}/process.py", 314, "_bootstrap")]
    assert stacks._trim(frames) == frames[1:]
    assert stacks._trim([("a.py", 1, "main")]) == [("a.py", 1, "main")]


def _stack(*frames: tuple[str, str]) -> str:
    """Traceback text of one thread: ``(file, source line)`` outermost first."""
    lines = ["Thread 0x1 (main thread), most recent call last:"]
    for number, (filename, line) in enumerate(frames, 1):
        lines.append(f'  File "{filename}", line {number}, in f{number}')
        if line:
            lines.append(f"    {line}")
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("innermost", "words"),
    [
        (f"{MP}/synchronize.py", "a multiprocessing lock, semaphore or condition"),
        (f"{MP}/connection.py", "a multiprocessing Pipe or Connection (recv/poll)"),
        (f"{MP}/popen_fork.py", "joining a child process"),
        ("/nowhere/lib/python3.11/threading.py", "a threading lock, event or join"),
    ],
)
def test_waiting_in_the_innermost_python_frame(innermost: str, words: str) -> None:
    stack = _stack(("test_a.py", "work()"), (innermost, ""))
    assert stacks.waiting_in(stack, "futex_wait_queue") == words


def test_waiting_in_names_the_function_of_the_frame() -> None:
    # queues.py: get and put wait for different things; another function is no wait at all.
    lines = ["Thread 0x1 (main thread), most recent call last:"]
    for func in ("get", "put"):
        frame = f'  File "{MP}/queues.py", line 1, in {func}'
        assert stacks.waiting_in("\n".join([*lines, frame]), None) == (
            f"a multiprocessing Queue ({func}" + (", queue full)" if func == "put" else ")")
        )
    frame = f'  File "{MP}/queues.py", line 1, in qsize'
    assert stacks.waiting_in("\n".join([*lines, frame]), None) is None


def test_waiting_in_a_c_function_named_by_the_source_line() -> None:
    stack = _stack(("test_a.py", "hang()"), ("test_a.py", "time.sleep(60)"))
    assert stacks.waiting_in(stack, "hrtimer_nanosleep") == (
        "sleeping (time.sleep) [kernel: hrtimer_nanosleep]"
    )
    assert stacks.waiting_in(stack, None) == "sleeping (time.sleep)"


def test_only_the_first_thread_counts() -> None:
    stack = "\n".join(
        [
            _stack(("test_a.py", "x = 1")),
            "Thread 0x2, most recent call last:",
            f'  File "{MP}/synchronize.py", line 9, in __enter__',
        ]
    )
    assert stacks.waiting_in(stack, None) is None


@pytest.mark.parametrize(
    ("wchan", "words"),
    [
        ("futex_wait_queue", "a lock or condition (futex wait) [kernel: futex_wait_queue]"),
        ("pipe_read", "reading a pipe (a multiprocessing Queue or Pipe) [kernel: pipe_read]"),
        ("do_wait", "waiting for a child process (join/wait) [kernel: do_wait]"),
        ("do_sys_poll", "polling file descriptors (select/poll) [kernel: do_sys_poll]"),
        ("ep_poll", "polling file descriptors (select/poll) [kernel: ep_poll]"),
        ("something_else", "the kernel function something_else"),
    ],
)
def test_waiting_in_from_the_kernel_alone(wchan: str, words: str) -> None:
    assert stacks.waiting_in(None, wchan) == words


def test_nothing_known_is_no_answer() -> None:
    assert stacks.waiting_in(None, None) is None
    assert stacks.waiting_in("", None) is None


def test_crash_reports_are_found_among_other_output(source: str) -> None:
    # faulthandler's report of a crash, between other lines a child wrote; the thread that
    # crashed comes first, and the report ends where faulthandler's format ends.
    captured = textwrap.dedent(
        f"""\
        starting
        Fatal Python error: Aborted

        Thread 0x00007f0000000002 (most recent call first):
          File "{MP}/process.py", line 108 in run
          File "{MP}/process.py", line 314 in _bootstrap

        Current thread 0x00007f0000000001 (most recent call first):
          File "{source}", line 2 in hang
          File "{source}", line 5 in work
          File "{MP}/process.py", line 314 in _bootstrap

        Extension modules: psutil._psutil_linux (total: 1)
        done: 3 items
        Fatal Python error: Segmentation fault

        Stack (most recent call first):
          <no Python frame>
        """
    )
    found = stacks.fatal_errors(captured)
    assert [what for what, _ in found] == ["Aborted", "Segmentation fault"]
    assert found[0][1].splitlines() == [
        "Thread 0x00007f0000000001 (the thread that crashed), most recent call last:",
        f'  File "{source}", line 5, in work',
        "    hang()",
        f'  File "{source}", line 2, in hang',
        "    time.sleep(60)",
        "Thread 0x00007f0000000002, most recent call last:",
        f'  File "{MP}/process.py", line 108, in run',
    ]
    assert found[1][1] == "(no Python frame)"
    assert stacks.fatal_errors("no crash here\nFatal Python error in a sentence\n") == []


def test_the_plugins_frames_inside_a_workers_code_are_left_out() -> None:
    # A pool worker's task note wraps its queue's receive: the worker's stack reads as without it.
    dump = textwrap.dedent(
        f"""\
        Current thread 0x00007f0000000001 (most recent call first):
          File "{MP}/connection.py", line 216 in recv_bytes
          File "{PLUGIN}/watch/tasknotes.py", line 82 in recv_bytes
          File "{MP}/queues.py", line 365 in get
          File "{MP}/process.py", line 314 in _bootstrap
        """
    )
    text = stacks._from_faulthandler(dump)
    assert "tasknotes" not in text
    assert [line for line in text.splitlines() if line.startswith("  File")] == [
        f'  File "{MP}/queues.py", line 365, in get',
        f'  File "{MP}/connection.py", line 216, in recv_bytes',
    ]
