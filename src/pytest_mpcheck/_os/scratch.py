"""Where the plugin keeps its files while a test runs, and how it clears what a dead run left.

The work directories of the fixtures, the lock checker's records and the session's resource log
live in ``/dev/shm`` where there is one (tmpfs: the pages are never written back to a disk, and
creating a file costs a tenth of a disk's), else in the temporary directory. The environment
variable ``PYTEST_MPCHECK_SCRATCH_DIR`` names another directory instead of ``/dev/shm``.

A full ``/dev/shm`` is common (a container's is 64 MiB) and must not cost the user anything: a
directory with less than :data:`MIN_FREE` bytes free is passed over for the temporary directory,
and a file that runs out of room there later is moved to :func:`spill_directory`, which readers
look at too. Files that are memory-mapped get their space reserved first (``posix_fallocate``):
a write to a page of a full tmpfs that was never reserved is a SIGBUS, which would kill pytest.

Each name carries the pid of the pytest process that made it: a run that could not clean up after
itself (SIGKILLed, or ended by pytest-timeout's ``os._exit``) leaves them behind, and the next run
removes those whose process is gone (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time

# shutil and tempfile are imported where they are used: the children of the fixtures import this
# module for free_space() alone, and a spawned child would pay some 20 ms for the two.

PREFIX = "mpcheck-"
_OWNED = re.compile(rf"^{PREFIX}[a-z]+-(\d+)-")


#: The environment variable that names the directory to use instead of ``/dev/shm``.
SCRATCH_ENV = "PYTEST_MPCHECK_SCRATCH_DIR"
#: A directory with less room than this is passed over for the temporary directory.
MIN_FREE = 4 << 20
#: ``errno`` values that mean "no room here" (a full file system, a quota).
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def _preferred() -> str:
    return os.environ.get(SCRATCH_ENV, "").strip() or "/dev/shm"


def free_space(directory: str) -> int:
    """Bytes free for this user in the file system of ``directory`` (0 if it cannot be told)."""
    try:
        status = os.statvfs(directory)
    except OSError:
        return 0
    return status.f_bavail * status.f_frsize


def base() -> str | None:
    """``/dev/shm`` (or ``$PYTEST_MPCHECK_SCRATCH_DIR``) when it can be used and has room, else
    ``None`` (the temporary directory)."""
    preferred = _preferred()
    usable = os.path.isdir(preferred) and os.access(preferred, os.W_OK | os.X_OK)
    return preferred if usable and free_space(preferred) >= MIN_FREE else None


def make_directory(kind: str) -> str:
    """A new private directory for ``kind`` (``"test"``, ``"locks"``), named after this process."""
    import tempfile

    return tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-", dir=base())


def make_file(kind: str, suffix: str) -> str:
    """A new private empty file for ``kind``, named after this process."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-", suffix=suffix, dir=base())
    os.close(fd)
    return path


def spill_directory(path: str, create: bool = False) -> str | None:
    """Where the files of the scratch directory ``path`` go when ``path`` has no room left: a
    directory of the same name in the temporary directory; ``None`` when ``path`` is there already,
    or (``create``) the spill directory cannot be made or is not this user's own."""
    import tempfile

    spill = os.path.join(tempfile.gettempdir(), os.path.basename(path.rstrip(os.sep)))
    if os.path.realpath(spill) == os.path.realpath(path):
        return None
    if create:
        with contextlib.suppress(OSError):
            os.mkdir(spill, 0o700)
    try:
        status = os.lstat(spill)
    except OSError:
        return None
    # The name is seen in /dev/shm by every user: never follow what someone else put in its place.
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
        return None
    return spill


def append(path: str, data: bytes, create: bool = False) -> None:
    """Append ``data`` to the log at ``path`` in one write, opening it only for that.

    ``O_APPEND`` and one write: what several processes append never mixes, and a reader sees a
    line whole or not yet. No descriptor stays open: a child holds only the files its own code
    opened (some suites count them). The log must exist (its session made it: creating a file
    costs more than opening one), unless ``create`` says to make it.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_new_lines(path: str, offset: int) -> tuple[list[str], int]:
    """The whole lines appended to the log at ``path`` since ``offset``, and the offset to read
    from next time (a line still being written is read then); none if it cannot be read."""
    try:
        if os.stat(path).st_size <= offset:
            return [], offset
        with open(path, "rb") as log:
            log.seek(offset)
            data = log.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8", "replace").splitlines(), offset + end


def remove_directory(path: str) -> None:
    """Remove a scratch directory and its spill directory."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    spill = spill_directory(path)
    if spill is not None:
        shutil.rmtree(spill, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (procfs: no signal is sent to anyone)."""
    return os.path.exists(f"/proc/{pid}")


#: Only what has not changed for this long is swept: a run in another pid namespace that shares
#: ``/dev/shm`` (same user) must not lose the files of a test that is running.
STALE_AFTER = 600.0


def sweep() -> int:
    """Remove what runs whose process is gone left behind; how many entries were removed."""
    import shutil
    import tempfile

    removed = 0
    if not os.path.isdir("/proc/self"):
        return removed  # no way to tell a dead run from a live one here: leave everything
    now = time.time()
    uid = os.getuid()
    for directory in {"/dev/shm", _preferred(), tempfile.gettempdir()}:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            owned = _OWNED.match(name)
            if owned is None or _alive(int(owned.group(1))):
                continue
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                status = os.lstat(path)
                if status.st_uid != uid or now - status.st_mtime < STALE_AFTER:
                    continue
                if stat.S_ISDIR(status.st_mode):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed += 1
    return removed
