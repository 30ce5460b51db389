"""Where a prepared child writes its stacks, and the signal that asks it to.

Shared by the child side (every child the pytest process starts through ``multiprocessing`` or
``os.fork``, and :mod:`pytest_mpcheck.fixtures.bootstrap`: this module must stay cheap to import in
every child) and the reading side (:mod:`pytest_mpcheck._os.stacks`).

A child answers the signal with ``faulthandler``: the stacks of all its threads, written by the
interpreter itself from the signal handler, whatever the child is doing (blocked in a lock, a
pipe, ``time.sleep``). No ptrace, no py-spy. The reader finds the file a child writes to among the
child's open descriptors (``/proc/PID/fd``), so that one file can serve many children and a child
of a fixture can write to the file of its test.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal

#: The signal on which a prepared child writes the stacks of all its threads to its stack file.
#: A real-time signal, because user code rarely uses them (SIGUSR1 is a common choice of its own).
STACK_SIGNAL: int = int(signal.SIGRTMIN) + 3 if hasattr(signal, "SIGRTMIN") else int(signal.SIGUSR1)

#: The name of a stack file. The fixtures' children write to one in their test's work directory;
#: every other child to the session's, in a scratch directory of its own.
STACKS_NAME = "stacks.log"

_answering_fd: int | None = None
"""The descriptor this process's stacks go to, once it answers the signal."""


def stack_path(workdir: str) -> str:
    """The file prepared children write their stacks to."""
    return os.path.join(workdir, STACKS_NAME)


def answer_stack_signal(path: str) -> None:
    """Child side: from now on, write the stacks of all threads to ``path`` on the signal.

    Called again (a fixture's child, first prepared for the session's file, then for its test's),
    the new file replaces the old one, whose descriptor is closed: a child has only one stack file
    open, and the reader knows which file to read by finding it among the child's descriptors.
    """
    global _answering_fd
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        faulthandler.register(STACK_SIGNAL, file=fd, all_threads=True, chain=False)
    except BaseException:
        os.close(fd)
        raise
    previous, _answering_fd = _answering_fd, fd
    if previous is not None and previous != fd:
        with contextlib.suppress(OSError):
            os.close(previous)


def answer_quietly(path: str) -> None:
    """:func:`answer_stack_signal`, where a failure must cost the child nothing: it then simply
    has no stack to give (the reader falls back to py-spy or what the kernel says)."""
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        answer_stack_signal(path)


def crash_path(directory: str, pid: int) -> str:
    """The file where child ``pid`` writes its Python traceback if it dies of a fatal signal."""
    return os.path.join(directory, f"crash-{pid}.log")


def record_crashes(directory: str) -> None:
    """Child side: on a fatal signal (SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL), write the
    Python traceback of all threads to this child's crash file.

    Only where ``faulthandler`` is off: a child that has it on already (a fork of the pytest
    process, whose faulthandler plugin turned it on) writes its traceback where it was told to,
    and that stays as it is.
    """
    if faulthandler.is_enabled():
        return
    fd = os.open(
        crash_path(directory, os.getpid()),
        os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
        0o600,
    )
    try:
        faulthandler.enable(file=fd, all_threads=True)
    except BaseException:
        os.close(fd)
        raise
