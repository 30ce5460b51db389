"""Instrumented multiprocessing locks: :class:`CheckedLock` and its hot path.

A :class:`CheckedLock` wraps a real ``multiprocessing`` ``Lock`` or ``RLock`` of the test's context,
so it excludes across processes exactly as that lock does and is passed to children the same way
(as an argument of ``Process``, in ``Pool`` ``initargs``; never through a queue). Each request,
acquisition and release is a record of :mod:`~pytest_mpcheck.locks.records`, written by this
process's :class:`~pytest_mpcheck.locks.records.RecordWriter` for the checker's directory.

Timestamps are taken after a lock was acquired and before it is released, so that under real mutual
exclusion the next holder's acquisition always sorts after the previous holder's release. A record
that cannot be written (the writer raised while growing its file) never leaves the semaphore taken:
an acquisition gives it back before the error propagates, a release releases it all the same.

The hot path (an uncontended ``acquire()`` or ``release()``) is in C when the optional extension
``pytest_mpcheck.locks._lockrec`` was built (:data:`ACCELERATED`), else in Python
(:class:`_PyLockCore`); both write the same records. Setting ``PYTEST_MPCHECK_PURE_PYTHON=1``
selects the Python one, and so does a free-threaded Python (3.13t): the C path relies on the GIL,
and importing it there would turn the GIL back on with a ``RuntimeWarning``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import os
import secrets
import struct
import sys
import sysconfig
import threading
import time
import weakref
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pytest_mpcheck._os import atfork
from pytest_mpcheck.locks.records import (
    ACQUIRED,
    FOREIGN,
    GAVE_UP,
    MAX_LOCKS,
    RECORD,
    RECORD_SIZE,
    RELEASE_FAILED,
    RELEASED,
    REQUESTED,
    SELF_WAIT,
    TEXT_LOCK,
    TRY,
    RecordWriter,
)

_pack = RECORD.pack_into
_mono = time.monotonic_ns
_getframe = sys._getframe
_get_ident = threading.get_ident

#: The version of what ``_lockrec.LockCore`` shares with this module (its attributes and their
#: meaning), the last item of ``_lockrec.FORMAT``: 2 added ``_owner`` and ``_per_thread``.
_CORE_VERSION = 2


def _free_threaded() -> bool:
    """Whether this is a free-threaded build (3.13t), whatever the GIL's state now."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _accelerator() -> ModuleType | None:
    """The C hot path, unless it was not built, ``PYTEST_MPCHECK_PURE_PYTHON`` is set or the
    build is free-threaded."""
    if os.environ.get("PYTEST_MPCHECK_PURE_PYTHON", "") not in ("", "0") or _free_threaded():
        return None
    try:
        from pytest_mpcheck.locks import _lockrec
    except ImportError:  # installed where no C compiler was found: the extension is optional
        return None
    if _lockrec.FORMAT != (RECORD_SIZE, ACQUIRED, RELEASED, RELEASE_FAILED, TRY, _CORE_VERSION):
        return None  # built from an older source: its records would not read back
    return _lockrec


_accel = _accelerator()
ACCELERATED = _accel is not None
"""Whether checked locks use the C hot path (``pytest_mpcheck.locks._lockrec``) in this process."""


#: This process's writers, by record directory; emptied in a forked child.
_writers: dict[str, RecordWriter] = {}
#: Every lock of this process, so that a forked child can forget their per-process numbers.
_all_locks: weakref.WeakSet[CheckedLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The child must write its own file; the parent's map is shared with the child after fork.
    for writer in _writers.values():
        writer.forget()
    _writers.clear()
    for lock in list(_all_locks):
        lock._w = None
        lock._idx = 0
        lock._held = 0


# Held weakly and by name: a copy of this module imported again (pytester's in-process runs drop
# it from sys.modules) replaces this one's, which is not kept alive.
atfork.register(_after_fork_in_child)


def _writer(directory: str) -> RecordWriter:
    writer = _writers.get(directory)
    if writer is None:
        writer = _writers[directory] = RecordWriter(directory, _accel.Records if _accel else None)
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

    The base of :class:`CheckedLock` when the C extension is not built, when
    ``PYTEST_MPCHECK_PURE_PYTHON`` is set, and on a free-threaded build. The rare paths
    (attaching to the record file, a contended wait, a release by a process that does not hold
    the lock, a record that does not fit) are ``CheckedLock``'s, for both bases.

    ``_held`` counts this process's acquisitions not released yet, and ``_owner`` is the thread
    that took the first of them. A ``multiprocessing.Lock`` is any thread's to release (so its
    hold is the process's), but an ``RLock`` belongs to the thread that took it
    (``_per_thread``): another thread's ``release()`` raises and releases nothing, so it is the
    release of a thread that does not hold the lock, not the holder's.
    """

    __slots__ = ("_held", "_idx", "_lock", "_owner", "_per_thread", "_try", "_w")

    _held: int
    _idx: int
    _lock: Any
    _owner: int
    _per_thread: bool
    _try: Any
    _w: RecordWriter | None

    if TYPE_CHECKING:

        def _attach(self) -> RecordWriter: ...
        def _wait(self, w: RecordWriter, site: int, timeout: float | None) -> bool: ...
        def _release_not_held(self, w: RecordWriter, depth: int) -> None: ...
        def _record(self, w: RecordWriter, site: int, kind: int, flags: int) -> None: ...
        def _write_failed(
            self, error: BaseException, w: RecordWriter, off: int, site: int, kind: int, flags: int
        ) -> None: ...

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
            except BaseException as error:  # the file is full (struct.error), or worse
                self._write_failed(error, w, off, site, ACQUIRED, 0 if block else TRY)
            if not self._held:
                self._owner = _get_ident()
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
        if not self._held or (self._per_thread and self._owner != _get_ident()):
            return self._release_not_held(w, 3)  # the caller of release() or __exit__()
        self._held -= 1
        off = next(w.offsets)
        try:
            _pack(w.buf, off, _mono(), 0, self._idx, RELEASED, 0)
        except BaseException as error:  # the file is full (struct.error), or worse
            self._write_failed(error, w, off, 0, RELEASED, 0)
        try:
            self._lock.release()
        except BaseException:
            # The semaphore was free already (released behind this lock): the hold is over.
            # The release's error is the one to raise; one from recording it would hide it.
            with contextlib.suppress(Exception):
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
        self._owner = 0
        self._per_thread = kind == "RLock"
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

    def _attach(self) -> RecordWriter:
        writer = _writer(self.directory)
        number = next(writer.lock_numbers)
        if number > MAX_LOCKS:
            # The one check of the limit: a record has 16 bits for the lock's number.
            raise RuntimeError(
                f"mpcheck: {self!r} cannot be used: this process already used {MAX_LOCKS} checked "
                "locks in this test, as many as the lock checker's records can tell apart. Use "
                "fewer locks: mp_locks.Lock(name) gives the same lock for the same name."
            )
        self._idx = number
        semaphore = getattr(self._lock._semlock, "name", None) or ""
        writer.text(TEXT_LOCK, self._idx, f"{self.name}\0{self.kind}\0{self.token}\0{semaphore}")
        self._w = writer
        return writer

    @property
    def _semlock(self) -> Any:
        # multiprocessing's Condition asks its lock's semaphore who owns it and how often.
        return self._lock._semlock

    # -- the slow paths of the lock, for the hot path in C or in Python --------------------------

    def _wait(self, w: RecordWriter, site: int, timeout: float | None) -> bool:
        # A thread that waits for the Lock it holds waits for itself (an RLock's holder never
        # gets here: it takes it again at once). Only this thread knows; a hang report needs it.
        me = _get_ident()
        itself = bool(self._held) and self._owner == me
        self._record(w, site, REQUESTED, SELF_WAIT if itself else 0)
        acquired = bool(self._lock.acquire(True, timeout))
        self._record(w, site, ACQUIRED if acquired else GAVE_UP, 0)
        if acquired:
            if not self._held:
                self._owner = me
            self._held += 1
        return acquired

    def _release_not_held(self, w: RecordWriter, depth: int) -> None:
        # Rare, so the site is worth its price: it names the code that released another's lock.
        # `depth` is the caller of release(): 3 from Python, 1 from C (which has no frame).
        site = w.locate(_getframe(depth))
        self._record(w, site, RELEASED, FOREIGN)
        try:
            self._lock.release()
        except BaseException:
            with contextlib.suppress(Exception):  # as above: the release's error is the one
                self._record(w, site, RELEASE_FAILED, FOREIGN)
            raise

    def _record(self, w: RecordWriter, site: int, kind: int, flags: int) -> None:
        off = next(w.offsets)
        try:
            _pack(w.buf, off, _mono(), site, self._idx, kind, flags)
        except BaseException as error:
            self._write_failed(error, w, off, site, kind, flags)

    def _write_failed(
        self, error: BaseException, w: RecordWriter, off: int, site: int, kind: int, flags: int
    ) -> None:
        """A record did not fit (``struct.error``: its slot is past the end of the file): grow
        the file and write it. When it cannot be written, the record of taking or of giving back
        the semaphore does not leave it taken: an acquisition is undone, a release happens all
        the same; then the error propagates (as the C hot path does)."""
        try:
            if not isinstance(error, struct.error):
                raise error
            w.grow(off)
            _pack(w.buf, off, _mono(), site, self._idx, kind, flags)
        except BaseException:
            if kind in (ACQUIRED, RELEASED):
                with contextlib.suppress(Exception):  # its own error would hide the write's
                    self._lock.release()
            raise


def make_lock(
    name: str, kind: str, directory: str, context: multiprocessing.context.BaseContext
) -> CheckedLock:
    """A new checked lock of ``kind`` (``"Lock"`` or ``"RLock"``) made with ``context``."""
    inner = context.RLock() if kind == "RLock" else context.Lock()
    return CheckedLock(name, kind, directory, inner)
