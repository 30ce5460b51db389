"""Work done in a forked child right after ``os.fork``, for the runs active in its parent.

A callback given to ``os.register_at_fork`` can never be removed: one registered per run (a bound
method of the run's objects) would keep every run of the process alive, however many
``pytester.runpytest()`` calls a suite makes, and every fork would call them all. The plugin
registers one callback per process instead; it calls those that :func:`register` added and
:func:`unregister` has not taken away yet (each run takes its own away at its cleanup), and
holds them weakly, so that a run that never cleaned up is not kept alive either.

The registry survives a second import of this module: pytester's in-process runs take out of
``sys.modules`` the modules that a run imported, so a session that does not load the plugin itself
imports it afresh for each inner run. It is kept on the ``os`` module, beside the interpreter's own
list of at-fork callbacks, under a private name; the module imports nothing of the plugin, so the
one callback registered keeps nothing else of it alive.
"""

from __future__ import annotations

import os
import traceback
import types
import weakref
from collections.abc import Callable, Hashable
from typing import Any

_ATTRIBUTE = "_pytest_mpcheck_after_fork_in_child"

_Entry = tuple["weakref.ref[Any] | None", "weakref.ref[Callable[..., object]]"]
"""A callback, held weakly: the object of a method (``None`` for a function), and the function."""

_Callbacks = dict[Hashable, _Entry]
"""The callbacks, by :func:`_key`."""


def _callbacks() -> _Callbacks:
    callbacks: _Callbacks | None = getattr(os, _ATTRIBUTE, None)
    if callbacks is None:
        callbacks = {}
        setattr(os, _ATTRIBUTE, callbacks)
        os.register_at_fork(after_in_child=_after_fork_in_child)
    return callbacks


def _after_fork_in_child() -> None:
    # Every fork child runs this before its own code, and each page that a Python object it
    # touches lies on is copied for the child: plain weak references (called in C), no
    # ``WeakMethod`` and no bound method made.
    for owner_reference, function_reference in tuple(getattr(os, _ATTRIBUTE, {}).values()):
        function = function_reference()
        if function is None:
            continue
        try:
            if owner_reference is None:
                function()
            else:
                owner = owner_reference()
                if owner is not None:
                    function(owner)
        except Exception:
            # As the interpreter does when one of its own at-fork callbacks fails: say so, go on.
            traceback.print_exc()


def _key(callback: Callable[[], object]) -> Hashable:
    # By name, not by identity: the function of a module imported again replaces the old one's.
    owner = getattr(callback, "__self__", None)
    function = getattr(callback, "__func__", callback)
    return (id(owner) if owner is not None else None, function.__module__, function.__qualname__)


def register(callback: Callable[[], object]) -> None:
    """Call ``callback`` in each child forked from now on, until :func:`unregister`.

    It is held weakly, so that a run that is gone is not kept alive by it: a module's function,
    or a method of an object that lives as long as the registration should. A function of the
    same name (the module imported again) replaces it.
    """
    entry: _Entry
    if isinstance(callback, types.MethodType):
        entry = (weakref.ref(callback.__self__), weakref.ref(callback.__func__))
    else:
        entry = (None, weakref.ref(callback))
    _callbacks()[_key(callback)] = entry


def unregister(callback: Callable[[], object]) -> None:
    """Stop calling ``callback``; nothing happens if it was not registered."""
    _callbacks().pop(_key(callback), None)


def registered() -> int:
    """How many callbacks forked children run now (those whose owner is gone are dropped)."""
    callbacks = _callbacks()
    for key, (owner_reference, function_reference) in list(callbacks.items()):
        if function_reference() is None or (
            owner_reference is not None and owner_reference() is None
        ):
            del callbacks[key]
    return len(callbacks)
