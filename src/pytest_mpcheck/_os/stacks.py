"""The Python stack of a live child, and what it waits in.

Three sources, best first:

1. A child the pytest process started through ``multiprocessing`` or ``os.fork`` was prepared
   for it (:mod:`pytest_mpcheck._os.stackfile`): on a signal, ``faulthandler`` writes the stacks
   of all its threads to its stack file. Always available, fast, needs no privileges.
2. Any other Python descendant (a program run by ``subprocess``, a child started before the
   session): ``py-spy dump`` where py-spy is installed and may attach.
3. Otherwise what the kernel says: the state and the kernel function it waits in (``wchan``).

Stacks are returned in the order of a Python traceback (most recent call last), one block per
thread, with the source line where it can be read.
"""

from __future__ import annotations

import functools
import linecache
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType

from pytest_mpcheck._os import callsite, procfs, scratch
from pytest_mpcheck._os.stackfile import DUMP_OF_PID, STACK_SIGNAL, STACKS_NAME, TAKEN_NAME


@functools.cache
def _pattern(source: str) -> re.Pattern[str]:
    """``source`` compiled, on its first use: the patterns of the dumps below, compiled at
    import, would cost every pytest run a millisecond for dumps that most runs never read."""
    return re.compile(source)


#: The lines of the dumps that the parsers below read (see :func:`_pattern`).
_FAULTHANDLER_FRAME = r'^\s*File "(?P<file>.*)", line (?P<line>\d+) in (?P<func>.*)$'
_FAULTHANDLER_THREAD = r"^(?P<head>(Current thread|Thread) 0x[0-9a-f]+).*:\s*$"
_TRACEBACK_FRAME = r'^\s+File "(.+)", line \d+, in (.+)$'
#: The heading of a dump that the Python stack handler wrote, with its writer's pid (captured).
_DUMP_HEADING = r"(?m)^" + re.escape(DUMP_OF_PID) + r"(\d+)\n"
_PYSPY_FRAME = r"^\s+(?P<func>\S.*) \((?P<file>.+):(?P<line>\d+)\)\s*$"
_PYSPY_THREAD = r"^Thread (?P<tid>\S+) \((?P<state>[^)]*)\)(?::\s*\"(?P<name>.*)\")?"

_STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "in uninterruptible wait (disk or device)",
    "T": "stopped",
    "t": "stopped by a debugger",
    "Z": "zombie",
    "X": "dead",
}

# Kernel wait functions (wchan) and what a person would call them.
_WCHAN_WORDS = (
    ("nanosleep", "sleeping (time.sleep)"),
    ("futex", "a lock or condition (futex wait)"),
    ("pipe_read", "reading a pipe (a multiprocessing Queue or Pipe)"),
    ("pipe_wait", "reading a pipe (a multiprocessing Queue or Pipe)"),
    ("do_wait", "waiting for a child process (join/wait)"),
    ("wait_woken", "waiting for input (pipe or socket)"),
    ("unix_stream", "reading a socket"),
    ("sk_wait", "waiting on a socket"),
    ("poll", "polling file descriptors (select/poll)"),
    ("select", "polling file descriptors (select/poll)"),
    ("sigsuspend", "waiting for a signal"),
    ("sigtimedwait", "waiting for a signal"),
)

# Calls in the source line of the innermost frame, when they are C functions that block.
_CALL_WORDS = (("sleep(", "sleeping (time.sleep)"),)

# Python frames (file ending, function) and what the process waits in when they are innermost.
_FRAME_WORDS = (
    ("multiprocessing/synchronize.py", "", "a multiprocessing lock, semaphore or condition"),
    ("multiprocessing/queues.py", "get", "a multiprocessing Queue (get)"),
    ("multiprocessing/queues.py", "put", "a multiprocessing Queue (put, queue full)"),
    ("multiprocessing/connection.py", "", "a multiprocessing Pipe or Connection (recv/poll)"),
    ("multiprocessing/popen_fork.py", "", "joining a child process"),
    ("multiprocessing/process.py", "join", "joining a child process"),
    ("multiprocessing/pool.py", "", "a multiprocessing pool"),
    ("concurrent/futures/_base.py", "", "a future's result (concurrent.futures)"),
    ("threading.py", "", "a threading lock, event or join"),
    ("queue.py", "get", "a queue.Queue (get)"),
)

#: The loops of a pool's workers (file ending, function): one that waits in its task queue's
#: ``get()`` right below the loop is between tasks, idle, not stuck in one.
_WORKER_LOOPS = (
    ("multiprocessing/pool.py", "worker"),
    ("concurrent/futures/process.py", "_process_worker"),
)
_TASK_QUEUE_GET = ("multiprocessing/queues.py", "get")

#: What an idle worker of a pool waits in (:attr:`Stack.waiting_in`).
IDLE_WORKER = "its pool's task queue (an idle worker, waiting for a task)"


#: Frames (file ending, function) anywhere in the main thread's stack that show a classic pitfall
#: of multiprocessing (the programming guidelines of its documentation): what the child waits in,
#: and the explanation for the report.
_PITFALLS = (
    (
        "multiprocessing/queues.py",
        "_finalize_join",
        "the end of its Queue's feeder thread: what it put on a multiprocessing Queue was not "
        "all read",
        "the join deadlock: a process that put data on a multiprocessing Queue cannot end until "
        "that data is read (its feeder thread is still writing it to the pipe), so joining it "
        "first waits for ever. Read the queue (get()) before join(); or, if losing the data is "
        "fine, call cancel_join_thread() on the queue in the child.",
    ),
)


@dataclass
class Stack:
    """What could be learned of one process."""

    text: str | None
    """Its threads' Python stacks, most recent call last; ``None`` if they could not be read."""
    waiting_in: str | None
    """What it seems to wait in, in words (``None`` when running or unknown)."""
    pyspy_tried: bool = False
    pitfall: str | None = None
    """A classic pitfall of multiprocessing that the stack shows, explained."""

    @property
    def idle(self) -> bool:
        """Whether it is a pool's worker waiting for its next task (not running one)."""
        return self.waiting_in == IDLE_WORKER


def _trim(frames: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Leave out how the child came to run (pytest's frames inherited by fork, the start-up).

    ``frames`` are outermost first; what follows multiprocessing's ``_bootstrap``, the plugin's
    own ``run``, or (in a child of ``os.fork``, a copy of the pytest process) pytest's call of the
    test function or fixture is the child's own code.
    """
    start = 0
    for index, (filename, _, qualname) in enumerate(frames):
        func = qualname.rpartition(".")[2]  # py-spy names methods Class.method
        if (
            (func == "_bootstrap" and filename.endswith("multiprocessing/process.py"))
            or (func == "run" and filename.endswith("pytest_mpcheck/fixtures/spawn.py"))
            or (func == "pytest_pyfunc_call" and filename.endswith("_pytest/python.py"))
            or (func == "call_fixture_func" and filename.endswith("_pytest/fixtures.py"))
        ):
            start = index + 1
    # When nothing follows (the target is a C function, such as time.sleep), the last frame of
    # the start-up shows the call: better than the whole copy of pytest's stack before it.
    return frames[start:] if start < len(frames) else frames[start - 1 :]


def _frame_line(filename: str, lineno: int, func: str) -> str:
    line = linecache.getline(filename, lineno).strip()
    text = f'  File "{filename}", line {lineno}, in {func}'
    return f"{text}\n    {line}" if line else text


_Frames = list[tuple[str, int, str]]


def _blocks(
    dump: str, thread: str, head: Callable[[re.Match[str]], str], frame: str
) -> list[tuple[str, _Frames]]:
    """A dump's threads, each as its heading and its frames (as the dump lists them);
    ``thread`` and ``frame`` are the patterns of their lines."""
    blocks: list[tuple[str, _Frames]] = []
    thread_line, frame_line = _pattern(thread), _pattern(frame)
    for raw in dump.splitlines():
        found = thread_line.match(raw)
        if found:
            blocks.append((head(found), []))
            continue
        found = frame_line.match(raw)
        if found and blocks:
            blocks[-1][1].append(
                (found.group("file"), int(found.group("line")), found.group("func"))
            )
    return blocks


#: The plugin's own frames inside a child's code, left out of its stack: a pool worker's task
#: note wraps its queue's receive (``watch/tasknotes.py``).
_HIDDEN_FRAMES = ("pytest_mpcheck/watch/tasknotes.py",)


def _as_traceback(blocks: list[tuple[str, _Frames]]) -> str:
    """Threads as traceback text; each one's frames are given innermost first."""
    out = []
    for head, frames in blocks:
        out.append(f"{head}, most recent call last:")
        shown = [frame for frame in _trim(frames[::-1]) if not frame[0].endswith(_HIDDEN_FRAMES)]
        out.extend(_frame_line(*frame) for frame in shown)
    return "\n".join(out)


def _faulthandler_head(thread: re.Match[str]) -> str:
    head = thread.group("head")
    if head.startswith("Current"):
        return head.replace("Current thread", "Thread") + " (main thread)"
    return head


def _from_faulthandler(dump: str) -> str:
    """faulthandler's dump (most recent call first) as traceback text (most recent call last)."""
    blocks = _blocks(dump, _FAULTHANDLER_THREAD, _faulthandler_head, _FAULTHANDLER_FRAME)
    if not blocks:
        return dump.strip()
    # The main thread (the one that took the signal) first: it is the one a person looks for.
    blocks.sort(key=lambda block: not block[0].endswith("(main thread)"))
    return _as_traceback(blocks)


#: The first line faulthandler writes for a crash (a segmentation fault, an abort...).
_FATAL_ERROR = r"^Fatal Python error: (?P<what>.+?)\s*$"
#: Lines of faulthandler's crash report besides its thread headings and frames.
_FATAL_ERROR_EXTRAS = ("Extension modules:", "Stack (most recent call first)", "<no Python frame>")


def _crash_head(thread: re.Match[str]) -> str:
    head = thread.group("head")
    if head.startswith("Current"):
        return head.replace("Current thread", "Thread") + " (the thread that crashed)"
    return head


def fatal_errors(captured: str) -> list[tuple[str, str]]:
    """The crash reports that faulthandler wrote into ``captured`` (a child's standard error,
    as pytest captured it): ``(what, traceback)`` each, the crashed thread first, most recent
    call last. Other output around them is left out."""
    found: list[tuple[str, str]] = []
    lines = captured.splitlines()
    fatal_error, thread_heading = _pattern(_FATAL_ERROR), _pattern(_FAULTHANDLER_THREAD)
    index = 0
    while index < len(lines):
        head = fatal_error.match(lines[index])
        index += 1
        if head is None:
            continue
        report: list[str] = []
        while index < len(lines) and not fatal_error.match(lines[index]):
            line = lines[index]
            if line.strip() and not (
                line[0].isspace()
                or thread_heading.match(line)
                or line.startswith(_FATAL_ERROR_EXTRAS)
            ):
                break  # the report ended: what follows is other output
            report.append(line)
            index += 1
        blocks = _blocks("\n".join(report), _FAULTHANDLER_THREAD, _crash_head, _FAULTHANDLER_FRAME)
        blocks.sort(key=lambda block: not block[0].endswith("(the thread that crashed)"))
        text = _as_traceback(blocks) if blocks else "(no Python frame)"
        found.append((head.group("what"), text))
    return found


def _pyspy_head(thread: re.Match[str]) -> str:
    name = thread.group("name")
    label = f"Thread {thread.group('tid')}" + (f" {name!r}" if name else "")
    return f"{label} ({thread.group('state')})"


def _from_pyspy(dump: str) -> str:
    """``py-spy dump`` output as traceback text (most recent call last)."""
    blocks = _blocks(dump, _PYSPY_THREAD, _pyspy_head, _PYSPY_FRAME)
    return _as_traceback(blocks) if blocks else dump.strip()


def _same(pid: int, created: float | None) -> bool:
    return created is not None and procfs.is_same_process(pid, created)


def is_prepared(pid: int) -> bool:
    """Whether ``pid`` catches the stack signal: prepared, so the signal will not kill it."""
    return STACK_SIGNAL in procfs.caught_signals(pid)


def stack_file_of(pid: int) -> str | None:
    """The stack file that ``pid`` has open (see :mod:`pytest_mpcheck._os.stackfile`), if any.

    A child answers the stack signal into the one stack file it holds open: the session's, or
    the one of the test whose fixture started it. Found among its descriptors, so that the
    signal is only sent to a child that will write where the reader looks.
    """
    directory = f"/proc/{pid}/fd"
    try:
        descriptors = os.listdir(directory)
    except OSError:
        return None
    for descriptor in descriptors:
        try:
            target = os.readlink(os.path.join(directory, descriptor))
        except OSError:
            continue
        if os.path.basename(target) == STACKS_NAME and os.path.basename(
            os.path.dirname(target)
        ).startswith(scratch.PREFIX):
            return target
    return None


def dump_prepared(
    pids: Iterable[int], timeout: float, stack_file: str | None = None
) -> dict[int, str]:
    """The stacks of the prepared children among ``pids``, asked one at a time.

    A child that holds a stack file open (a fixture's, with ``faulthandler``) writes there; any
    other prepared child writes to ``stack_file``, the session's, opening it only to write.
    Children share a file: each dump is what the file grew by after the signal, once it stopped
    growing (faulthandler writes a dump in many small writes).
    """
    deadline = time.monotonic() + timeout
    found: dict[int, str] = {}
    ours = procfs.descendants(os.getpid())  # read once for the round, as terminate does
    taken = _taken_by_others(stack_file)
    for pid in pids:
        if time.monotonic() >= deadline:
            break
        created = procfs.create_time(pid)
        if created is None or not is_prepared(pid):
            continue
        if (pid, procfs.ticks_of(created)) in taken or (pid, None) in taken:
            continue  # its handler is not the plugin's: the signal would run someone's code
        path = stack_file_of(pid) or stack_file
        if path is None:
            continue
        try:
            before = os.stat(path).st_size
            # The signal goes only to the process that was found prepared, and only to a
            # descendant of this one: not to a newcomer that the pid was given to meanwhile.
            if pid not in ours or not _same(pid, created):
                continue
            os.kill(pid, STACK_SIGNAL)
        except OSError:
            continue
        last = before
        while time.monotonic() < deadline:
            time.sleep(0.01)
            try:
                size = os.stat(path).st_size
            except OSError:
                break
            if size > before and size == last:
                with open(path, "rb") as dump:
                    dump.seek(before)
                    text = dump.read(size - before).decode("utf-8", "replace")
                mine = dump_of(pid, text)
                if mine is not None:
                    found[pid] = _from_faulthandler(mine)
                    break
                before = size  # only other children's late answers: wait for this one's
            last = size
    return found


def _taken_by_others(stack_file: str | None) -> set[tuple[int, int | None]]:
    """The children, ``(pid, start in clock ticks)``, that found the stack signal handled by
    code of their own and left it so (see :func:`pytest_mpcheck._os.stackfile._taken`)."""
    if stack_file is None:
        return set()
    try:
        with open(os.path.join(os.path.dirname(stack_file), TAKEN_NAME)) as log:
            lines = log.read().splitlines()
    except OSError:
        return set()
    taken: set[tuple[int, int | None]] = set()
    for line in lines:
        pid, _, start = line.partition("\t")
        if pid.isdigit():
            taken.add((int(pid), int(start) if start.isdigit() else None))
    return taken


def dump_of(pid: int, grown: str) -> str | None:
    """What ``pid`` wrote among ``grown``, what a stack file grew by after ``pid`` was asked.

    A dump written by the Python handler begins with its writer's pid (see
    :data:`~pytest_mpcheck._os.stackfile.DUMP_OF_PID`): another child that answers a signal of
    earlier (it was stuck in C code, or its real-time signals queued) is told apart, and the last
    of ``pid``'s own dumps is taken. ``faulthandler``'s dumps (a fixture's child, which writes to
    a file of its own) carry no pid and are taken whole. ``None`` when no dump is ``pid``'s.
    """
    parts = _pattern(_DUMP_HEADING).split(grown)
    if len(parts) == 1:
        return grown  # no heading: faulthandler's
    # [before the first heading, pid, its dump, pid, its dump, ...]
    writers, dumps = parts[1::2], parts[2::2]
    mine = [dump for writer, dump in zip(writers, dumps, strict=True) if int(writer) == pid]
    return mine[-1] if mine else None


def own_stacks(start: Callable[[FrameType], bool]) -> str | None:
    """The stacks of this process's threads that are in a frame for which ``start`` is true,
    as traceback text (most recent call last); ``None`` when no thread is.

    For the pytest process itself, which needs no signal to be read (``sys._current_frames()``).
    Each thread's stack is shown from that frame out: what runs inside it (the reader itself,
    when it is that thread, called from a signal handler) is left out.
    """
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    main = threading.main_thread().ident
    blocks: list[tuple[str, _Frames]] = []
    for ident, innermost in sys._current_frames().items():
        frame: FrameType | None = innermost
        while frame is not None and not start(frame):
            frame = frame.f_back
        if frame is None:
            continue
        frames: _Frames = []
        while frame is not None:
            frames.append((frame.f_code.co_filename, frame.f_lineno or 0, frame.f_code.co_name))
            frame = frame.f_back
        head = f"Thread 0x{ident:016x}"
        if ident in names:
            head += f" {names[ident]!r}"
        blocks.append((head + (" (main thread)" if ident == main else ""), frames))
    blocks.sort(key=lambda block: not block[0].endswith("(main thread)"))
    return _as_traceback(blocks) if blocks else None


def pyspy_path() -> str | None:
    """Where py-spy is: on ``PATH``, or beside the running Python (a virtual environment)."""
    found = shutil.which("py-spy")
    if found is None:
        beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
        found = beside if os.access(beside, os.X_OK) else None
    return found


def pyspy_stack(pid: int, timeout: float) -> str | None:
    """``py-spy dump`` of ``pid`` as traceback text; ``None`` if there is no py-spy or it failed."""
    pyspy = pyspy_path()
    if pyspy is None or timeout <= 0:
        return None
    callsite.PLUGIN_PROGRAM.running = True  # not a process of the test (see origins)
    try:
        done = subprocess.run(
            [pyspy, "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        callsite.PLUGIN_PROGRAM.running = False
    if done.returncode != 0 or "Thread" not in done.stdout:
        return None
    return _from_pyspy(done.stdout)


def kernel_state(pid: int) -> tuple[str | None, str | None]:
    """The state in words and the kernel function the process waits in (``wchan``)."""
    state = procfs.state(pid)
    return (_STATES.get(state, state) if state else None), procfs.wchan(pid)


#: A frame of a stack: its file, its function, and its source line ("" when none is shown).
_Frame = tuple[str, str, str]


def _main_thread_frames(stack: str | None) -> list[_Frame]:
    """The frames of the first thread block (the main thread), outermost first."""
    frames: list[_Frame] = []
    frame_line = _pattern(_TRACEBACK_FRAME)
    for line in (stack or "").splitlines()[1:]:
        if line.startswith("Thread"):
            break
        frame = frame_line.match(line)
        if frame:
            frames.append((frame.group(1), frame.group(2), ""))
        elif frames:
            frames[-1] = (frames[-1][0], frames[-1][1], line.strip())
    return frames


def pitfall(stack: str | None) -> tuple[str, str] | None:
    """What the process waits in and the explanation, when its stack shows a classic pitfall."""
    return _pitfall_in(_main_thread_frames(stack))


def _pitfall_in(frames: list[_Frame]) -> tuple[str, str] | None:
    for ending, function, words, explanation in _PITFALLS:
        if any(f.endswith(ending) and func.rpartition(".")[2] == function for f, func, _ in frames):
            return words, explanation
    return None


def waiting_in(stack: str | None, wchan: str | None) -> str | None:
    """What the process seems to wait in, from its innermost Python frame and the kernel."""
    return _waiting_in(_main_thread_frames(stack), wchan)


def _waiting_in(frames: list[_Frame], wchan: str | None) -> str | None:
    found = _pitfall_in(frames)
    if found is not None:
        return found[0]
    if _is_idle_worker(frames):
        return IDLE_WORKER
    if frames:
        # The last frame of the main thread is the innermost.
        filename, func, source = frames[-1]
        for ending, function, words in _FRAME_WORDS:
            if filename.endswith(ending) and (not function or function == func):
                return words
        # A C function called from the innermost frame: its source line names it (the kernel
        # function behind time.sleep differs between Python versions).
        for call, words in _CALL_WORDS:
            if call in source:
                return f"{words} [kernel: {wchan}]" if wchan else words
    if wchan:
        for fragment, words in _WCHAN_WORDS:
            if fragment in wchan:
                return f"{words} [kernel: {wchan}]"
        return f"the kernel function {wchan}"
    return None


def _is_idle_worker(frames: list[_Frame]) -> bool:
    """Whether the frames (outermost first) are a pool worker's loop waiting for a task: the
    innermost loop frame calls its task queue's ``get()``, not the task."""
    names = [(filename, func.rpartition(".")[2]) for filename, func, _ in frames]  # Class.f
    for index in range(len(names) - 1, -1, -1):
        filename, func = names[index]
        if any(filename.endswith(end) and func == loop for end, loop in _WORKER_LOOPS):
            if index + 1 >= len(names):
                return False
            filename, func = names[index + 1]
            return filename.endswith(_TASK_QUEUE_GET[0]) and func == _TASK_QUEUE_GET[1]
    return False


def stacks_of(
    pids: Iterable[int],
    timeout: float = 2.0,
    pyspy: bool = True,
    stack_file: str | None = None,
) -> dict[int, Stack]:
    """The stacks of several processes: prepared children asked first (``stack_file``: the
    session's, see :func:`dump_prepared`), then py-spy, then /proc."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    # What the kernel says, before the stack signal or py-spy's ptrace wakes the process: just
    # after either, it runs again for a moment (on a loaded machine, long enough to be read as
    # running, which hid what it waits in).
    kernel = {pid: kernel_state(pid) for pid in pids}
    dumps = dump_prepared(pids, min(1.0 * max(1, len(pids)), timeout), stack_file)
    result: dict[int, Stack] = {}
    for pid in pids:
        text = dumps.get(pid)
        tried = False
        if text is None and pyspy:
            # Once the time is spent, py-spy is not run: the report says there was no time,
            # not that py-spy could not attach.
            left = min(5.0, deadline - time.monotonic())
            tried = left > 0
            if tried:
                text = pyspy_stack(pid, left)
        state, wchan = kernel[pid]
        frames = _main_thread_frames(text)
        words = _waiting_in(frames, wchan) if state != "running" else None
        found = _pitfall_in(frames)
        result[pid] = Stack(
            text=text,
            waiting_in=words,
            pyspy_tried=tried,
            pitfall=found[1] if found is not None else None,
        )
    return result


def describe_wait(stack: Stack, pid: int) -> list[str]:
    """Detail lines for a report: what it waits in, or why there is no stack."""
    lines = []
    if stack.waiting_in:
        lines.append(f"waiting in: {stack.waiting_in}")
    if stack.pitfall:
        lines.append(f"pitfall:    {stack.pitfall}")
    if stack.text is None:
        state, wchan = kernel_state(pid)
        if pyspy_path() is None:
            how = "py-spy is not installed"
        elif stack.pyspy_tried:
            how = "py-spy could not attach"
        else:
            how = "there was no time for py-spy"
        lines.append(
            "no Python stack: it does not answer the stack signal (the children that pytest "
            f"starts through multiprocessing or os.fork do), and {how}; "
            f"kernel state: {state or 'unknown'}" + (f", waiting in {wchan}" if wchan else "")
        )
    return lines
