"""The child side of the resource watch: what reports a child's named resources to the run.

A forked child inherits the run's wrapper of ``ResourceTracker._send`` and the descriptor of the
session's resource log; a spawn or forkserver child installs it here before its target runs (see
:mod:`pytest_mpcheck.watch.childsetup` and :mod:`pytest_mpcheck.fixtures.bootstrap`). Light on
purpose: every such child imports it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from multiprocessing import resource_tracker

from pytest_mpcheck._os import scratch

# Not typing.TYPE_CHECKING: a spawned child that never imports typing would pay for it here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any

SHARED_MEMORY = "shared_memory"
SEMAPHORE = "semaphore"
KINDS = (SHARED_MEMORY, SEMAPHORE)


_MARK = "_mpcheck_resource_watch"
"""An attribute of the wrapper: a forked child that inherited it has nothing to install."""

if TYPE_CHECKING:
    #: What a note of the wrapper is told: ``(tracker, op, kind, name, caller's frame)``, with
    #: ``op`` ``"R"`` (registered) or ``"U"`` (unregistered).
    _Note = Callable[[Any, str, str, str, FrameType], None]


def wrap(note: _Note) -> tuple[Callable[..., Any], Callable[[], None]]:
    """Wrap ``ResourceTracker._send`` so that ``note`` learns each registration and unregistration
    once it is sent; the ``_send`` that was there, and the function that puts it back.

    Private, but the one place every registration passes, in 3.10 to 3.13 alike. Each run wraps
    what it finds, so an in-process run inside a test wraps the outer run's wrapper, and both see
    what the inner run's tests make (as the outer run's process watch sees the processes they
    start). Should someone else have wrapped it after us when we undo, theirs stays and ours only
    passes the call on.
    """
    cls = resource_tracker.ResourceTracker
    original: Callable[..., Any] = getattr(cls, "_send")  # noqa: B009
    active = True

    def _send(self: Any, cmd: str, name: str, rtype: str) -> Any:
        result = original(self, cmd, name, rtype)
        if active and rtype in KINDS and cmd in ("REGISTER", "UNREGISTER"):
            with contextlib.suppress(Exception):  # the resource is made whatever befalls us
                note(self, "R" if cmd == "REGISTER" else "U", rtype, name, sys._getframe(1))
        return result

    def undo() -> None:
        nonlocal active
        active = False
        if getattr(cls, "_send") is _send:  # noqa: B009
            setattr(cls, "_send", original)  # noqa: B010

    setattr(_send, _MARK, True)
    setattr(cls, "_send", _send)  # noqa: B010
    return original, undo


def call_site(frame: FrameType) -> str:
    """``file:line`` of the user's code that made the resource."""
    from pytest_mpcheck._os import callsite  # only when a resource is made: children import us

    return callsite.user_site(frame, os.getcwd() + os.sep) or "unknown place"


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")


def write_log_line(
    log_path: str, tracker: Any, op: str, kind: str, name: str, frame: FrameType
) -> None:
    """Append one child's registration or unregistration to the session's resource log (opened
    for the line and closed: a child holds no descriptor of the plugin's)."""
    # Which tracker took it: a forked child whose parent had none running starts its own (a
    # spawned child knows only the descriptor of its parent's: None).
    tracker_pid = getattr(tracker, "_pid", None) or 0
    site = call_site(frame) if op == "R" else ""
    line = "\t".join((op, str(os.getpid()), kind, _clean(name), _clean(site), str(tracker_pid)))
    scratch.append(log_path, (line + "\n").encode("utf-8", "replace"))


def install_in_child(log_path: str) -> None:
    """Log this child's registrations to the session's resource log (a fixture's child).

    Never undone: the child is no pytest run, and ends with its work.
    """
    if getattr(getattr(resource_tracker.ResourceTracker, "_send", None), _MARK, False):
        return  # a forked child: the run's wrapper came with the fork
    wrap(functools.partial(write_log_line, log_path))
