"""Cheap questions about processes: who descends from us, is a pid still the same process.

The watch asks for the descendants of the pytest process before and after every test, so the
common path reads ``/proc/<pid>/task/<tid>/children`` (Linux, ``CONFIG_PROC_CHILDREN``) with plain
``os`` calls: a few microseconds when there are no children. Elsewhere psutil walks the table.
"""

from __future__ import annotations

import functools
import os
import time


def _read_small(path: str) -> bytes:
    """The whole of a small procfs file, in as few system calls as it takes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 65536)
        if not data:
            return data
        # Some procfs files (a task's ``children`` among them) hand out at most a page per read:
        # a short read is not the end, only an empty one is. Hundreds of children fill a page.
        chunks = [data]
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _children_from_proc(pid: int) -> list[int]:
    """Direct children of ``pid`` from procfs (``[]`` once the process is gone).

    Each thread has its own ``children`` file. The link count of ``/proc/<pid>/task`` is two
    plus the number of threads: a single-threaded process (the usual pytest process) is read
    without listing the directory, which halves the system calls of the look after each test.
    """
    task = f"/proc/{pid}/task"
    try:
        single = os.stat(task).st_nlink == 3
    except OSError:
        return []
    if single:
        try:
            return [int(word) for word in _read_small(f"{task}/{pid}/children").split()]
        except OSError:
            pass  # the leader thread is gone and another one runs: list them
    try:
        tids = os.listdir(task)
    except OSError:
        return []
    found: list[int] = []
    for tid in tids:
        try:
            data = _read_small(f"{task}/{tid}/children")
        except OSError:
            continue  # the thread ended meanwhile
        found.extend(int(word) for word in data.split())
    return found


_PROC_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _child_exited() -> bool | None:
    """One ``waitid`` on every child of this process (any thread's, and the orphans that
    reparented to this subreaper), that reaps nothing (``WNOWAIT``): ``None`` when there is no
    child at all (``ECHILD``), else whether one has exited and waits to be reaped. Other errors
    are raised."""
    try:
        return os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return None


_WAITID = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


def has_no_children() -> bool:
    """Whether this process surely has no child at all, live or zombie (``False``: it may)."""
    if not _WAITID:
        return False
    try:
        return _child_exited() is None
    except OSError:
        return False


def may_have_exited_child() -> bool:
    """Whether a child of this process may have exited and wait to be reaped (``False``: surely
    none, live children or not)."""
    if not _WAITID:
        return True
    try:
        return bool(_child_exited())
    except OSError:
        return True


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (its threads' children included)."""
    if pid == os.getpid() and has_no_children():
        return []  # the usual answer between tests, without a walk through procfs
    if _PROC_CHILDREN:
        return _children_from_proc(pid)
    import psutil  # imported only where procfs cannot answer: it takes 10 ms

    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def descendants(root: int) -> dict[int, int]:
    """Every live or zombie descendant of ``root``, as ``{pid: parent pid}``."""
    found: dict[int, int] = {}
    pending = [root]
    while pending:
        parent = pending.pop()
        for child in children(parent):
            if child not in found and child != root:
                found[child] = parent
                pending.append(child)
    return found


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` from the third (the state) on; ``None`` if unreadable.

    The command name before them is in parentheses and may itself hold spaces and parentheses:
    the fields start after the last ``)``.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def state(pid: int) -> str | None:
    """The one-letter kernel state of ``pid`` (``"Z"`` for a zombie), or ``None`` if it is gone."""
    fields = _stat_fields(pid)
    if fields:
        return fields[0].decode()
    if _BOOT_TIME is not None:
        return None  # procfs works: the process is gone
    import psutil  # imported only where procfs cannot answer: it takes 10 ms

    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return None
    return "Z" if status == psutil.STATUS_ZOMBIE else "R"


def _stat_number(pid: int, field: int) -> int | None:
    """Field ``field`` (numbered as ``man proc`` numbers them) of ``/proc/<pid>/stat``."""
    fields = _stat_fields(pid)
    try:
        return int(fields[field - 3]) if fields else None
    except (IndexError, ValueError):
        return None


def parent(pid: int) -> int | None:
    """The parent pid of ``pid`` from procfs (field 4), or ``None`` if it cannot be read."""
    return _stat_number(pid, 4)


def caught_signals(pid: int) -> frozenset[int]:
    """The signals ``pid`` has a handler for (``SigCgt``); empty if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"SigCgt:"):
                    mask = int(line.split()[1], 16)
                    return frozenset(n + 1 for n in range(mask.bit_length()) if mask >> n & 1)
    except (OSError, ValueError, IndexError):
        pass
    return frozenset()


def wchan(pid: int) -> str | None:
    """The kernel function ``pid`` waits in, or ``None`` when it runs or cannot be told."""
    try:
        with open(f"/proc/{pid}/wchan", "rb") as file:
            name = file.read().strip().decode("ascii", "replace")
    except OSError:
        return None
    return name if name and name != "0" else None


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` exited and waits for its parent to reap it.

    The kernel shows a process whose main thread has exited as ``Z`` while its other threads
    still run: that process is alive, and cannot be reaped yet. Its ``task`` directory still
    lists those threads (a link count of three means one entry).
    """
    if state(pid) != "Z":
        return False
    try:
        return os.stat(f"/proc/{pid}/task").st_nlink <= 3
    except OSError:
        return True  # gone, or no procfs: psutil said zombie


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as stat:
            for line in stat:
                if line.startswith(b"btime"):
                    return float(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


_BOOT_TIME = _boot_time()
#: Clock ticks per second, the unit of :func:`start_ticks`.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started, in clock ticks since boot."""
    return _stat_number(pid, 22)


def ticks_of(create_time: float | None) -> int | None:
    """The start of a process in clock ticks since boot (as :func:`start_ticks` reads it), from
    the ``create_time`` that :func:`create_time` gave for it; ``None`` without procfs."""
    if create_time is None or _BOOT_TIME is None:
        return None
    return round((create_time - _BOOT_TIME) * CLOCK_TICKS)


def create_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), or ``None`` if it is gone.

    On Linux this is read straight from procfs (the formula psutil uses, without its cost), and
    it is what tells a process from a later one that got the same pid.
    """
    if _BOOT_TIME is not None:
        ticks = start_ticks(pid)
        if ticks is not None:
            return _BOOT_TIME + ticks / CLOCK_TICKS
        if os.path.exists("/proc/self/stat"):
            return None  # procfs works: the process is gone
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_same_process(pid: int, created: float) -> bool:
    """Whether ``pid`` is still the process that started at ``created`` (guards pid reuse)."""
    now = create_time(pid)
    return now is not None and abs(now - created) < 0.01


def age(pid: int) -> float | None:
    """Seconds since ``pid`` started, to the clock tick (psutil's create time may be 1 s off)."""
    ticks = start_ticks(pid)
    try:
        with open("/proc/uptime", "rb") as uptime:
            now = float(uptime.read().split()[0])
    except (OSError, IndexError, ValueError):
        ticks = None
    if ticks is None:
        created = create_time(pid)
        return None if created is None else max(0.0, time.time() - created)
    return max(0.0, now - ticks / CLOCK_TICKS)


def describe(pid: int) -> tuple[str, str, str, float, float, int] | None:
    """``(name, cmdline, status, create_time, age, ppid)`` of ``pid``, or ``None`` if it is gone."""
    import psutil  # imported on first use: it takes 10 ms, and most runs never need it

    try:
        process = psutil.Process(pid)
        with process.oneshot():
            name = process.name()
            status: str = process.status()
            created = process.create_time()
            ppid = process.ppid()
            try:
                cmdline = " ".join(process.cmdline())
            except psutil.Error:
                cmdline = ""
    except psutil.Error:
        return None
    if status == psutil.STATUS_ZOMBIE and not is_zombie(pid):
        status = "running (its main thread has exited)"
    lifetime = age(pid)
    if lifetime is None:
        lifetime = max(0.0, time.time() - created)
    return name, cmdline or f"[{name}]", status, created, lifetime, ppid


def cmdline(pid: int) -> str:
    """The command line of ``pid`` as one string ("" if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            data = file.read()
    except FileNotFoundError:
        if os.path.exists("/proc/self/cmdline"):
            return ""  # procfs works: the process is gone
        data = None
    except OSError:
        data = None
    if data is not None:
        return " ".join(part.decode("utf-8", "replace") for part in data.split(b"\0") if part)
    import psutil  # imported only where procfs cannot answer: it takes 10 ms

    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


@functools.cache
def own_cmdline() -> str:
    """The command line of this process, read once: its forks carry the same one."""
    return cmdline(os.getpid())
