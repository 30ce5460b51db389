"""Instrumented multiprocessing locks and the per-process record of what they did.

A :class:`CheckedLock` wraps a real ``multiprocessing`` ``Lock`` or ``RLock`` of the test's context,
so it excludes across processes exactly as that lock does and is passed to children the same way
(as an argument of ``Process``, in ``Pool`` ``initargs``; never through a queue).

Every process that uses such a lock appends fixed-size records to its own file in the checker's
record directory, through a shared memory map: one ``struct.pack_into`` per event, with no system
call, pickling or message. The pages belong to the file, not to the process, so what a process
wrote before it was killed with SIGKILL is still there when the parent reads the directory; that is
what proves it died holding a lock.

Each record is 16 bytes: ``ts`` (``time.monotonic_ns()``, the system-wide monotonic clock; never 0,
so an all-zero record marks the end of what was written), ``site`` (a per-process number of an
acquisition site), ``lock`` (a per-process number of the lock), ``kind`` and ``flags``. Text (the
process's name, what lock a number stands for, the ``file:line`` of a site) is rare: it goes to a
second file, one write per record, before the first event that uses it. The space of both files is
reserved before it is written (see :class:`_Writer`): a full ``/dev/shm`` must not be a SIGBUS.

Timestamps are taken after a lock was acquired and before it is released, so that under real mutual
exclusion the next holder's acquisition always sorts after the previous holder's release.

The hot path (an uncontended ``acquire()`` or ``release()``) is in C when the optional extension
``pytest_mpcheck.locks._lockrec`` was built (:data:`ACCELERATED`), else in Python
(:class:`_PyLockCore`); both write the same records. Setting
``PYTEST_MPCHECK_PURE_PYTHON=1`` selects the Python one.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import multiprocessing
import multiprocessing.context
import os
import secrets
import struct
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pytest_mpcheck._os import atfork

if TYPE_CHECKING:
    from pytest_mpcheck.locks import _lockrec

#: Record kinds.
ACQUIRED = 1
"""The lock was acquired (``site`` where)."""
REQUESTED = 2
"""A blocking acquire found the lock taken and starts to wait (a contended acquisition)."""
RELEASED = 3
"""The lock is about to be released (``flags`` ``FOREIGN`` when this process did not hold it)."""
RELEASE_FAILED = 4
"""The release just recorded raised (multiprocessing refused it): the release did not happen."""
GAVE_UP = 5
"""A wait that began with ``REQUESTED`` timed out."""
TEXT_PROCESS = 16
"""Text: ``pid``, process name (text records are ``TEXT_HEADER`` then UTF-8, ``\\0`` between)."""
TEXT_LOCK = 17
"""Text: lock name, ``Lock`` or ``RLock``, identity token, semaphore name."""
TEXT_SITE = 18
"""Text: site number, ``file:line``, function name."""

#: Flags.
FOREIGN = 1
"""On ``RELEASED``: this process did not hold the lock."""
TRY = 2
"""On ``ACQUIRED``: a non-blocking acquisition, which cannot deadlock (no lock-order edge)."""

RECORD = struct.Struct("<QIHBB")
RECORD_SIZE = RECORD.size
TEXT_HEADER = struct.Struct("<BxHI")
_INITIAL_SIZE = 1 << 16  # 4096 records; the file grows by doubling, its space reserved each time
_TEXT_SIZE = 1 << 13
FILE_SUFFIX = ".mplocks"
TEXT_SUFFIX = ".mplocks-text"
LOST_SUFFIX = ".mplocks-lost"
"""A marker: the process of the record file of the same name stopped recording (no room)."""
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})

_MP_DIR = os.path.dirname(multiprocessing.__file__) + os.sep
_pack = RECORD.pack_into
_mono = time.monotonic_ns
_getframe = sys._getframe


def _accelerator() -> ModuleType | None:
    """The C hot path, unless it was not built or ``PYTEST_MPCHECK_PURE_PYTHON`` is set."""
    if os.environ.get("PYTEST_MPCHECK_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from pytest_mpcheck.locks import _lockrec
    except ImportError:  # installed where no C compiler was found: the extension is optional
        return None
    if _lockrec.FORMAT != (RECORD_SIZE, ACQUIRED, RELEASED, RELEASE_FAILED, TRY):
        return None  # built from an older source: its records would not read back
    return _lockrec


_accel = _accelerator()
ACCELERATED = _accel is not None
"""Whether checked locks use the C hot path (``pytest_mpcheck.locks._lockrec``) in this process."""


def _reserve(fd: int, size: int) -> bool:
    """Give the file ``size`` bytes, their space reserved; ``False`` when there is no room."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno in _NO_ROOM:
            return False
    except AttributeError:
        pass
    else:
        return True
    # A file system that cannot reserve space (or a platform without posix_fallocate): a sparse
    # file, as before; such a file system is no tmpfs.
    try:
        os.ftruncate(fd, size)
    except OSError:
        return False
    return True


class _Writer:
    """This process's record files for one record directory.

    Events go to a memory-mapped file, one 16-byte slot each; the slot is taken with ``next()``
    on an ``itertools.count`` (or on the C ``Records``, which counts the same way), which is
    atomic under the GIL, so threads of one process never write the same slot. Text (the
    process's name, what a lock or site number stands for) is rare and goes to a second file,
    one write per record, before the first event that uses it.

    Both files get their space reserved (``posix_fallocate``) before anything is written to it:
    a write to a mapped page that a full tmpfs cannot provide is a SIGBUS, which kills the
    process (pytest itself, for the test's own locks). When the record directory has no room,
    the files move to its spill directory (:func:`scratch.spill_directory`), which the reader
    looks at too; when that has no room either, the process's records stop and a marker file
    (:data:`LOST_SUFFIX`) tells the checker that what it reads of this process is incomplete.
    """

    __slots__ = (
        "buf",
        "codes",
        "directory",
        "fd",
        "grow_lock",
        "lock_numbers",
        "offsets",
        "rec",
        "site_numbers",
        "sites",
        "size",
        "stem",
        "text_end",
        "text_fd",
        "text_size",
    )

    def __init__(self, directory: str) -> None:
        pid = os.getpid()
        self.directory = directory
        self.size = _INITIAL_SIZE
        self.text_size = _TEXT_SIZE
        self.text_end = 0
        self.rec: _lockrec.Records | None = None
        self.fd = self.text_fd = -1
        self.stem = ""
        self.buf = mmap.mmap(-1, self.size)  # until the file is ready; written to by nobody
        self.grow_lock = threading.Lock()
        try:
            self.fd, self.text_fd, self.stem = self._open(directory, pid)
        except OSError:
            # The test is over and its record directory gone (a child that outlived it): the
            # lock must go on working; what it records now is of no use to anyone.
            pass
        else:
            if _reserve(self.fd, self.size) and _reserve(self.text_fd, self.text_size):
                self.buf = mmap.mmap(self.fd, self.size)
            elif not self._spill(self.size, self.text_size):
                self._lose()
        # The C hot path writes through its own export of the map, and takes slots from it.
        self.rec = _accel.Records(self.buf) if _accel else None
        self.offsets: Iterator[int] = (
            self.rec if self.rec is not None else itertools.count(0, RECORD_SIZE)
        )
        self.sites: dict[tuple[int, int], int] = {}
        # The code objects of the keys of `sites`, kept alive: a freed one's id could be reused
        # by another code object, which would then get its site number.
        self.codes: list[Any] = []
        self.site_numbers = itertools.count(1)
        self.lock_numbers = itertools.count(1)
        name = multiprocessing.current_process().name
        self.text(TEXT_PROCESS, 0, f"{pid}\0{name}")

    @staticmethod
    def _open(directory: str, pid: int) -> tuple[int, int, str]:
        serial = 0
        while True:  # a pid can come back within one test: never share a file
            stem = os.path.join(directory, f"{pid}.{serial}")
            try:
                fd = os.open(stem + FILE_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                serial += 1
        try:
            text_fd = os.open(stem + TEXT_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(stem + FILE_SUFFIX)
            raise
        return fd, text_fd, stem

    def _spill(self, size: int, text_size: int) -> bool:
        """Move both files to the spill directory, with room for ``size`` and ``text_size``
        bytes; ``False`` (and nothing changed) when that cannot be done. The caller holds
        ``grow_lock``, or is ``__init__``."""
        from pytest_mpcheck._os import scratch  # only here: a child that never needs it never pays

        spill = scratch.spill_directory(self.directory, create=True) if self.stem else None
        if spill is None:
            return False
        stem = os.path.join(spill, os.path.basename(self.stem))
        fds: list[int] = []
        try:
            for suffix in (FILE_SUFFIX, TEXT_SUFFIX):
                fds.append(os.open(stem + suffix, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            fd, text_fd = fds
            if not (_reserve(fd, size) and _reserve(text_fd, text_size)):
                raise OSError(errno.ENOSPC, "no room in the spill directory either")
            if self.text_end:
                os.pwrite(text_fd, os.pread(self.text_fd, self.text_end, 0), 0)
            buf = mmap.mmap(fd, size)
            buf[: self.size] = self.buf[: self.size]
        except OSError:
            for opened, suffix in zip(fds, (FILE_SUFFIX, TEXT_SUFFIX), strict=False):
                os.close(opened)
                with contextlib.suppress(OSError):
                    os.unlink(stem + suffix)
            return False
        # The copies are whole: the originals go (a reader prefers the spill directory's).
        for old, suffix in ((self.fd, FILE_SUFFIX), (self.text_fd, TEXT_SUFFIX)):
            with contextlib.suppress(OSError):
                os.unlink(self.stem + suffix)
            with contextlib.suppress(OSError):
                os.close(old)
        self.fd, self.text_fd, self.stem = fd, text_fd, stem
        self.buf = buf
        if self.rec is not None:
            self.rec.attach(buf)  # and lets go of the old map
        self.size, self.text_size = size, text_size
        return True

    def _lose(self) -> None:
        """No room anywhere: stop recording to the files, and leave a marker saying so."""
        if self.stem:
            with contextlib.suppress(OSError):
                os.close(os.open(self.stem + LOST_SUFFIX, os.O_WRONLY | os.O_CREAT, 0o600))
        for fd in (self.fd, self.text_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.text_fd = -1

    def grow(self, off: int) -> None:
        """Make the file big enough for a record at ``off``, and map it again."""
        with self.grow_lock:
            size = self.size
            while size < off + RECORD_SIZE:
                size *= 2
            if size <= self.size:
                return
            buf: mmap.mmap | None = None
            if self.fd >= 0 and _reserve(self.fd, size):
                with contextlib.suppress(OSError):
                    buf = mmap.mmap(self.fd, size)
            elif self.fd >= 0 and self._spill(size, self.text_size):
                return
            if buf is None:  # no file (see __init__), or no room anywhere: keep the lock working
                if self.fd >= 0:
                    self._lose()
                buf = mmap.mmap(-1, size)
            self.buf = buf
            if self.rec is not None:
                self.rec.attach(self.buf)  # and lets go of the old map
            self.size = size

    def text(self, kind: int, lock: int, text: str) -> None:
        """Write a text record, whole, into the reserved space of the text file."""
        data = text.encode("utf-8", "replace")[:4000]
        record = TEXT_HEADER.pack(kind, lock, len(data)) + data
        with self.grow_lock:
            if self.text_fd < 0:
                return
            end = self.text_end + len(record)
            if end > self.text_size:
                size = self.text_size
                while size < end:
                    size *= 2
                if _reserve(self.text_fd, size):
                    self.text_size = size
                elif not self._spill(self.size, size):
                    self._lose()
                    return
            try:
                os.pwrite(self.text_fd, record, self.text_end)
            except OSError:
                return
            self.text_end = end

    def site(self, frame: Any, key: tuple[int, int]) -> int:
        """Number a new acquisition site (``file:line`` of ``frame``) and record its text.

        When the caller is ``multiprocessing`` itself (a ``Condition`` that takes its lock back
        after a wait), the site is the first frame outside it, which the user can act on.
        """
        number = next(self.site_numbers)
        self.codes.append(frame.f_code)
        while frame.f_back is not None and frame.f_code.co_filename.startswith(_MP_DIR):
            frame = frame.f_back
        code = frame.f_code
        self.text(TEXT_SITE, 0, f"{number}\0{code.co_filename}:{frame.f_lineno}\0{code.co_name}")
        self.sites[key] = number
        return number

    def locate(self, frame: Any) -> int:
        """The site number of ``frame``'s current instruction (the C hot path's cache miss)."""
        key = (id(frame.f_code), frame.f_lasti)
        site = self.sites.get(key)
        return site if site is not None else self.site(frame, key)

    def close(self) -> None:
        """Unmap and close the files."""
        if self.rec is not None:
            self.rec.release()  # an mmap that still has a buffer export cannot be closed
        self.buf.close()
        for fd in (self.fd, self.text_fd):
            if fd >= 0:
                os.close(fd)


#: This process's writers, by record directory; emptied in a forked child.
_writers: dict[str, _Writer] = {}
#: Every lock of this process, so that a forked child can forget their per-process numbers.
_all_locks: weakref.WeakSet[CheckedLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The child must write its own file; the parent's map is shared with the child after fork.
    for writer in _writers.values():
        for fd in (writer.fd, writer.text_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
    _writers.clear()
    for lock in list(_all_locks):
        lock._w = None
        lock._idx = 0
        lock._held = 0


# Held weakly and by name: a copy of this module imported again (pytester's in-process runs drop
# it from sys.modules) replaces this one's, which is not kept alive.
atfork.register(_after_fork_in_child)


def _writer(directory: str) -> _Writer:
    writer = _writers.get(directory)
    if writer is None:
        writer = _writers[directory] = _Writer(directory)
    return writer


def close_records(directory: str) -> None:
    """Close this process's record file in ``directory`` (the test is over)."""
    writer = _writers.pop(directory, None)
    if writer is None:
        return
    for lock in list(_all_locks):
        if lock._w is writer:
            lock._w = None
            lock._idx = 0
    writer.close()


class _PyLockCore:
    """The hot path of :class:`CheckedLock` in Python: ``_lockrec.LockCore`` does the same in C.

    The base of :class:`CheckedLock` when the C extension is not built or
    ``PYTEST_MPCHECK_PURE_PYTHON`` is set. The rare paths (attaching to the record file, a
    contended wait, a release by a process that does not hold the lock) are ``CheckedLock``'s,
    for both bases.
    """

    __slots__ = ("_held", "_idx", "_lock", "_try", "_w")

    _held: int
    _idx: int
    _lock: Any
    _try: Any
    _w: _Writer | None

    if TYPE_CHECKING:

        def _attach(self) -> _Writer: ...
        def _wait(self, w: _Writer, site: int, timeout: float | None) -> bool: ...
        def _release_not_held(self, w: _Writer, depth: int) -> None: ...
        def _record(self, w: _Writer, site: int, kind: int, flags: int) -> None: ...

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock, as ``multiprocessing.Lock.acquire`` does, and record it."""
        w = self._w
        if w is None:
            w = self._attach()
        frame = _getframe(1)
        key = (id(frame.f_code), frame.f_lasti)
        site = w.sites.get(key)
        if site is None:
            site = w.site(frame, key)
        if self._try(False):
            off = next(w.offsets)
            try:
                _pack(w.buf, off, _mono(), site, self._idx, ACQUIRED, 0 if block else TRY)
            except struct.error:  # the file is full
                w.grow(off)
                _pack(w.buf, off, _mono(), site, self._idx, ACQUIRED, 0 if block else TRY)
            self._held += 1
            return True
        if not block:
            return False
        return self._wait(w, site, timeout)

    def release(self) -> None:
        """Release the lock, as ``multiprocessing.Lock.release`` does, and record it."""
        self._release()

    __enter__ = acquire

    def __exit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        w = self._w
        if w is None:
            w = self._attach()
        if not self._held:
            return self._release_not_held(w, 3)  # the caller of release() or __exit__()
        self._held -= 1
        off = next(w.offsets)
        try:
            _pack(w.buf, off, _mono(), 0, self._idx, RELEASED, 0)
        except struct.error:  # the file is full
            w.grow(off)
            _pack(w.buf, off, _mono(), 0, self._idx, RELEASED, 0)
        try:
            self._lock.release()
        except BaseException:
            # The semaphore was free already (released behind this lock): the hold is over.
            self._record(w, 0, RELEASE_FAILED, 0)
            raise
        return None


if TYPE_CHECKING:
    _LockCore = _PyLockCore
else:
    _LockCore = _accel.LockCore if _accel else _PyLockCore


class CheckedLock(_LockCore):
    """A ``multiprocessing`` lock that records each request, acquisition and release.

    Made by ``mp_locks.Lock(name)`` or ``mp_locks.RLock(name)``; used exactly like the lock it
    wraps: ``acquire(block=True, timeout=None)``, ``release()``, ``with lock:``. Pass it to children
    as an argument (``Process(args=...)``, ``Pool(initargs=...)``) under any start method.
    """

    # The hot path's state (_held, _idx, _lock, _try, _w) is in the base, C or Python.
    __slots__ = ("__weakref__", "directory", "kind", "name", "token")

    def __init__(
        self,
        name: str,
        kind: str,
        directory: str,
        lock: Any,
        token: str | None = None,
    ) -> None:
        self._setup(name, kind, directory, lock, token or secrets.token_hex(8))

    def _setup(self, name: str, kind: str, directory: str, lock: Any, token: str) -> None:
        self.name = name
        """The name the test gave the lock; the reports use it."""
        self.kind = kind
        """``"Lock"`` or ``"RLock"``."""
        self.directory = directory
        self.token = token
        """Made once with the semaphore and carried to children: two tokens, two semaphores."""
        self._lock = lock
        self._try = lock.acquire
        self._w = None
        self._idx = 0
        self._held = 0
        _all_locks.add(self)

    # -- pickling: to a child under spawn or forkserver -----------------------------------------

    def __getstate__(self) -> tuple[str, str, str, Any, str]:
        # The wrapped lock pickles only while a process is being started, as any lock does.
        return (self.name, self.kind, self.directory, self._lock, self.token)

    def __setstate__(self, state: tuple[str, str, str, Any, str]) -> None:
        self._setup(*state)

    def __repr__(self) -> str:
        return f"<CheckedLock {self.kind} {self.name!r}>"

    # -- the record -----------------------------------------------------------------------------

    def _attach(self) -> _Writer:
        writer = _writer(self.directory)
        self._idx = next(writer.lock_numbers)
        semaphore = getattr(self._lock._semlock, "name", None) or ""
        writer.text(TEXT_LOCK, self._idx, f"{self.name}\0{self.kind}\0{self.token}\0{semaphore}")
        self._w = writer
        return writer

    @property
    def _semlock(self) -> Any:
        # multiprocessing's Condition asks its lock's semaphore who owns it and how often.
        return self._lock._semlock

    # -- the slow paths of the lock, for the hot path in C or in Python --------------------------

    def _wait(self, w: _Writer, site: int, timeout: float | None) -> bool:
        self._record(w, site, REQUESTED, 0)
        acquired = bool(self._lock.acquire(True, timeout))
        self._record(w, site, ACQUIRED if acquired else GAVE_UP, 0)
        if acquired:
            self._held += 1
        return acquired

    def _release_not_held(self, w: _Writer, depth: int) -> None:
        # Rare, so the site is worth its price: it names the code that released another's lock.
        # `depth` is the caller of release(): 3 from Python, 1 from C (which has no frame).
        site = w.locate(_getframe(depth))
        self._record(w, site, RELEASED, FOREIGN)
        try:
            self._lock.release()
        except BaseException:
            self._record(w, site, RELEASE_FAILED, FOREIGN)
            raise

    def _record(self, w: _Writer, site: int, kind: int, flags: int) -> None:
        off = next(w.offsets)
        if off + RECORD_SIZE > w.size:
            w.grow(off)
        _pack(w.buf, off, _mono(), site, self._idx, kind, flags)


def make_lock(
    name: str, kind: str, directory: str, context: multiprocessing.context.BaseContext
) -> CheckedLock:
    """A new checked lock of ``kind`` (``"Lock"`` or ``"RLock"``) made with ``context``."""
    inner = context.RLock() if kind == "RLock" else context.Lock()
    return CheckedLock(name, kind, directory, inner)


# -- module-level locks that a child made again -------------------------------------------------


def _codes_of(value: Any) -> list[Any]:
    function = getattr(value, "__func__", value)
    code = getattr(function, "__code__", None)
    if code is not None:
        return [code]
    if isinstance(value, type):
        return [c for member in vars(value).values() for c in _codes_of(member)]
    call = vars(type(value)).get("__call__")  # a callable instance: its class's __call__
    return _codes_of(call) if call is not None else []


def _global_reads(code: Any) -> set[str]:
    """The global names that ``code`` reads (not attribute names, which share ``co_names``)."""
    import dis

    return {
        str(instruction.argval)
        for instruction in dis.get_instructions(code)
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME")
    }


def _reachable_names(target: Any, module: Any) -> set[str]:
    """The global names that ``target`` reads, and those of the functions and classes of
    ``module`` that it reads, transitively: the module-level objects the child can reach."""
    names: set[str] = set()
    pending = _codes_of(target)
    seen: set[int] = set()
    while pending:
        code = pending.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        for name in _global_reads(code):
            if name in names:
                continue
            names.add(name)
            value = vars(module).get(name)
            if value is not None and getattr(value, "__module__", None) == module.__name__:
                pending.extend(_codes_of(value))
        pending.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    return names


_DISPLAY = {"Synchronized": "Value", "SynchronizedArray": "Array", "SynchronizedString": "Array"}


def _shared_kinds() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """``multiprocessing`` types that a module makes again on each import: locks, then others."""
    import multiprocessing.queues
    import multiprocessing.sharedctypes
    import multiprocessing.synchronize as synchronize

    locks = (synchronize.SemLock, synchronize.Condition)
    others = (
        synchronize.Event,
        synchronize.Barrier,
        multiprocessing.sharedctypes.SynchronizedBase,
        multiprocessing.queues.Queue,
        multiprocessing.queues.SimpleQueue,
    )
    return locks, others


def module_lock_check(target: Any, args: Any, kwargs: Any) -> list[str]:
    """Child check: module-level multiprocessing locks (and queues, values, events) made again.

    Runs in each child that ``mp_spawn`` starts, after the target was unpickled (so its module was
    imported again under spawn and forkserver) and before it runs. A ``multiprocessing`` lock made
    at module level is then a new semaphore in each child, so it excludes neither the test process
    nor the other children: this is deterministic, whatever the timing. The same holds for a
    module-level ``Queue``, ``Value``, ``Array``, ``Event`` or ``Barrier``: each child has its own.
    Under fork the child inherits the parent's objects, which are shared. Only the objects that
    the target can reach (the names its code, and the module functions it calls, read) count.
    """
    method = getattr(multiprocessing.current_process(), "_start_method", None)
    if method in (None, "fork"):
        return []
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    if module is None:
        return []
    locks, others = _shared_kinds()
    used = _reachable_names(target, module)
    where = getattr(module, "__file__", None) or module.__name__
    here = os.getcwd() + os.sep
    where = where[len(here) :] if where.startswith(here) else where
    messages = []
    for attribute, value in sorted(vars(module).items()):
        inner = value._lock if isinstance(value, CheckedLock) else value
        if attribute not in used or not isinstance(inner, locks + others):
            continue
        kind = _DISPLAY.get(type(inner).__name__, type(inner).__name__)
        semaphore = getattr(getattr(inner, "_semlock", None), "name", None)
        made = f"{kind} (semaphore {semaphore})" if semaphore else kind
        if isinstance(inner, locks):
            what = (
                "lock not shared",
                "the test's lock",
                "it excludes neither the test process nor the other children, so their critical "
                "sections can run at the same time",
                "the lock",
                f" (or mp_locks.Lock({attribute!r}) to have it checked)",
            )
        else:
            what = (
                f"{kind} not shared",
                f"the test's {kind}",
                "what one process puts in it, the others never see",
                f"the {kind}",
                "",
            )
        title, whose, effect, thing, checked = what
        messages.append(
            f"{title}: the module-level {kind} {attribute!r} of {where} is not {whose} in this "
            f"child: under the {method!r} start method the child imported {module.__name__!r} "
            f"again, which made a new {made}; {effect}.\n"
            f"    How to fix: create {thing} in the test and pass it to each child as an argument, "
            f"e.g. mp_spawn(target, args=({attribute}, ...)){checked}; for a Pool, pass it with "
            f"initializer=..., initargs=({attribute},)."
        )
    return messages
