"""Which task a pool's or an executor's worker was running when it died.

Child side (light: a prepared child imports it only when it is the worker of a
``multiprocessing.pool.Pool`` or of a ``concurrent.futures.ProcessPoolExecutor``): the worker
maps a small file of its own in the session's stacks directory (``tasks-<pid>-<start>``, its
start in clock ticks since boot: a later worker that the kernel gives the same pid, before the
dead one's note was read, has a note of its own) and closes it
at once (:mod:`pytest_mpcheck._os.sharedmap`): it keeps a memory map of the plugin's, never a
descriptor. The receiving end of its task queue is wrapped so that each task it takes is copied
there as it arrived (its pickle, up to :data:`KEPT` bytes) and the worker marked busy; the
sending end of its result queue marks it idle again. No system call and no pickling per task: a
copy of bytes the worker received anyway, and two writes to memory. The pages belong to the
file, so what a worker wrote before a SIGKILL (the
kernel's OOM killer) is still there when its parent reads it.

Session side: :func:`read_note` reads a dead worker's file and :func:`describe` names its task
as its user knows it, ``func(args)`` and where ``func`` is defined. The pickle is read back with
:class:`_TaskUnpickler`, which rebuilds no object of ``multiprocessing`` or ``concurrent``
(a connection, a lock, shared memory would act in the pytest process when rebuilt).
"""

from __future__ import annotations

import contextlib
import os
import struct

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing costs a spawned worker 4 ms

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar

#: The name of a worker's note in the session's stacks directory: its pid, and its start in clock
#: ticks since boot (field 22 of ``/proc/<pid>/stat``).
NOTE_NAME = "tasks-%d-%d"

#: The bytes of a task's pickle a note keeps; a longer one is named by its function alone.
KEPT = 64 * 1024

#: The note's header: busy (1) or idle (0), and the length of the whole pickle.
_HEADER = struct.Struct("=II")

#: The size of a note.
NOTE_SIZE = _HEADER.size + KEPT


def worker_queues(process: Any) -> tuple[Any, Any] | None:
    """The task queue and the result queue of ``process`` when it is the worker of a ``Pool`` or
    of a ``ProcessPoolExecutor`` of the standard library, else ``None``."""
    import sys

    target = getattr(process, "_target", None)
    if target is None:
        return None
    pool = sys.modules.get("multiprocessing.pool")
    executor = sys.modules.get("concurrent.futures.process")
    if (pool is not None and target is getattr(pool, "worker", None)) or (
        executor is not None and target is getattr(executor, "_process_worker", None)
    ):
        args: tuple[Any, ...] = tuple(getattr(process, "_args", ()))
        if len(args) >= 2:
            return args[0], args[1]
    return None


def note_tasks(directory: str, tasks: Any, results: Any) -> None:
    """Child side: note in ``directory`` each task this worker takes from ``tasks`` (a
    ``SimpleQueue`` or ``Queue``), and that it is idle again when it puts to ``results``. A
    failure only costs the note."""
    with contextlib.suppress(Exception):
        from pytest_mpcheck._os.procfs import start_ticks
        from pytest_mpcheck._os.sharedmap import map_file

        pid = os.getpid()
        start = start_ticks(pid)
        note = None if start is None else map_file(note_path(directory, pid, start), NOTE_SIZE)
        if note is None:
            return
        reader = tasks._reader
        writer = results._writer
        receive: Callable[..., bytes] = reader.recv_bytes
        send: Callable[..., None] = writer.send_bytes
        header = note[: _HEADER.size].cast("I")  # busy, size: two stores, no packing
        start = _HEADER.size

        def recv_bytes(*args: Any) -> bytes:
            data = receive(*args)
            size = len(data)
            kept = size if size < KEPT else KEPT
            note[start : start + kept] = data if kept == size else data[:kept]
            header[1] = size
            header[0] = 1
            return data

        def send_bytes(*args: Any) -> None:
            header[0] = 0
            send(*args)

        reader.recv_bytes = recv_bytes
        writer.send_bytes = send_bytes
        if hasattr(tasks, "_recv_bytes"):  # a Queue binds it at its start (again after a fork)
            tasks._recv_bytes = recv_bytes


class TaskNote:
    """What a worker's note says: whether it was busy, and the pickle of its last task."""

    __slots__ = ("busy", "data", "size")

    def __init__(self, busy: bool, size: int, data: bytes) -> None:
        self.busy = busy
        self.size = size
        """The length of the whole pickle (``data`` holds at most :data:`KEPT` bytes of it)."""
        self.data = data


def note_path(directory: str, pid: int, start: int) -> str:
    """The note of the worker ``pid`` that started ``start`` clock ticks after boot."""
    return os.path.join(directory, NOTE_NAME % (pid, start))


def read_note(directory: str, pid: int, start: int) -> TaskNote | None:
    """Session side: the note of the worker ``pid`` that started at ``start`` (clock ticks since
    boot), or ``None`` (not a worker, or no task yet)."""
    try:
        with open(note_path(directory, pid, start), "rb") as file:
            head = file.read(_HEADER.size)
            if len(head) < _HEADER.size:
                return None
            busy, size = _HEADER.unpack(head)
            if size == 0:
                return None
            data = file.read(min(size, KEPT))
    except OSError:
        return None
    return TaskNote(busy == 1, size, data)


def forget_note(directory: str, pid: int, start: int) -> None:
    """Remove the note of a worker that is gone."""
    with contextlib.suppress(OSError):
        os.unlink(note_path(directory, pid, start))


class _Opaque:
    """What a task holds that is not rebuilt in the pytest process: shown by its name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


class _OpaqueMaker:
    """Stands for a function or class that is not called here; calling it gives an opaque."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: object, **kwargs: object) -> _Opaque:
        return _Opaque(self.name)

    def __repr__(self) -> str:
        return f"<{self.name}>"


#: What a task's pickle may rebuild from the modules it would otherwise not.
_TASK_PARTS = frozenset(
    {
        ("multiprocessing.pool", "mapstar"),
        ("multiprocessing.pool", "starmapstar"),
        ("concurrent.futures.process", "_CallItem"),
        ("concurrent.futures.process", "_process_chunk"),
        ("multiprocessing.reduction", "_rebuild_partial"),
    }
)
_NOT_REBUILT = ("multiprocessing", "concurrent", "_multiprocessing")

#: Modules whose classes are plain values, safe to call while rebuilding a task (a ``Decimal``,
#: a ``datetime``, a ``Path``...): no other class or function that a pickle asks to call (a
#: user's ``__reduce__`` may name ``open``) is called.
_VALUE_MODULES = frozenset(
    {"builtins", "collections", "datetime", "decimal", "fractions", "functools", "pathlib", "uuid"}
)


def _unpickle(data: bytes) -> Any:
    """A task's pickle rebuilt without side effects in the pytest process: nothing is imported,
    no object of ``multiprocessing`` or ``concurrent`` is made (a connection, a lock, shared
    memory would act here), and of the calls a pickle asks for (its ``REDUCE``), only those
    that make plain values are made; the others, and a class's own ``__setstate__``, are not
    (their objects are shown by name)."""
    import _codecs
    import copyreg
    import io
    import pickle
    import sys

    # Functions that only make plain values (protocol 2 and older pickles call them).
    plain = (getattr(copyreg, "_reconstructor", None), _codecs.encode)

    def allowed(function: object) -> bool:
        if isinstance(function, _OpaqueMaker) or any(function is f for f in plain):
            return True
        if isinstance(function, type) and function.__module__.split(".")[0] in _VALUE_MODULES:
            return True  # a value's class (a set, a Decimal, a datetime, a Path, a partial)
        enum = sys.modules.get("enum")
        return enum is not None and isinstance(function, enum.EnumMeta)  # a member by value

    # The Python unpickler, not the C one: its steps can be replaced (typeshed does not know them).
    python_unpickler: Any = pickle._Unpickler

    class TaskUnpickler(python_unpickler):  # type: ignore[misc]
        dispatch: ClassVar[dict[int, Any]] = dict(python_unpickler.dispatch)

        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in _TASK_PARTS and module.split(".")[0] in _NOT_REBUILT:
                return _OpaqueMaker(f"{module}.{name}")
            found: Any = sys.modules.get(module)  # never imported here
            for part in name.split("."):
                found = getattr(found, part, None)
            return _OpaqueMaker(f"{module}.{name}") if found is None else found

        def load_reduce(self) -> None:
            stack = self.stack
            args = stack.pop()
            function = stack[-1]
            if allowed(function) or (
                (getattr(function, "__module__", None), getattr(function, "__name__", None))
                in _TASK_PARTS
            ):
                stack[-1] = function(*args)
            else:
                name = getattr(function, "__qualname__", None) or type(function).__name__
                stack[-1] = _Opaque(f"{name}(...)")

        def load_build(self) -> None:
            instance = self.stack[-2]
            own = getattr(type(instance), "__setstate__", None)
            module = getattr(own, "__module__", None) or ""
            if own is not None and module.split(".")[0] not in _VALUE_MODULES:
                self.stack.pop()  # a class's own __setstate__ is not run here
                return
            depth = len(self.stack)
            try:
                python_unpickler.load_build(self)
            except Exception:
                del self.stack[depth - 1 :]  # the state is dropped; the object stays as it is

        dispatch[pickle.REDUCE[0]] = load_reduce
        dispatch[pickle.BUILD[0]] = load_build

    return TaskUnpickler(io.BytesIO(data)).load()


def _first_global(data: bytes) -> tuple[str, str] | None:
    """The module and name of the first function in a cut pickle that is not the pool's own
    helper."""
    import pickletools

    strings: list[str] = []
    with contextlib.suppress(Exception):
        for opcode, arg, _ in pickletools.genops(data):
            found: tuple[str, str] | None = None
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found = (strings[-2], strings[-1])
            elif opcode.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                found = (module, name)
            if found is not None and found not in _TASK_PARTS and found[0] != "functools":
                return found
    return None


def _resolved(module: str, qualname: str) -> object:
    """The object ``module.qualname`` if its module is imported already (nothing is imported
    here), else ``None``."""
    import sys

    found: object = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def _short(value: object, limit: int = 80) -> str:
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = 40
    shortener.maxlist = shortener.maxtuple = shortener.maxdict = shortener.maxset = 4
    try:
        text = shortener.repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call(func: object, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> str:
    parts = [_short(arg) for arg in args]
    parts += [f"{key}={_short(value)}" for key, value in (kwargs or {}).items()]
    return f"{_name(func)}({', '.join(parts)})"


def _name(func: object) -> str:
    return str(getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or func)


def _defined_at(func: object) -> str | None:
    code = getattr(func, "__code__", None)
    if code is None:
        return None
    filename = code.co_filename
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(filename)
        if not relative.startswith(".."):
            filename = relative
    return f"{filename}:{code.co_firstlineno}"


def _calls(func: object, items: list[Any], star: bool, kind: str) -> tuple[str, object]:
    shown = [_call(func, tuple(item) if star else (item,)) for item in items[:3]]
    if len(items) > 3:
        shown.append(f"... ({len(items)} calls)")
    return f"{', '.join(shown)} (a chunk of {kind})", func


def _task(task: Any) -> tuple[str, object] | None:
    """``(the calls, the user's function)`` of a task as its queue carried it."""
    import functools

    if isinstance(task, tuple) and len(task) == 5:  # a Pool's (job, i, func, args, kwds)
        _, _, func, args, kwargs = task
        if _name(func) in ("mapstar", "starmapstar") and len(args) == 1 and len(args[0]) == 2:
            user, items = args[0]
            kind = "a map" if _name(func) == "mapstar" else "a starmap"
            return _calls(user, list(items), _name(func) == "starmapstar", kind)
        return _call(func, tuple(args), dict(kwargs)), func
    fn = getattr(task, "fn", None)
    if fn is not None:  # an executor's _CallItem
        args, kwargs = tuple(getattr(task, "args", ())), getattr(task, "kwargs", None)
        if (
            isinstance(fn, functools.partial)
            and _name(fn.func) == "_process_chunk"
            and fn.args
            and len(args) == 1
        ):
            return _calls(fn.args[0], list(args[0]), True, "an executor's map")
        return _call(fn, args, kwargs), fn
    return None


def describe(note: TaskNote) -> str:
    """One line on the task of a dead worker, as its user knows it (see :func:`read_note`)."""
    what: tuple[str, object] | None = None
    if note.size <= KEPT:
        with contextlib.suppress(Exception):
            task = _unpickle(note.data)
            if task is None:  # the sentinel that tells a worker to stop
                return "none (the worker had been told to stop)"
            what = _task(task)
    if what is None:
        found = _first_global(note.data)
        if found is None:
            calls = f"a task whose pickle ({note.size} bytes) cannot be read back"
        else:
            why = f"longer than the {KEPT // 1024} KiB kept" if note.size > KEPT else "unreadable"
            calls = (
                f"{found[1]}(...) (arguments not shown: the task's pickle, {note.size} bytes, "
                f"is {why})"
            )
            where = _defined_at(_resolved(*found))
            if where is not None:
                calls += f", defined at {where}"
    else:
        calls, func = what
        where = _defined_at(func)
        if where is not None:
            calls += f", defined at {where}"
    if note.busy:
        return calls
    return f"none (the worker was idle; its last task had finished: {calls})"
