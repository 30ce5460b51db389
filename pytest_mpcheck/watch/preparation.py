"""Every Python child the pytest process starts can be asked for its stacks, without py-spy.

A fork child runs the at-fork callback, a spawn or forkserver child unpickles
:class:`~pytest_mpcheck.watch.childsetup.ChildSetup` with its process object (put there by the
wrapper of ``Process.start``, see :mod:`pytest_mpcheck.watch.origins`): either way, before the
user's code runs, it answers the stack signal by writing the stacks of all its threads to the
session's stack file. That covers ``Process`` of every context, the workers of ``Pool`` and
``ProcessPoolExecutor``, and ``os.fork``; a program that a child runs with ``exec`` (a
``subprocess``) is a program of its own, read with py-spy where it is installed.

A child whose ``faulthandler`` is off (every spawn or forkserver child; a fork child only when
pytest's own faulthandler plugin is off) also writes its Python traceback to a crash file of its
own should a fatal signal kill it; the run tells it in the test's report (see
:meth:`ChildPreparation.crash_traceback`).

What it costs a child: an ``open`` and a ``sigaction`` or two. The signal is a real-time one that is
only sent when a report needs the child's stack, after the test, to a process that the watch found
left over and checked is still that child (see :mod:`pytest_mpcheck._os.stacks`).
"""

from __future__ import annotations

import contextlib
import os

from pytest_mpcheck._os import atfork, scratch
from pytest_mpcheck._os.stackfile import crash_path, stack_path
from pytest_mpcheck.watch.childsetup import ChildSetup, prepare


class ChildPreparation:
    """The session's stack file, and what makes each new child answer to it."""

    def __init__(self) -> None:
        self.directory: str | None = None
        self.requests: ChildSetup | None = None
        """Put in a spawn or forkserver process object before it starts; ``None`` until
        :meth:`install`."""

    def install(self, resource_log: str | None) -> None:
        """Create the stack file; children started from now on answer to it (and report their
        named resources to ``resource_log``)."""
        self.directory = scratch.make_directory("stacks")
        path = stack_path(self.directory)
        # The children open it: creating a file costs more than opening one.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
        self.requests = ChildSetup(path, resource_log)
        atfork.register(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        if self.requests is not None:
            prepare(self.requests.stack_path)

    def crash_traceback(self, pid: int) -> str | None:
        """The Python traceback that child ``pid`` wrote as a fatal signal killed it, if any.

        Its crash file is removed either way: call this once the child is gone.
        """
        if self.directory is None:
            return None
        path = crash_path(self.directory, pid)
        try:
            with open(path, "rb") as crash:
                text = crash.read(1 << 20).decode("utf-8", "replace")
        except OSError:
            return None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return text.strip() or None

    def uninstall(self) -> None:
        """Stop preparing children and remove the file (children still alive keep theirs open)."""
        atfork.unregister(self._after_fork_in_child)
        self.requests = None
        if self.directory is not None:
            with contextlib.suppress(OSError):
                scratch.remove_directory(self.directory)
            self.directory = None
