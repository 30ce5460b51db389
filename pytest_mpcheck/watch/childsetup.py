"""What every child of the pytest process runs first, before the user's code (child side).

A fork child runs :func:`prepare` from the at-fork callback of
:class:`~pytest_mpcheck.watch.preparation.ChildPreparation`; a spawn or forkserver child
unpickles a :class:`ChildSetup` with its process object, which calls it. Either way the child:

- answers the stack signal, writing the stacks of all its threads to the session's stack file;
- writes a crash's Python traceback (faulthandler) to its own standard error, which pytest
  captures for the test's report;
- reports the named resources it makes to the session's resource log (a spawn or forkserver
  child; a fork child inherited the run's wrapper);
- when it is the worker of a ``Pool`` or a ``ProcessPoolExecutor``, notes each task it takes,
  so that the report of its death says which task it was running
  (:mod:`pytest_mpcheck.watch.tasknotes`);
- says which module-level ``multiprocessing`` objects (a ``Lock``, a ``Queue``...) its target
  can reach that the re-import of its module made again (a spawn or forkserver child), in the
  session's message log: they are not shared (:mod:`pytest_mpcheck.watch.modulelevel`).

It holds no descriptor of the plugin's open: a child's open files are its own (some suites count
them). Light on purpose: every such child imports this module.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os

from pytest_mpcheck._os import scratch
from pytest_mpcheck._os.stackfile import answer_quietly_without_descriptor

#: How the fix passes an object to a plain ``Process`` (``NAME``: the object's name).
PLAIN_CALL = "Process(target=..., args=(NAME, ...))"


def prepare(
    stack_path: str,
    resource_log: str | None = None,
    messages: str | None = None,
    target: object = None,
    method: str | None = None,
    queues: tuple[object, object] | None = None,
) -> None:
    """Child side: see the module docstring. A failure only costs the child what it would
    have given (its stack, its resources, its task notes, its messages): it never keeps it from
    running."""
    answer_quietly_without_descriptor(stack_path)
    with contextlib.suppress(Exception):
        # A crash's Python traceback goes to the child's own standard error, a descriptor it
        # has anyway (a fork child would otherwise write to pytest's copy of the terminal): where
        # pytest captures it, the report of the test that started the child shows it.
        faulthandler.enable(file=2, all_threads=True)
    if queues is not None:
        from pytest_mpcheck.watch.tasknotes import note_tasks

        note_tasks(os.path.dirname(stack_path), *queues)
    if resource_log is not None:
        from pytest_mpcheck.watch import resourcelog

        with contextlib.suppress(Exception):
            resourcelog.install_in_child(resource_log)
    if messages is not None and target is not None and method is not None:
        with contextlib.suppress(Exception):
            _check_module_level(messages, target, method)


def _check_module_level(messages: str, target: object, method: str) -> None:
    from pytest_mpcheck.watch.modulelevel import made_again

    found = made_again(target, method, PLAIN_CALL)
    if not found:
        return
    import json  # only now: some 4 ms in a spawned child, which seldom has anything to say

    for message in found:  # one line per message
        scratch.append(messages, f"{os.getpid()}\t{json.dumps(message)}\n".encode())


class ChildSetup:
    """Put in a process object before a spawn or forkserver start: unpickled in the child, before
    its target runs (the target, unpickled first, has imported its module), it calls
    :func:`prepare` there.

    Spawn and forkserver children run no code of the parent's but what they unpickle: the
    process object itself is the one thing every such child unpickles first, in every context,
    pool and executor.
    """

    __slots__ = ("messages", "method", "queues", "resource_log", "stack_path", "target")

    def __init__(
        self,
        stack_path: str,
        resource_log: str | None,
        messages: str | None = None,
        target: object = None,
        method: str | None = None,
        queues: tuple[object, object] | None = None,
    ) -> None:
        self.stack_path = stack_path
        self.queues = queues
        """A pool's or executor's worker: its task and result queues (the process object's own,
        pickled once with it)."""
        self.resource_log = resource_log
        self.messages = messages
        self.target = target
        self.method = method

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return prepare, (
            self.stack_path,
            self.resource_log,
            self.messages,
            self.target,
            self.method,
            self.queues,
        )
