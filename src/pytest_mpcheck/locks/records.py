"""The record format of the checked locks, and the writer of one process's records.

Every process that uses a checked lock appends fixed-size records to its own file in the checker's
record directory, through a shared memory map: one ``struct.pack_into`` per event, with no system
call, pickling or message. The pages belong to the file, not to the process, so what a process
wrote before it was killed with SIGKILL is still there when the parent reads the directory; that is
what proves it died holding a lock.

Each record is 16 bytes: ``ts`` (``time.monotonic_ns()``, the system-wide monotonic clock; never 0,
so an all-zero record is a slot nobody wrote), ``site`` (a per-process number of an acquisition
site), ``lock`` (a per-process number of the lock), ``kind`` and ``flags``. Text (the process's
name, what lock a number stands for, the ``file:line`` of a site) is rare: it goes to a second
file, one write per record, before the first event that uses it. The space of both files is
reserved before it is written (see :class:`RecordWriter`): a full ``/dev/shm`` must not be a
SIGBUS.

:mod:`~pytest_mpcheck.locks.replay` reads them back.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import multiprocessing
import os
import struct
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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
SELF_WAIT = 4
"""On ``REQUESTED``: the thread that waits holds the lock itself (a ``Lock`` taken again by its
holder), so it waits for itself."""

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
MAX_LOCKS = 0xFFFF
"""How many checked locks one process can use in one test: a record has 16 bits for the number."""

_MP_DIR = os.path.dirname(multiprocessing.__file__) + os.sep


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


class RecordWriter:
    """This process's record files for one record directory.

    Events go to a memory-mapped file, one 16-byte slot each; the slot is taken with ``next()``
    on an ``itertools.count`` (or on ``slots``, the C hot path's ``_lockrec.Records``, which counts
    the same way and writes through its own export of the map), which is atomic under the GIL, so
    threads of one process never write the same slot. Text (the process's name, what a lock or
    site number stands for) is rare and goes to a second file, one write per record, before the
    first event that uses it.

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

    def __init__(self, directory: str, slots: type[_lockrec.Records] | None = None) -> None:
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
        self.rec = slots(self.buf) if slots is not None else None
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

    def forget(self) -> None:
        """Close the files in a forked child, which must write files of its own. The map is left
        alone: it is the parent's too, and the C hot path may still hold an export of it."""
        for fd in (self.fd, self.text_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close(self) -> None:
        """Unmap and close the files."""
        if self.rec is not None:
            self.rec.release()  # an mmap that still has a buffer export cannot be closed
        self.buf.close()
        for fd in (self.fd, self.text_fd):
            if fd >= 0:
                os.close(fd)
