"""The pytest process as a child subreaper, so that orphaned grandchildren stay findable.

On Linux, ``prctl(PR_SET_CHILD_SUBREAPER)`` makes processes orphaned below the pytest process
(a daemon that double-forked, a worker whose parent was killed) reparent to it instead of to init,
where the watch can still see and end them. Orphans that then exit would stay zombies until reaped,
so a ``SIGCHLD`` handler reaps them as they die: a test that kills a parent and then checks that
its workers are gone sees them gone. The handler reaps only children that the pytest process did not
start itself: the exit status of a child that a test or library waits for is never taken. No thread
is used; the handler runs in the main thread between bytecodes, with ``SA_RESTART`` set so system
calls are not interrupted.
"""

from __future__ import annotations

# signal's C half (no stub): ``signal.getsignal`` tries to turn each handler into a member of
# an enum and catches the failure, an exception per call for a handler such as this one's.
import _signal  # type: ignore[import-not-found,unused-ignore]
import contextlib
import os
import signal
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from pytest_mpcheck._os import atfork, procfs
from pytest_mpcheck._os.stackfile import c_handler, set_signal_handler
from pytest_mpcheck.watch.origins import OriginRecorder

#: Read once: ``signal.SIGCHLD`` is an enum member, an attribute look-up in the child.
_SIGCHLD = int(getattr(signal, "SIGCHLD", 0))

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class OrphanReaper:
    """Reaps, on ``SIGCHLD``, zombie children that this process did not start itself."""

    def __init__(self, recorder: OriginRecorder) -> None:
        self._recorder = recorder
        self._pid = os.getpid()
        self._previous: _Handler = None
        self._handler = self._on_sigchld
        """The handler installed: one bound method, that a forked child finds by identity."""
        self._restored: _Handler = None
        """What a forked child puts back: the handler there was before."""
        self.enabled = False
        """Whether orphans can reparent to this process at all (it is a subreaper)."""
        self.installed = False
        """Whether the handler is this process's ``SIGCHLD`` handler, as last seen (see
        :meth:`keep_installed`); when not, orphans are reaped at the end of each test."""
        self._wanted = False
        """Between :meth:`install` (that succeeded) and :meth:`uninstall`."""
        self.faults: list[str] = []
        """Tracebacks of the handler's own failures, for the session to report (never raised)."""
        self._older: dict[int, float | None] = {}
        """The children this process had when the handler was installed, with their create
        times: nothing noted their start (a conftest's ``pytest_configure``, or its import,
        started them before this plugin's), and whoever started them may wait for them."""

    def install(self) -> bool:
        """Install the handler; ``False`` if this is not the main thread or has no SIGCHLD."""
        if not hasattr(signal, "SIGCHLD"):
            return False
        # Reaped at the end of each test when the handler cannot be installed: read first.
        self._older = {pid: procfs.create_time(pid) for pid in procfs.children(self._pid)}
        try:
            self._previous = signal.signal(signal.SIGCHLD, self._handler)
            signal.siginterrupt(signal.SIGCHLD, False)
        except ValueError:  # not the main thread of the main interpreter
            return False
        self.installed = self._wanted = True
        self._restored = c_handler(self._previous)
        atfork.register(self._restore_in_child)  # until uninstall: os's would keep us alive
        return True

    def keep_installed(self) -> None:
        """Between tests: find out whether code under test replaced the handler.

        A library that resets ``SIGCHLD`` to its default would otherwise leave every orphan
        adopted from then on a zombie, for the rest of the session. The orphans that ended
        meanwhile are reaped now; and when what replaced the handler is ``SIG_DFL`` (for
        ``SIGCHLD``, the signal is ignored) it is put back, which changes nothing that a test
        can see but the reaping. A handler of the user's, or ``SIG_IGN`` (under which the
        kernel reaps every child itself), stays: orphans are then reaped at each test's end.

        One ``getsignal`` when the handler is still there: this runs around every test.
        """
        if not self._wanted or os.getpid() != self._pid:
            return  # never installed, or a fork of this process (pytest-forked's) runs tests
        current = _signal.getsignal(_SIGCHLD)
        if current is self._handler:
            self.installed = True  # perhaps put back by the code that had replaced it
            return
        self.installed = False
        self._reap_safely()
        if isinstance(current, int) and current == _signal.SIG_DFL:
            try:
                self._put_back(current)
            except Exception:  # kept for the session to report, as the handler's own faults
                self.faults.append(traceback.format_exc())

    def _put_back(self, default: int) -> None:
        """Install the handler again over ``default`` (``SIG_DFL``), set by code under test."""
        try:
            signal.signal(signal.SIGCHLD, self._handler)
        except ValueError:  # not the main thread
            return
        signal.siginterrupt(signal.SIGCHLD, False)
        # What the code under test chose is what the session's end puts back, and what the
        # handler no longer calls.
        self._previous = default
        self._restored = c_handler(default)
        self.installed = True

    def uninstall(self) -> None:
        """Put back the handler that was there before."""
        atfork.unregister(self._restore_in_child)
        # Whether the handler is in place now is asked of the signal module (code under test
        # may have put it back since the last look), and only then is it replaced.
        if not self._wanted or os.getpid() != self._pid:
            return
        self._wanted = self.installed = False
        with contextlib.suppress(ValueError):  # not the main thread
            set_signal_handler(_SIGCHLD, self._restored, only_from=self._handler)

    def _restore_in_child(self) -> None:
        # A forked child must not keep a handler meant for the pytest process. Every fork child
        # runs this before its own code: signal's C half, and one handler compared by identity.
        if self._wanted and os.getpid() != self._pid:
            self._wanted = self.installed = False
            try:  # noqa: SIM105 (not contextlib.suppress: see childsetup.prepare)
                set_signal_handler(_SIGCHLD, self._restored, only_from=self._handler)
            except ValueError:
                pass

    def _on_sigchld(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() == self._pid:
            self._reap_safely()
        previous = self._previous
        if callable(previous):
            previous(signum, frame)

    def _reap_safely(self) -> None:
        # This runs in the signal handler, or at the end of a user's process-starting call: an
        # exception raised here would surface in the user's code. The plugin's own fault is kept
        # for the session to report.
        try:
            self.reap_orphans()
        except Exception:
            self.faults.append(traceback.format_exc())

    def take_faults(self) -> list[str]:
        """The tracebacks of the handler's failures since the last call (then forgotten)."""
        faults, self.faults = self.faults, []
        return faults

    def _start_in_progress(self) -> bool:
        """Whether a process-creating call runs in some thread now: the pid of the child it
        forked may not be noted yet, and that child could be taken for an orphan. The reaping
        is then left to the end of the call (:attr:`OriginRecorder.deferred`)."""
        recorder = self._recorder
        if not recorder.starting:
            return False
        recorder.deferred = self._reap_safely
        # A start that ended between the look at the count and the line above did not see the
        # deferral: with no start left to run it, the reaping is not left to one.
        return bool(recorder.starting)

    def _is_older(self, pid: int) -> bool:
        """Whether ``pid`` is still the child it named when the handler was installed (one whose
        create time could not be read then is taken to be)."""
        created = self._older[pid]
        return created is None or procfs.is_same_process(pid, created)

    def reap_orphans(self) -> int:
        """Reap the zombie orphans that reparented to this process; how many were reaped.

        A zombie child is an orphan when no process-creating call of this process forked it, and
        it was not a child already when the handler was installed:
        every way Python starts a process is recorded (:mod:`origins`), in every thread, and while
        any thread is inside such a call the reaping waits for it to finish. A process that a
        forkserver forked for ``Process.start`` is recorded but is an orphan all the same once it
        reparents here (its forkserver died): its ``Popen`` never waits for it. A process forked
        by C code that bypasses every wrapper would look like an orphan: that is the subreaper's
        trade-off (``--mp-subreaper=off`` turns it off).
        """
        if self._start_in_progress():
            return 0
        if not procfs.may_have_exited_child():
            # The usual case: the child whose end raised SIGCHLD was already reaped by its
            # owner, while the session's helpers (a forkserver, a tracker) still run.
            return 0
        reaped = 0
        for pid in procfs.children(self._pid):
            # Again before each record is read: the look at the children reads files, which
            # lets other threads run, and a start begun since the first check may have forked
            # a child that is listed here and not noted yet (one that exits at once, such as
            # `sh -c "exit 3"`, is a zombie already). Its status is its caller's.
            if self._start_in_progress():
                break
            record = self._recorder.records.get(pid)
            if (record is not None and record.forked_here) or not procfs.is_zombie(pid):
                continue
            if pid in self._older and self._is_older(pid):
                continue
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            reaped += bool(done)
        return reaped
