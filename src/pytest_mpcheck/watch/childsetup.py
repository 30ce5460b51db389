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
  session's message log: they are not shared (:mod:`pytest_mpcheck.watch.modulelevel`);
- says, once per queue, which ``multiprocessing`` ``Queue`` (or ``JoinableQueue``) it began to
  feed (its first ``put()`` starts the queue's feeder thread), in the session's feeder log: should
  a signal end it, that queue can no longer be trusted (:mod:`pytest_mpcheck.watch.queues`).

It holds no descriptor of the plugin's open: a child's open files are its own (some suites count
them). Light on purpose: every such child imports this module.
"""

from __future__ import annotations

import faulthandler
import os
import sys

from pytest_mpcheck._os import scratch
from pytest_mpcheck._os.stackfile import answer_quietly_without_descriptor

TYPE_CHECKING = False  # not typing's: every prepared child imports this module
if TYPE_CHECKING:
    from collections.abc import Callable

#: How the fix passes an object to a plain ``Process`` (``NAME``: the object's name).
PLAIN_CALL = "Process(target=..., args=(NAME, ...))"


def prepare(
    stack_path: str,
    resource_log: str | None = None,
    messages: str | None = None,
    target: object = None,
    method: str | None = None,
    queues: tuple[object, object] | None = None,
    feeders: str | None = None,
) -> None:
    """Child side: see the module docstring. A failure only costs the child what it would
    have given (its stack, its resources, its task notes, its messages): it never keeps it from
    running.

    Every fork child runs this before its own code, and each object it makes or touches is a
    page the kernel copies for that child: plain ``try`` blocks (not ``contextlib.suppress``),
    and nothing called that has nothing to do.
    """
    answer_quietly_without_descriptor(stack_path)
    try:
        # A crash's Python traceback goes to the child's own standard error, a descriptor it
        # has anyway (a fork child would otherwise write to pytest's copy of the terminal): where
        # pytest captures it, the report of the test that started the child shows it.
        faulthandler.enable(file=2, all_threads=True)
    except Exception:
        pass
    if queues is not None:
        try:
            from pytest_mpcheck.watch.tasknotes import note_tasks

            note_tasks(os.path.dirname(stack_path), *queues)
        except Exception:
            pass
    if feeders is not None and _QUEUES_MODULE in sys.modules:
        try:
            watch_feeders(feeders)
        except Exception:
            pass
    if resource_log is not None:
        from pytest_mpcheck.watch import resourcelog

        try:
            resourcelog.install_in_child(resource_log)
        except Exception:
            pass
    if messages is not None and target is not None and method is not None:
        try:
            _check_module_level(messages, target, method)
        except Exception:
            pass


def _check_module_level(messages: str, target: object, method: str) -> None:
    from pytest_mpcheck.watch.modulelevel import made_again

    found = made_again(target, method, PLAIN_CALL)
    if not found:
        return
    import json  # only now: some 4 ms in a spawned child, which seldom has anything to say

    for message in found:  # one line per message
        scratch.append(messages, f"{os.getpid()}\t{json.dumps(message)}\n".encode())


#: The module of ``multiprocessing``'s queues: nothing to watch in a child that has not imported it.
_QUEUES_MODULE = "multiprocessing.queues"


def queue_key(queue: object) -> str | None:
    """What names a ``multiprocessing`` queue alike in every process that shares it, from the
    semaphore of its read lock: its name, which a spawn or forkserver child rebuilds it by; or,
    for a fork context's (unlinked at once, so unnamed), its handle, the same in a fork child.
    ``None`` where there is neither."""
    semlock = queue._rlock._semlock  # type: ignore[attr-defined]
    name = semlock.name
    if isinstance(name, str) and name:
        return name
    handle = semlock.handle
    return f"handle-{handle}" if isinstance(handle, int) and handle else None


def watch_feeders(path: str) -> None:
    """Append ``pid<TAB>start<TAB>key`` to the feeder log at ``path`` each time this process
    starts the feeder thread of a ``multiprocessing`` ``Queue`` (or ``JoinableQueue``): once per
    queue and process, at its first ``put()``, never per put. ``start`` is when the process
    started, in clock ticks since boot (empty if unknown), which tells it from a later process
    given its pid; ``key`` is :func:`queue_key`, the same in every process that shares the queue.

    Only where ``multiprocessing.queues`` is imported already: a spawn or forkserver child that
    unpickled a queue with its process object (a ``Queue`` reaches such a child only that way).
    Nothing is imported for a child without one. Called once per such child, by :func:`prepare`
    as it unpickles its process object; a fork child inherits the wrapper that the session put
    in place instead (:func:`watch_feeders_of_forks`), and so does a fork of a spawned child.
    """
    queues = sys.modules.get(_QUEUES_MODULE)
    cls = getattr(queues, "Queue", None)
    original = getattr(cls, "_start_thread", None)
    if original is None:
        return  # no queue here
    setattr(cls, "_start_thread", _noting_feeders(original, [path], None))  # noqa: B010


def watch_feeders_of_forks(path: str) -> Callable[[], None]:
    """Session side: :func:`watch_feeders` for every child that this process forks from now on,
    which inherits the wrapper, so that a fork child runs nothing for it before its own code;
    the session's own queues are not noted. Returns what undoes it.

    Each run wraps what it finds, as the queue watch does: an in-process run inside a test wraps
    the outer run's wrapper, and a child forked then notes its feeders for both.
    """
    import multiprocessing.queues

    cls = multiprocessing.queues.Queue
    original = cls._start_thread  # type: ignore[attr-defined]
    logs = [path]
    wrapper = _noting_feeders(original, logs, os.getpid())

    def undo() -> None:
        if cls._start_thread is wrapper:  # type: ignore[attr-defined]
            setattr(cls, "_start_thread", original)  # noqa: B010
        else:  # someone wrapped it after us: theirs stays, ours only passes the call on
            logs.clear()

    setattr(cls, "_start_thread", wrapper)  # noqa: B010
    return undo


def _noting_feeders(
    original: Callable[[object], None], logs: list[str], session: int | None
) -> Callable[[object], None]:
    """A ``Queue._start_thread`` that calls ``original``, then notes the queue in ``logs``
    (in a process other than ``session``)."""

    def _start_thread(self: object) -> None:
        original(self)
        try:
            pid = os.getpid()
            if pid == session:
                return
            key = queue_key(self)
            if key:
                # With its start: a later process given the same pid is another feeder.
                from pytest_mpcheck._os.procfs import start_ticks

                start = start_ticks(pid)
                line = f"{pid}\t{'' if start is None else start}\t{key}\n".encode()
                for log in logs:
                    scratch.append(log, line)
        except Exception:
            pass  # the child feeds its queue whatever befalls the note

    return _start_thread


class ChildSetup:
    """Put in a process object before a spawn or forkserver start: unpickled in the child, before
    its target runs (the target, unpickled first, has imported its module), it calls
    :func:`prepare` there.

    Spawn and forkserver children run no code of the parent's but what they unpickle: the
    process object itself is the one thing every such child unpickles first, in every context,
    pool and executor.
    """

    __slots__ = ("arguments",)

    def __init__(
        self,
        stack_path: str,
        resource_log: str | None,
        messages: str | None = None,
        target: object = None,
        method: str | None = None,
        queues: tuple[object, object] | None = None,
        feeders: str | None = None,
    ) -> None:
        # The arguments of prepare(), in its order. queues: a pool's or executor's worker's task
        # and result queues (the process object's own, pickled once with it).
        self.arguments = (stack_path, resource_log, messages, target, method, queues, feeders)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return prepare, self.arguments
