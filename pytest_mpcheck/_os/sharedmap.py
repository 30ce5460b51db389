"""A file mapped into memory, shared, with no descriptor left open (Linux).

:class:`mmap.mmap` keeps a duplicate of the file's descriptor for as long as the map lives
(Python 3.13 added ``trackfd=False`` to avoid it): a child that the plugin prepares must hold no
descriptor of the plugin's (some suites count a child's open files). So the map is made with
libc's ``mmap`` and the descriptor closed at once; the map stays until the process ends.

Through ``_ctypes``, as :mod:`pytest_mpcheck._os.prctl`, not :mod:`ctypes` itself (see there).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing costs a spawned worker 4 ms

if TYPE_CHECKING:
    from typing import Any

_PROT_READ = 1
_PROT_WRITE = 2
_MAP_SHARED = 1

_functions: Any = None


def _lookup() -> Any:
    """libc's ``mmap``, and a way to see a block of memory as a buffer."""
    import importlib

    ffi: Any = importlib.import_module("_ctypes")

    class Pointer(ffi._SimpleCData):  # type: ignore[misc]
        _type_ = "P"

    class Size(ffi._SimpleCData):  # type: ignore[misc]
        _type_ = "L"

    class Int(ffi._SimpleCData):  # type: ignore[misc]
        _type_ = "i"

    class Offset(ffi._SimpleCData):  # type: ignore[misc]
        _type_ = "q"

    class Byte(ffi._SimpleCData):  # type: ignore[misc]
        _type_ = "B"

    class Function(ffi.CFuncPtr):  # type: ignore[misc]
        _flags_ = ffi.FUNCFLAG_CDECL | ffi.FUNCFLAG_USE_ERRNO
        _restype_ = Pointer
        _argtypes_ = (Pointer, Size, Int, Int, Int, Offset)

    class Program:
        _handle = ffi.dlopen(None, 0)

    blocks: dict[int, Any] = {}

    def view(address: int, size: int) -> memoryview:
        block: Any = blocks.get(size)
        if block is None:
            block = blocks[size] = type("Block", (ffi.Array,), {"_type_": Byte, "_length_": size})
        return memoryview(block.from_address(address)).cast("B")

    return Function(("mmap", Program())), view


def _functions_here() -> Any:
    global _functions
    if _functions is None:
        _functions = False
        if sys.platform.startswith("linux") and sys.maxsize > 2**32:
            try:
                _functions = _lookup()
            except (OSError, AttributeError, ImportError, TypeError):
                _functions = False
    return _functions


def warm_up(size: int) -> None:
    """Look ``mmap`` up now, and make the type of a map of ``size`` bytes, in the parent rather
    than in every forked child."""
    functions = _functions_here()
    if functions:
        functions[1](0, size)  # a view of nothing: only its type is kept


def map_file(path: str, size: int) -> memoryview | None:
    """The file at ``path`` (created, of ``size`` bytes reserved) mapped shared for reading and
    writing, as a buffer of bytes; ``None`` where it cannot be (not Linux, no room)."""
    functions = _functions_here()
    if not functions:
        return None
    mmap, view = functions
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        # Reserved first: a write to an unreserved page of a full tmpfs is a SIGBUS.
        os.posix_fallocate(fd, 0, size)
        address = mmap(None, size, _PROT_READ | _PROT_WRITE, _MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
    if not address or address == 2**64 - 1:  # MAP_FAILED
        return None
    result: memoryview = view(address, size)
    return result
