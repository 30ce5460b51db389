"""What runs first in every child the fixtures start, before the user's code.

:func:`prepare_child` makes the child die with the pytest process (Linux ``PR_SET_PDEATHSIG``),
lets the parent ask it for its Python stack at any time (``faulthandler`` on a signal, writing to a
per-child file), and routes its stdout and stderr through the test's output log
(:mod:`pytest_mpcheck.output`). It works alike under fork, spawn and forkserver: everything it needs
travels in a small picklable :class:`ChildSpec`.

Extension point: checks inside the child
    :data:`CHILD_CHECKS` holds ``"module:function"`` names of checks that run inside each child
    started by ``mp_spawn``, after its target was unpickled and before it runs. Each function is
    called as ``check(target, args, kwargs)`` and returns an iterable of messages (empty when all is
    well). The messages travel back to the parent with the result and fail the test at teardown
    (they are also in ``TrackedProcess.check_messages``). Names rather than functions are kept, so
    that a spawned child, which starts from a fresh interpreter, can import them. Add one with
    :func:`register_child_check` in the pytest process, before the child starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import faulthandler
import importlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_mpcheck import output

#: The signal on which a prepared child writes the stacks of all its threads to its stack file.
#: A real-time signal, because user code rarely uses them (SIGUSR1 is a common choice of its own).
STACK_SIGNAL: int = int(signal.SIGRTMIN) + 3 if hasattr(signal, "SIGRTMIN") else int(signal.SIGUSR1)

#: The signal the kernel sends a prepared child when the pytest process dies.
DEATH_SIGNAL = signal.SIGKILL

_PR_SET_PDEATHSIG = 1

CHILD_CHECKS: list[str] = []
"""``"module:function"`` names of checks run inside each ``mp_spawn`` child; see the docstring."""


def register_child_check(name: str) -> None:
    """Add a check (``"module:function"``) to run in each ``mp_spawn`` child before its target."""
    if ":" not in name:
        raise ValueError(f"{name!r} is not a 'module:function' name")
    if name not in CHILD_CHECKS:
        CHILD_CHECKS.append(name)


@dataclass(frozen=True)
class ChildSpec:
    """What a child needs to know to prepare itself; pickled with the process or initializer."""

    workdir: str
    """The test's work directory: output log, stack files, results."""
    session_pid: int
    """The pid of the pytest process the child must die with."""
    checks: tuple[str, ...] = ()
    resource_log: str | None = None
    """The session's resource log: the child notes its named semaphores and shared memory."""


#: The file, in a test's work directory, that prepared children write their stacks to. The parent
#: creates it (creating a file costs more than opening one) and asks one child at a time.
STACKS_NAME = "stacks.log"
#: The file children append their results to (see :func:`write_result`).
RESULTS_NAME = "results.bin"
_RESULT_MAGIC = b"MPR1"
#: Results larger than this go to a file of their own: one write of a regular file is appended
#: whole, but a signal could cut a long one short, and another child's record would follow.
_RESULT_INLINE = 60_000


def stack_path(workdir: str) -> str:
    """The file prepared children write their stacks to."""
    return os.path.join(workdir, STACKS_NAME)


def create_files(workdir: str) -> None:
    """Create the shared files of a test's work directory (parent side)."""
    for name in (STACKS_NAME, RESULTS_NAME, output.LOG_NAME):
        os.close(os.open(os.path.join(workdir, name), os.O_WRONLY | os.O_CREAT, 0o600))


def write_result(workdir: str, token: str, data: bytes) -> None:
    """Append a child's pickled result, as one record, to the results file (child side).

    When the work directory has no room for it (a full ``/dev/shm``), the result goes to a file
    of its own in the spill directory instead (:func:`read_spilled_result`): the plugin's lack of
    room must not become the child's error.
    """
    try:
        if len(data) > _RESULT_INLINE:
            _write_file(os.path.join(workdir, f"result-{token}.pickle"), data)
            data, inline = b"", b"F"
        elif _free(workdir) < len(data) + _ROOM_MARGIN:
            # A write that finds less room than it needs is cut short, not refused: a partial
            # record would hide the records that follow it.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), workdir)
        else:
            inline = b"I"
        record = (
            _RESULT_MAGIC + token.encode("ascii") + inline + len(data).to_bytes(8, "big") + data
        )
        fd = os.open(
            os.path.join(workdir, RESULTS_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
        )
        try:
            os.write(fd, record)
        finally:
            os.close(fd)
    except OSError as error:
        if error.errno not in _NO_ROOM:
            raise
        from pytest_mpcheck import scratch

        spill = scratch.spill_directory(workdir, create=True)
        if spill is None:
            raise
        path = os.path.join(spill, f"result-{token}.pickle")
        _write_file(path + ".part", data)
        os.rename(path + ".part", path)  # whole, or not there


_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})
_ROOM_MARGIN = 1 << 16


def _free(directory: str) -> int:
    try:
        status = os.statvfs(directory)
    except OSError:
        return 0
    return status.f_bavail * status.f_frsize


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def read_spilled_result(workdir: str, token: str) -> bytes | None:
    """The result of ``token`` that its child wrote to the spill directory, if it did."""
    from pytest_mpcheck import scratch

    spill = scratch.spill_directory(workdir)
    if spill is None:
        return None
    try:
        with open(os.path.join(spill, f"result-{token}.pickle"), "rb") as own:
            return own.read()
    except OSError:
        return None


def read_results(workdir: str, offset: int) -> tuple[dict[str, bytes], int]:
    """The complete records of the results file from ``offset``, and where the next one starts."""
    try:
        with open(os.path.join(workdir, RESULTS_NAME), "rb") as results:
            results.seek(offset)
            data = results.read()
    except OSError:
        return {}, offset
    found: dict[str, bytes] = {}
    position = 0
    header = len(_RESULT_MAGIC) + 32 + 1 + 8
    while len(data) - position >= header and data.startswith(_RESULT_MAGIC, position):
        token = data[position + 4 : position + 36].decode("ascii")
        inline = data[position + 36 : position + 37] == b"I"
        size = int.from_bytes(data[position + 37 : position + header], "big")
        if len(data) - position - header < size:
            break  # still being written
        body = data[position + header : position + header + size]
        if not inline:
            try:
                with open(os.path.join(workdir, f"result-{token}.pickle"), "rb") as own:
                    body = own.read()
            except OSError:
                body = b""
        found[token] = body
        position += header + size
    return found, offset + position


_stack_fd: int | None = None


#: Attribute of a process object: whether the main thread of pytest started it (see below).
MAIN_THREAD_ATTRIBUTE = "_mp_from_main_thread"


def mark_starter(process: object) -> None:
    """Note on a process object, before it starts, whether pytest's main thread starts it.

    The kernel sends the death signal when the *thread* that forked the child ends, not the
    process. A pool's worker handler thread starts replacement workers and ends when the pool is
    closed: their death signal would kill idle workers that hold the pool's queue lock, and hang the
    pool. Only children of the main thread, which lives as long as pytest, get one.
    """
    setattr(process, MAIN_THREAD_ATTRIBUTE, threading.current_thread() is threading.main_thread())


_prctl_function: Any = None


def _prctl() -> Any:
    """libc's ``prctl``, looked up once: a forked child inherits it ready (dlopen is slow)."""
    global _prctl_function
    if _prctl_function is None and sys.platform.startswith("linux"):
        try:
            # The symbols of the running program include libc's; find_library would run ldconfig.
            _prctl_function = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl_function = False
    return _prctl_function or None


def warm_up() -> None:
    """Do in the parent, once, what every forked child would otherwise do for itself."""
    _prctl()


def _set_death_signal(session_pid: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    if not getattr(multiprocessing.current_process(), MAIN_THREAD_ATTRIBUTE, True):
        return
    prctl = _prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0)
    # The parent may have died before the prctl: then the signal never comes. The parent is the
    # pytest process (fork, spawn) or the forkserver, whose parent is the pytest process.
    parent = os.getppid()
    if parent != session_pid:
        if _parent_of(parent) != session_pid:
            os._exit(1)
        _detach_from_forkserver()


def _detach_from_forkserver() -> None:
    """Let the forkserver end when pytest does, so that its death signal reaches this child.

    A child of the forkserver inherits the descriptor that keeps the forkserver alive while any of
    its clients lives: as long as this child runs, the forkserver would outlive pytest, and the
    child, waiting for its parent's death, would outlive both. Closing it makes the child like a
    spawned one: should it start processes by forkserver itself, it starts a forkserver of its own.
    """
    from multiprocessing import forkserver

    server: Any = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if server is None or alive is None:
        return
    with contextlib.suppress(OSError):
        os.close(alive)
    server._forkserver_alive_fd = None
    server._forkserver_address = None
    server._forkserver_pid = None


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
        return int(data[data.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _prepare_stack_dump(workdir: str) -> None:
    global _stack_fd
    # The parent asks only once the kernel shows the signal caught (see stacks.is_prepared).
    _stack_fd = os.open(stack_path(workdir), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    faulthandler.register(STACK_SIGNAL, file=_stack_fd, all_threads=True, chain=False)


def prepare_child(spec: ChildSpec) -> None:
    """Make this child die with pytest, answer stack requests, and log its output (child side)."""
    _set_death_signal(spec.session_pid)
    if spec.resource_log is not None:
        from pytest_mpcheck import resources

        resources.install_in_child(spec.resource_log)
    # Without a stack file the parent falls back to py-spy or /proc.
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        _prepare_stack_dump(spec.workdir)
    with contextlib.suppress(OSError):
        output.capture_child_output(spec.workdir)


def run_checks(
    checks: Sequence[str], target: Callable[..., Any] | None, args: Any, kwargs: Mapping[str, Any]
) -> list[str]:
    """Run the :data:`CHILD_CHECKS` named in ``checks``; their messages (child side)."""
    messages: list[str] = []
    for name in checks:
        module_name, _, function_name = name.partition(":")
        try:
            check = getattr(importlib.import_module(module_name), function_name)
            found: Iterable[str] = check(target, args, kwargs) or ()
            messages.extend(str(message) for message in found)
        except Exception as error:
            messages.append(f"child check {name} failed: {type(error).__name__}: {error}")
    return messages


def pool_worker_init(
    spec: ChildSpec, initializer: Callable[..., object] | None, initargs: Sequence[Any]
) -> None:
    """Initializer of the workers of ``mp_pool`` and ``mp_executor``; then the user's own."""
    prepare_child(spec)
    # Pool workers leave through multiprocessing's exit function: finish a partial line there.
    from multiprocessing import util

    util.Finalize(None, output.flush_child_output, exitpriority=100)
    if initializer is not None:
        initializer(*initargs)
