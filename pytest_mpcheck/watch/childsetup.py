"""What every child of the pytest process runs first, before the user's code (child side).

A fork child runs :func:`prepare` from the at-fork callback of
:class:`~pytest_mpcheck.watch.preparation.ChildPreparation`; a spawn or forkserver child unpickles a
:class:`ChildSetup` with its process object, which calls it. Either way the child:

- answers the stack signal, writing the stacks of all its threads to the session's stack file;
- keeps its Python traceback, should a fatal signal kill it (where its faulthandler is off);
- reports the named resources it makes to the session's resource log (a spawn or forkserver
  child; a fork child inherited the run's wrapper).

Light on purpose: every such child imports this module.
"""

from __future__ import annotations

import contextlib
import os

from pytest_mpcheck._os.stackfile import answer_quietly, record_crashes


def prepare(stack_path: str, resource_log: str | None = None) -> None:
    """Child side: see the module docstring. A failure only costs the child what it would
    have given (its stack, its traceback, its resources): it never keeps it from running."""
    answer_quietly(stack_path)
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        record_crashes(os.path.dirname(stack_path))
    if resource_log is not None:
        from pytest_mpcheck.watch import resourcelog

        with contextlib.suppress(Exception):
            resourcelog.install_in_child(resource_log)


class ChildSetup:
    """Put in a process object before a spawn or forkserver start: unpickled in the child, before
    its target runs, it calls :func:`prepare` there.

    Spawn and forkserver children run no code of the parent's but what they unpickle: the
    process object itself is the one thing every such child unpickles first, in every context,
    pool and executor.
    """

    __slots__ = ("resource_log", "stack_path")

    def __init__(self, stack_path: str, resource_log: str | None) -> None:
        self.stack_path = stack_path
        self.resource_log = resource_log

    def __reduce__(self) -> tuple[object, tuple[str, str | None]]:
        return prepare, (self.stack_path, self.resource_log)
