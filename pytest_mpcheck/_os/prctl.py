"""libc's ``prctl`` (Linux): the subreaper of the pytest process and the death signal of children.

Looked up once per process: a forked child inherits it ready (``dlopen`` is slow), and the
running program's symbols include libc's, so ``ctypes.util.find_library``, which would run
``ldconfig`` and a compiler in subprocesses, is never needed.

Through ``_ctypes``, the C half of :mod:`ctypes`, not :mod:`ctypes` itself: a run of pytest
in-process (``pytester.runpytest_inprocess``) forgets the modules it imported, and the next run
imports them again. :mod:`ctypes` cannot be imported twice without keeping about 300 objects of
each import alive in ``_ctypes``'s caches; ``_ctypes``, an extension module, is kept by the
interpreter, and the two small types below are all this module makes.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37

_function: Any = None


def _lookup() -> Any:
    """``prctl`` of the running program (libc), as a C function returning an ``int``."""
    import importlib

    # Typed loosely on purpose: the types made here are the FFI's, which typeshed cannot know.
    ffi: Any = importlib.import_module("_ctypes")

    class Int(ffi._SimpleCData):  # type: ignore[misc]
        _type_ = "i"

    class Function(ffi.CFuncPtr):  # type: ignore[misc]
        _flags_ = ffi.FUNCFLAG_CDECL | ffi.FUNCFLAG_USE_ERRNO
        _restype_ = Int

    class Program:
        _handle = ffi.dlopen(None, 0)

    function: Any = Function(("prctl", Program()))
    function.Int = Int
    function.byref = ffi.byref
    return function


def _prctl() -> Any | None:
    """libc's ``prctl``, or ``None`` where there is none (not Linux)."""
    global _function
    if _function is None:
        _function = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError, ImportError, TypeError):
                _function = _lookup()
    return _function or None


def get_subreaper() -> bool | None:
    """Whether this process is a child subreaper (``None`` where the platform has no such thing)."""
    function = _prctl()
    if function is None:
        return None
    value = function.Int(0)
    if function(_PR_GET_CHILD_SUBREAPER, function.byref(value), 0, 0, 0) != 0:
        return None
    return bool(value.value)


def set_subreaper(enabled: bool) -> bool:
    """Make this process a child subreaper or not; ``False`` where the platform cannot."""
    function = _prctl()
    if function is None:
        return False
    return bool(function(_PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0) == 0)


def set_death_signal(signum: int) -> bool:
    """Have the kernel send ``signum`` to this process when the thread that forked it ends;
    ``False`` where the platform cannot."""
    function = _prctl()
    if function is None:
        return False
    return bool(function(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0)


def warm_up() -> None:
    """Look ``prctl`` up now, in the parent, rather than in every forked child."""
    _prctl()
