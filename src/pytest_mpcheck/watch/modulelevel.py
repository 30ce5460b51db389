"""Module-level ``multiprocessing`` objects that a spawn or forkserver child made again.

Under spawn and forkserver a child imports the module of its target again: a ``Lock``, ``Queue``,
``Value``, ``Event``... made at module level is then a new one in each child, shared with nobody.
This is deterministic, whatever the timing. :func:`made_again` finds those that the target can
reach (the names its code, and the module functions it calls, read), in the child, before the
target runs. Used by the child check of ``mp_spawn`` (:mod:`pytest_mpcheck.locks.modulelocks`) and
in every other spawn or forkserver child (:mod:`pytest_mpcheck.watch.childsetup`): light on
purpose, since every such child imports it.
"""

from __future__ import annotations

import os
import sys

# Not typing.TYPE_CHECKING: a spawned child that never imports typing would pay for it here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _code_of(value: Any) -> Any | None:
    """The code object of a Python function or method (static and class methods too)."""
    function = getattr(value, "__func__", value)
    return getattr(function, "__code__", None) if callable(function) else None


def _codes_of(value: Any) -> list[Any]:
    """The code of ``value``: a function's, each method's of a class, a callable's ``__call__``.

    Built-in functions and types implemented in C have none (``pow``, ``print``): nothing of
    the module is reachable through them.
    """
    code = _code_of(value)
    if code is not None:
        return [code]
    if isinstance(value, type):
        return [c for member in vars(value).values() if (c := _code_of(member)) is not None]
    call = _code_of(vars(type(value)).get("__call__"))  # a callable instance's class
    return [call] if call is not None else []


def _global_reads(code: Any) -> set[str]:
    """The global names that ``code`` reads (not attribute names, which share ``co_names``)."""
    import dis

    return {
        str(instruction.argval)
        for instruction in dis.get_instructions(code)
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME")
    }


def _reachable_names(target: Any, module: Any) -> set[str]:
    """The global names that ``target`` reads, and those of the functions and classes of
    ``module`` that it reads, transitively: the module-level objects the child can reach."""
    names: set[str] = set()
    pending = _codes_of(target)
    seen: set[int] = set()
    while pending:
        code = pending.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        for name in _global_reads(code):
            if name in names:
                continue
            names.add(name)
            value = vars(module).get(name)
            if value is not None and getattr(value, "__module__", None) == module.__name__:
                pending.extend(_codes_of(value))
        pending.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    return names


_DISPLAY = {"Synchronized": "Value", "SynchronizedArray": "Array", "SynchronizedString": "Array"}


def _shared_kinds() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """``multiprocessing`` types that a module makes again on each import: locks, then others."""
    import multiprocessing.queues
    import multiprocessing.sharedctypes
    import multiprocessing.synchronize as synchronize

    locks = (synchronize.SemLock, synchronize.Condition)
    others = (
        synchronize.Event,
        synchronize.Barrier,
        multiprocessing.sharedctypes.SynchronizedBase,
        multiprocessing.queues.Queue,
        multiprocessing.queues.SimpleQueue,
    )
    return locks, others


def made_again(target: Any, method: str, call: str) -> list[str]:
    """The messages for the module-level objects of ``target``'s module that this child, started
    by ``method``, made again; ``call`` is how the fix passes an object to the child, e.g.
    ``"mp_spawn(target, args=(NAME, ...))"`` (``NAME`` is replaced)."""
    if method == "fork":
        return []
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    if module is None:
        return []
    # Most modules have no such object: a look at the types' modules first, before the imports
    # and the walk of the target's code that finding the reachable ones costs.
    if not any(_maybe_shared(value) for value in list(vars(module).values())):
        return []
    locks, others = _shared_kinds()
    used = _reachable_names(target, module)
    where = getattr(module, "__file__", None) or module.__name__
    here = os.getcwd() + os.sep
    where = where[len(here) :] if where.startswith(here) else where
    messages = []
    for attribute, value in sorted(vars(module).items()):
        inner = _unwrap_checked(value)
        if attribute not in used or not isinstance(inner, locks + others):
            continue
        kind = _DISPLAY.get(type(inner).__name__, type(inner).__name__)
        semaphore = getattr(getattr(inner, "_semlock", None), "name", None)
        made = f"{kind} (semaphore {semaphore})" if semaphore else kind
        if isinstance(inner, locks):
            what = (
                "lock not shared",
                "the test's lock",
                "it excludes neither the test process nor the other children, so their critical "
                "sections can run at the same time",
                "the lock",
                f" (or mp_locks.Lock({attribute!r}) to have it checked)",
            )
        else:
            what = (
                f"{kind} not shared",
                f"the test's {kind}",
                "what one process puts in it, the others never see",
                f"the {kind}",
                "",
            )
        title, whose, effect, thing, checked = what
        messages.append(
            f"{title}: the module-level {kind} {attribute!r} of {where} is not {whose} in this "
            f"child: under the {method!r} start method the child imported {module.__name__!r} "
            f"again, which made a new {made}; {effect}.\n"
            f"    How to fix: create {thing} in the test and pass it to each child as an argument, "
            f"e.g. {call.replace('NAME', attribute)}{checked}; for a Pool, pass it with "
            f"initializer=..., initargs=({attribute},)."
        )
    return messages


def _maybe_shared(value: object) -> bool:
    module = type(value).__module__
    return module.startswith("multiprocessing.") or module == "pytest_mpcheck.locks.checked"


def _unwrap_checked(value: Any) -> Any:
    """A checked lock's ``multiprocessing`` lock (the lock checker is imported only where used)."""
    checked = sys.modules.get("pytest_mpcheck.locks.checked")
    if checked is not None and isinstance(value, checked.CheckedLock):
        return value._lock
    return value
