"""Who still holds a process object: a pool, an executor, a module's global, or nobody.

A process left running at the end of a test is ended at once only when nobody can use it any
more. One still held by a live object (a ``Pool`` or executor the suite keeps in a global, a
reusable executor) would break the later tests that use that object if it were killed under
them: it is reported and handed to the session instead. The question is asked of the garbage
collector (who refers to the ``Process`` object), only for leftovers, and in a few passes over
the heap whatever their number.

A process that another thread has just started and not yet filed (a pool's thread between a
replacement worker's ``start()`` and its ``append`` to the pool's list) is held only by a local
variable of that running thread: the running thread is then its holder.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import subprocess
import sys
import threading
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pytest_mpcheck._os import callsite
from pytest_mpcheck.watch.exitguard import families_children

#: Objects that only pass a reference on: the holder is what refers to them.
_CONTAINERS = (
    list,
    tuple,
    dict,
    set,
    frozenset,
    collections.deque,
    types.CellType,
    types.MethodType,
)

#: How many containers deep to look for the holder (a list in an object's ``__dict__``).
_DEPTH = 3


@dataclass
class Holder:
    """A live object that still refers to a process object."""

    owner: Any
    siblings: list[Any] = field(default_factory=list)
    """Other process objects in the same container (the pool's other workers)."""

    def describe(self) -> str:
        """How a report names the holder."""
        owner = self.owner
        if isinstance(owner, types.ModuleType):
            return f"a global of module {owner.__name__}"
        if isinstance(owner, threading.Thread):
            return f"the running thread {owner.name!r}"
        kind = type(owner)
        return f"a live {kind.__module__}.{kind.__qualname__}"

    def keeps_its_processes(self) -> bool:
        """Whether the holder is a pool or an executor still open (not closed, shut down or
        broken): its workers do not end by themselves. A ``Pool`` (of any family) in its
        ``RUN`` state; a ``ProcessPoolExecutor``, the standard library's or loky's, neither
        shut down nor broken."""
        owner = self.owner
        if hasattr(owner, "_pool") and hasattr(owner, "_state"):
            return getattr(owner, "_state", None) == "RUN"
        flags = getattr(owner, "_flags", None)  # loky
        if flags is not None and hasattr(flags, "shutdown"):
            return flags.shutdown is False and getattr(flags, "broken", True) is None
        if hasattr(owner, "_shutdown_thread") and hasattr(owner, "_broken"):
            return owner._shutdown_thread is False and owner._broken is False
        return False


def _bookkeeping() -> list[Any]:
    """Where the standard library keeps every process, held or not: not an owner."""
    active = getattr(subprocess, "_active", None)
    return [
        *([active] if active is not None else []),
        *(children for _, children in families_children()),
    ]


def _is_process(obj: Any) -> bool:
    return hasattr(obj, "pid") and (hasattr(obj, "exitcode") or hasattr(obj, "returncode"))


def _members(container: Any) -> Iterable[Any]:
    if isinstance(container, dict):
        return container.values()
    if isinstance(container, (list, tuple, set, frozenset, collections.deque)):
        return container
    return ()


def live_holders(handles: list[Any], collect: bool = True) -> dict[int, Holder]:
    """For each process object still held by a live object, that holder (by ``id(handle)``).

    Frames (a failed test's traceback keeps its locals) and the standard library's lists of
    all processes are not holders. Unreachable cycles are collected first, so that a pool only
    kept alive by its own cycles is not taken for one someone still uses (unless ``collect`` is
    false: in warn mode the plugin changes nothing, not even when finalizers run). The caller
    must hold the handles only in ``handles`` and in local variables while it asks.
    """
    if not handles:
        return {}
    if collect:
        gc.collect()
    by_id = {id(handle): handle for handle in handles}
    skip = {id(item) for item in _bookkeeping()} | {id(handles), id(by_id)}
    # Each object reached so far, and the ids of the handles it leads back to.
    frontier: dict[int, Any] = dict(by_id)
    leads_of: dict[int, list[int]] = {key: [key] for key in by_id}
    container_of: dict[int, Any] = {}
    found: dict[int, Holder] = {}
    for _ in range(_DEPTH):
        targets = list(frontier.values())
        referrers = gc.get_referrers(*targets)
        skip |= {id(referrers), id(targets), id(frontier)}
        reached: dict[int, Any] = {}
        reached_leads: dict[int, list[int]] = {}
        for referrer in referrers:
            key = id(referrer)
            if key in skip or key in frontier or isinstance(referrer, _NOT_HOLDERS):
                continue
            referents = {id(r) for r in gc.get_referents(referrer)}
            leads = [h for target in referents & frontier.keys() for h in leads_of[target]]
            if not leads:
                continue
            if isinstance(referrer, _CONTAINERS):
                reached[key] = referrer
                reached_leads.setdefault(key, []).extend(leads)
                for handle_id in leads:
                    if any(member is by_id[handle_id] for member in _members(referrer)):
                        container_of.setdefault(handle_id, referrer)
                continue
            if type(referrer).__module__.startswith(_FRAMEWORK):
                continue  # pytest's cache of a fixture's value, an item's arguments
            for handle_id in leads:
                if handle_id in found:
                    continue
                handle = by_id[handle_id]
                siblings = [
                    other
                    for other in _members(container_of.get(handle_id))
                    if other is not handle and _is_process(other)
                ]
                found[handle_id] = Holder(referrer, siblings)
        leads_of = {
            key: [h for h in reached_leads[key] if h not in found]
            for key in reached
            if any(h not in found for h in reached_leads[key])
        }
        frontier = {key: reached[key] for key in leads_of}
        if not frontier:
            break
    _held_by_running_threads(by_id, found)
    return found


def segment_holders(names: Iterable[str], collect: bool = True) -> dict[str, Holder]:
    """For each shared memory segment of ``names`` (as the resource tracker names it) that a
    live ``SharedMemory`` object of this process still refers to, that object's holder.

    Such a segment is still in use: a module keeps it in a global, and the later tests attach
    to it by name. One pass over the heap finds the objects (each refers to its class), then
    :func:`live_holders` tells who holds them; only for leaked segments, never per test.
    """
    module = sys.modules.get("multiprocessing.shared_memory")
    base = getattr(module, "SharedMemory", None)
    wanted = set(names)
    if not isinstance(base, type) or not wanted:
        return {}  # never imported: no object of it exists
    if collect:
        gc.collect()
    classes: list[type] = [base]
    for cls in classes:  # grows as it goes: the subclasses of subclasses
        subclasses: list[type] = cls.__subclasses__()
        for sub in subclasses:
            if sub not in classes:
                classes.append(sub)
    exact = set(classes)  # compared by type: no user code (a proxy's __class__) runs
    segments = [
        obj
        for obj in gc.get_referrers(*classes)
        if type(obj) in exact and _segment_name(obj) in wanted
    ]
    name_of = {id(segment): _segment_name(segment) for segment in segments}
    found = live_holders(segments, collect=False)
    return {str(name_of[key]): holder for key, holder in found.items()}


def _segment_name(segment: Any) -> str | None:
    # The name with its leading slash, as it was registered (the ``name`` property drops it).
    try:
        name = object.__getattribute__(segment, "_name")
    except Exception:
        return None
    return name if isinstance(name, str) else None


def _held_by_running_threads(by_id: dict[int, Any], found: dict[int, Holder]) -> None:
    """Add to ``found`` the handles that a local variable of another running thread holds.

    The thread asking (the test's, now in its teardown) and the plugin's own frames are left
    out: they hold the handles only to ask about them.
    """
    current = threading.get_ident()
    threads = {thread.ident: thread for thread in threading.enumerate()}
    for ident, top in sys._current_frames().items():
        thread = threads.get(ident)
        if ident == current or thread is None:
            continue
        frame: types.FrameType | None = top
        while frame is not None:
            if not frame.f_code.co_filename.startswith(callsite.PLUGIN_PACKAGE):
                # An odd object among the locals (a property that raises) costs only this frame.
                with contextlib.suppress(Exception):
                    values = list(frame.f_locals.values())
                    for handle in values:
                        if id(handle) in by_id and id(handle) not in found:
                            found[id(handle)] = Holder(thread, _processes_among(values, handle))
            frame = frame.f_back


def _processes_among(values: list[Any], handle: Any) -> list[Any]:
    """The process objects other than ``handle`` in ``values`` or in a container among them."""
    siblings: dict[int, Any] = {}
    for value in values:
        for other in (value, *_members(value)):
            if other is not handle and _is_process(other):
                siblings[id(other)] = other
    return list(siblings.values())


#: Modules whose objects keep a test's values only until its teardown is over.
_FRAMEWORK = ("_pytest.", "pluggy.")

_NOT_HOLDERS = (types.FrameType, types.GeneratorType, types.CoroutineType)
