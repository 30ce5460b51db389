"""Where a prepared child writes its stacks, and the signal that asks it to.

Shared by the child side (every child the pytest process starts through ``multiprocessing`` or
``os.fork``, and :mod:`pytest_mpcheck.fixtures.bootstrap`: this module must stay cheap to import in
every child) and the reading side (:mod:`pytest_mpcheck._os.stacks`).

A child answers the signal with the stacks of all its threads, whatever it is doing (blocked in a
lock, a pipe, ``time.sleep``); no ptrace, no py-spy. A fixture's child answers with
``faulthandler`` into its test's stack file, held open (:func:`answer_stack_signal`); every other
child with a Python handler that opens the session's file only to write
(:func:`answer_without_descriptor`). The reader finds a fixture child's file among its open
descriptors (``/proc/PID/fd``), and uses the session's for the others.
"""

from __future__ import annotations

# signal's C half (no stub): ``signal.signal`` and ``signal.getsignal`` turn each handler into a
# member of an enum, or try to and catch the failure; in a forked child, which runs this before
# its own code, every object that touches lies on a page the kernel copies for it.
import _signal  # type: ignore[import-not-found,unused-ignore]
import atexit
import contextlib
import faulthandler
import os
import signal

from pytest_mpcheck._os import scratch

TYPE_CHECKING = False  # not typing's: every prepared child imports this module
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

#: The signal on which a prepared child writes the stacks of all its threads to its stack file.
#: A real-time signal, because user code rarely uses them (SIGUSR1 is a common choice of its own).
STACK_SIGNAL: int = int(signal.SIGRTMIN) + 3 if hasattr(signal, "SIGRTMIN") else int(signal.SIGUSR1)

#: The name of a stack file. The fixtures' children write to one in their test's work directory;
#: every other child to the session's, in a scratch directory of its own.
STACKS_NAME = "stacks.log"


def stack_path(workdir: str) -> str:
    """The file prepared children write their stacks to."""
    return os.path.join(workdir, STACKS_NAME)


#: Beside a stack file: the children that found the stack signal taken by a handler of their
#: own (``pid<TAB>start``, see :func:`_taken`); the reader never sends it to them.
TAKEN_NAME = "stack-signal-taken.log"


def _taken(path: str) -> bool:
    """Whether the stack signal already has a handler or is ignored here (the user's code, a
    library, or inherited from the parent by a fork): then it is not the plugin's to take, and
    this child notes so beside ``path``, so that the reader never sends it. The plugin's own
    handler, inherited from a prepared parent, is no one else's. Costs a child that finds the
    signal free one call in C."""
    current = _signal.getsignal(STACK_SIGNAL)
    if current is _dump_stacks or current == _signal.SIG_DFL:
        return False
    from pytest_mpcheck._os.procfs import start_ticks  # only now: seldom needed

    pid = os.getpid()
    start = start_ticks(pid)
    line = f"{pid}\t{'' if start is None else start}\n"
    # Seldom written: made by the first child that needs it.
    scratch.append(os.path.join(os.path.dirname(path), TAKEN_NAME), line.encode(), create=True)
    return True


def answer_stack_signal(path: str) -> None:
    """Child side (a fixture's child): from now on, ``faulthandler`` writes the stacks of all
    threads to ``path`` on the signal, from C, even while a thread holds the GIL. The descriptor
    stays open for the child's life: the reader finds the file among the child's descriptors.
    Nothing, when the signal is taken already (see :func:`_taken`)."""
    if _taken(path):
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        faulthandler.register(STACK_SIGNAL, file=fd, all_threads=True, chain=False)
    except BaseException:
        os.close(fd)
        raise
    _stop_answering_at_exit()


def answer_quietly(path: str) -> None:
    """:func:`answer_stack_signal`, where a failure must cost the child nothing: it then simply
    has no stack to give (the reader falls back to py-spy or what the kernel says)."""
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        answer_stack_signal(path)


def answer_without_descriptor(path: str) -> None:
    """Child side: from now on, append the stacks of all threads to ``path`` on the signal,
    with no descriptor held open in between.

    For the children that the plugin did not start itself: a child holds exactly the descriptors
    its code opened (tests that count a child's open files, as loky's do, see nothing of the
    plugin's). The handler is Python's, so it runs when the main thread next runs Python code,
    which a blocked lock, pipe, queue or sleep lets it do at once (PEP 475); a thread stuck in C
    code that holds the GIL gives no stack, where ``faulthandler`` (:func:`answer_stack_signal`,
    the fixtures' children) would. The dump has ``faulthandler``'s format: one reader parses both.

    The handler is this module's function and the path a global of it, not a closure made per
    child: a fork child runs this before its own code, and every object it makes or touches is
    a page the kernel copies for it.
    """
    global _answer_path
    if _taken(path):
        return
    _answer_path = path
    _signal.signal(STACK_SIGNAL, _dump_stacks)
    _stop_answering_at_exit()


#: The pid of the process that registered :func:`_stop_answering` with ``atexit`` (a fork child
#: inherits the registration, and the value, from a parent that answered too).
_stops_at_exit: int | None = None


def _stop_answering_at_exit() -> None:
    """Have this process ignore the stack signal once it starts to exit.

    A process that leaves through ``sys.exit`` or the end of its main module (a spawned child
    does) tears its interpreter down after its ``atexit`` functions: it resets the Python signal
    handlers to the default action, which for a real-time signal ends the process, and it frees
    the thread states that ``faulthandler`` walks. The stack signal arriving then (the parent
    asks whether a pool's worker is busy, just as the worker leaves) killed the child by that
    signal, or by a segmentation fault. Registered before the child's own code runs, this runs
    after the ``atexit`` functions that code registers: stacks are still given while they run.
    """
    global _stops_at_exit
    pid = os.getpid()
    if _stops_at_exit == pid:
        return
    _stops_at_exit = pid
    atexit.register(_stop_answering)


def _stop_answering() -> None:
    # faulthandler's first: unregistered later (its own shutdown, after the signal module's) it
    # would put back the handler it replaced, over the one set here.
    with contextlib.suppress(Exception):
        faulthandler.unregister(STACK_SIGNAL)
    with contextlib.suppress(Exception):
        _signal.signal(STACK_SIGNAL, _signal.SIG_IGN)


def c_handler(handler: Any) -> Any:
    """``handler`` (what ``signal.signal`` returned, ``None`` for a handler not set from Python)
    as :func:`set_signal_handler` takes it: ``_signal``'s own ``SIG_DFL`` and ``SIG_IGN`` objects,
    which it compares by identity, for the numbers and ``signal``'s enum members."""
    if handler is None or handler is _signal.SIG_DFL:
        return _signal.SIG_DFL
    if isinstance(handler, int):
        return _signal.SIG_IGN if handler == _signal.SIG_IGN else _signal.SIG_DFL
    return handler


def set_signal_handler(signum: int, handler: Any, only_from: Any = None) -> None:
    """``signal.signal(signum, handler)``, at the cost of two calls in C, for a ``handler`` that
    :func:`c_handler` gave; with ``only_from``, only while the handler is that object. Raises
    ``ValueError`` as ``signal.signal`` does (not the main thread).

    For the code a forked child runs before its own: see the import of ``_signal`` above.
    """
    if only_from is None or _signal.getsignal(signum) is only_from:
        _signal.signal(signum, handler)


#: Where :func:`_dump_stacks` writes, in a child that :func:`answer_without_descriptor` prepared.
_answer_path: str | None = None


#: The first line of a dump that :func:`_dump_stacks` writes, followed by the writer's pid.
#: Children share the session's file, and a child may answer late (a thread stuck in C code that
#: holds the GIL runs no Python handler until it returns; real-time signals queue): the reader
#: takes only the dump of the process it asked.
DUMP_OF_PID = "Stacks of process "


def _dump_stacks(signum: int, frame: FrameType | None) -> None:
    path = _answer_path
    if path is None:
        return
    with contextlib.suppress(Exception):  # a stack we cannot give must not disturb the child
        dump = f"{DUMP_OF_PID}{os.getpid()}\n{_all_stacks(frame)}"
        scratch.append(path, dump.encode("utf-8", "replace"))  # one write: dumps never mix


def _all_stacks(interrupted: FrameType | None) -> str:
    """Every thread's stack in ``faulthandler``'s format, this thread's from ``interrupted``."""
    import sys
    import threading

    current = threading.get_ident()
    frames: dict[int, FrameType | None] = dict(sys._current_frames())
    frames[current] = interrupted  # not the handler's own frame
    lines = []
    for ident in [current, *(i for i in frames if i != current)]:
        head = "Current thread" if ident == current else "Thread"
        lines.append(f"{head} 0x{ident:016x} (most recent call first):")
        frame: FrameType | None = frames[ident]
        while frame is not None:
            code = frame.f_code
            lines.append(f'  File "{code.co_filename}", line {frame.f_lineno} in {code.co_name}')
            frame = frame.f_back
        lines.append("")
    return "\n".join(lines) + "\n"


def answer_quietly_without_descriptor(path: str) -> None:
    """:func:`answer_without_descriptor`, where a failure must cost the child nothing."""
    try:  # noqa: SIM105 (not contextlib.suppress: see childsetup.prepare, run in every child)
        answer_without_descriptor(path)
    except (OSError, RuntimeError, ValueError):
        pass
