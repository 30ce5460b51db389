"""Work done in a forked child right after ``os.fork``, for the runs active in its parent.

A callback given to ``os.register_at_fork`` can never be removed: one registered per run (a bound
method of the run's objects) would keep every run of the process alive, however many
``pytester.runpytest()`` calls a suite makes, and every fork would call them all. The plugin
registers one callback per process instead; it calls those that :func:`register` added and
:func:`unregister` has not taken away yet (each run takes its own away at its cleanup).

The registry survives a second import of this module: pytester's in-process runs take out of
``sys.modules`` the modules that a run imported, so a session that does not load the plugin itself
imports it afresh for each inner run. It is kept on the ``os`` module, beside the interpreter's own
list of at-fork callbacks, under a private name; the module has no other import, so the one
callback registered keeps nothing else of the plugin alive.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Hashable

_ATTRIBUTE = "_pytest_mpcheck_after_fork_in_child"


def _callbacks() -> dict[Hashable, Callable[[], object]]:
    callbacks: dict[Hashable, Callable[[], object]] | None = getattr(os, _ATTRIBUTE, None)
    if callbacks is None:
        callbacks = {}
        setattr(os, _ATTRIBUTE, callbacks)
        os.register_at_fork(after_in_child=_after_fork_in_child)
    return callbacks


def _after_fork_in_child() -> None:
    for callback in list(getattr(os, _ATTRIBUTE, {}).values()):
        try:
            callback()
        except Exception:
            # As the interpreter does when one of its own at-fork callbacks fails: say so, go on.
            traceback.print_exc()


def register(key: Hashable, callback: Callable[[], object]) -> None:
    """Call ``callback`` in each child forked from now on, until ``unregister(key)``.

    A second registration under the same key replaces the first (a module imported again).
    """
    _callbacks()[key] = callback


def unregister(key: Hashable) -> None:
    """Stop calling what was registered under ``key``; nothing happens if nothing was."""
    _callbacks().pop(key, None)


def registered() -> int:
    """How many callbacks forked children run now."""
    return len(_callbacks())
