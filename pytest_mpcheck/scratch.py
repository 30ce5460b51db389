"""Where the plugin keeps its files while a test runs, and how it clears what a dead run left.

The work directories of the fixtures, the lock checker's records and the session's resource log
live in ``/dev/shm`` where there is one (tmpfs: the pages are never written back to a disk, and
creating a file costs a tenth of a disk's), else in the temporary directory. Each name carries the
pid of the pytest process that made it: a run that could not clean up after itself (SIGKILLed, or
ended by pytest-timeout's ``os._exit``) leaves them behind, and the next run removes those whose
process is gone (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import time

PREFIX = "mpcheck-"
_OWNED = re.compile(rf"^{PREFIX}[a-z]+-(\d+)-")


def base() -> str | None:
    """``/dev/shm`` when it can be used, else ``None`` (the temporary directory)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def make_directory(kind: str) -> str:
    """A new private directory for ``kind`` (``"test"``, ``"locks"``), named after this process."""
    return tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-", dir=base())


def make_file(kind: str, suffix: str) -> str:
    """A new private empty file for ``kind``, named after this process."""
    fd, path = tempfile.mkstemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-", suffix=suffix, dir=base())
    os.close(fd)
    return path


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (procfs: no signal is sent to anyone)."""
    return os.path.exists(f"/proc/{pid}")


#: Only what has not changed for this long is swept: a run in another pid namespace that shares
#: ``/dev/shm`` (same user) must not lose the files of a test that is running.
STALE_AFTER = 600.0


def sweep() -> int:
    """Remove what runs whose process is gone left behind; how many entries were removed."""
    removed = 0
    if not os.path.isdir("/proc/self"):
        return removed  # no way to tell a dead run from a live one here: leave everything
    now = time.time()
    uid = os.getuid()
    for directory in {base() or tempfile.gettempdir(), tempfile.gettempdir()}:
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
