"""libc's functions, called from Python without :mod:`ctypes` (Linux).

Through ``_ctypes``, the C half of :mod:`ctypes`, not :mod:`ctypes` itself: a run of pytest
in-process (``pytester.runpytest_inprocess``) forgets the modules it imported, and the next run
imports them again. :mod:`ctypes` cannot be imported twice without keeping about 300 objects of
each import alive in ``_ctypes``'s caches; ``_ctypes``, an extension module, is kept by the
interpreter, and the few small types made here are all the plugin makes.

The running program's symbols include libc's, so ``ctypes.util.find_library``, which would run
``ldconfig`` and a compiler in subprocesses, is never needed. Looked up once per process (the
callers keep what they got): a forked child inherits it ready (``dlopen`` is slow).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing costs a spawned child 4 ms

if TYPE_CHECKING:
    from typing import Any

_scalars: dict[str, Any] = {}


def ffi() -> Any:
    """``_ctypes``, typed loosely on purpose: typeshed cannot know the types made from it."""
    import importlib

    return importlib.import_module("_ctypes")


def scalar(code: str) -> Any:
    """The C scalar type of ``struct`` code ``code`` (``"i"`` an int, ``"P"`` a pointer...)."""
    found = _scalars.get(code)
    if found is None:
        found = _scalars[code] = type(f"C_{code}", (ffi()._SimpleCData,), {"_type_": code})
    return found


def function(name: str, restype: Any, argtypes: tuple[Any, ...] | None = None) -> Any:
    """libc's function ``name``, returning ``restype``; raises ``AttributeError`` if missing."""
    module = ffi()
    attributes: dict[str, Any] = {
        "_flags_": module.FUNCFLAG_CDECL | module.FUNCFLAG_USE_ERRNO,
        "_restype_": restype,
    }
    if argtypes is not None:
        attributes["_argtypes_"] = argtypes
    program = type("Program", (), {"_handle": module.dlopen(None, 0)})
    return type(f"C_{name}", (module.CFuncPtr,), attributes)((name, program()))
