"""libc's ``prctl`` (Linux): the subreaper of the pytest process and the death signal of children.

Looked up once per process, through :mod:`pytest_mpcheck._os.libc` (no :mod:`ctypes`).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from pytest_mpcheck._os import libc

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37

_function: Any = None


def _lookup() -> Any:
    """``prctl`` of the running program (libc), as a C function returning an ``int``."""
    integer = libc.scalar("i")
    function: Any = libc.function("prctl", integer)
    function.Int = integer
    function.byref = libc.ffi().byref
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
