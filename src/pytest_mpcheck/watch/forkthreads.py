"""Forks of the pytest process made while other threads were running.

A forked child gets a copy of the parent's memory with one thread, the one that forked: a lock
that another thread held at that moment (of ``logging``, of a queue, of the allocator) stays held
in the child for ever, and the child deadlocks when it takes it. Python 3.12+ warns about it
(``DeprecationWarning``: "This process ... is multi-threaded, use of fork() may lead to deadlocks
in the child"); this module says which threads were alive and where they were started.

The recorder (:mod:`pytest_mpcheck.watch.origins`) notes where each thread is started; its
``os.fork`` and ``os.forkpty`` wrappers call :meth:`ThreadedForks.note` when another thread is
alive (one ``threading.active_count()`` when none is). The test's forks are reported once, at its
end, as one ``MpCheckWarning``: a warning in every mode (Python itself only warns), never a
failure.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

FIX = (
    "How to fix: start the processes before the threads (or join the threads before forking), "
    "or use the spawn or forkserver start method (multiprocessing.get_context('spawn'), or "
    "--mp-start-methods=spawn,forkserver for the mp_* fixtures)."
)


@dataclass
class ThreadSeen:
    """A thread alive at a fork."""

    ident: int | None
    name: str
    daemon: bool
    site: str | None
    owner: str | None
    main: bool = False

    def describe(self, nodeid: str) -> str:
        """One line: the thread, where it was started and by which test or fixture."""
        if self.main:
            return f"{self.name!r} (the main thread)"
        kind = ", daemon" if self.daemon else ""
        where = f"started at {self.site}" if self.site else "started where no user code ran"
        by = (
            f" by {_who(self.owner, nodeid)}" if self.owner else " before pytest-mpcheck was active"
        )
        return f"{self.name!r}{kind}: {where}{by}"


@dataclass
class ForkSeen:
    """The forks made at one place while other threads ran."""

    site: str | None
    call: str
    owner: str
    thread: str | None = None
    """The name of the thread that forked, when no user code of it ran (a pool's worker
    handler, which replaces the workers that end): ``site`` is then where it was started."""
    count: int = 0
    threads: dict[tuple[int | None, str], ThreadSeen] = field(default_factory=dict)


def is_alien(thread: threading.Thread) -> bool:
    """Threads that do not count: a thread that Python's ``threading`` did not start (no site,
    possibly long gone), pytest-timeout's timer, which the test did not start, and the plugin's
    own (a pool's ``terminate()`` that never returned)."""
    if isinstance(thread, threading._DummyThread) or getattr(thread, "pytest_mpcheck_own", False):
        return True
    function = getattr(thread, "function", None)  # threading.Timer
    return getattr(function, "__module__", None) == "pytest_timeout"


class ThreadedForks:
    """The forks made with other threads alive since the last :meth:`take`."""

    def __init__(self) -> None:
        self._forks: dict[tuple[str | None, str, str, str | None], ForkSeen] = {}

    def note(
        self,
        site: str | None,
        call: str,
        owner: str,
        threads: list[ThreadSeen],
        forking: str | None = None,
    ) -> None:
        """A fork at ``site`` (by ``call``, for ``owner``) while ``threads`` were alive; with
        ``forking``, by that thread, which was started at ``site`` (see :attr:`ForkSeen.thread`)."""
        key = (site, call, owner, forking)
        seen = self._forks.get(key)
        if seen is None:
            seen = self._forks[key] = ForkSeen(site, call, owner, forking)
        seen.count += 1
        for thread in threads:
            seen.threads.setdefault((thread.ident, thread.name), thread)

    def __bool__(self) -> bool:
        """Whether a fork was noted since the last :meth:`take`."""
        return bool(self._forks)

    def take(self) -> list[ForkSeen]:
        """The forks noted so far; forgets them."""
        forks = list(self._forks.values())
        self._forks.clear()
        return forks


def _who(owner: str, nodeid: str) -> str:
    return "this test" if owner == nodeid else owner


def format_warning(nodeid: str, forks: list[ForkSeen]) -> str:
    """The warning of one test: each fork, the threads alive at it, and the fix."""
    lines = [
        f"mpcheck: {nodeid}: forked while other threads were running. The child is a copy of "
        "this process with only the thread that forked: a lock that another thread held at that "
        "moment (of logging, of a queue, of I/O) stays locked in the child for ever, and the "
        "child deadlocks when it takes it."
    ]
    for fork in forks:
        times = "once" if fork.count == 1 else f"{fork.count} times"
        if fork.thread is not None:
            where = f"in thread {fork.thread!r}, started at {fork.site}"
        else:
            where = f"at {fork.site or 'an unknown place'}"
        by = "" if fork.owner == nodeid else f", by {_who(fork.owner, nodeid)}"
        lines.append(f"  fork {where} ({fork.call}, {times}{by}); threads alive:")
        lines.extend(f"    {thread.describe(nodeid)}" for thread in fork.threads.values())
    lines.append(FIX)
    return "\n".join(lines)
