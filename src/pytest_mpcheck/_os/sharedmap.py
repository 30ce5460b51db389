"""A file mapped into memory, shared, with no descriptor left open (Linux).

:class:`mmap.mmap` keeps a duplicate of the file's descriptor for as long as the map lives
(Python 3.13 added ``trackfd=False`` to avoid it): a child that the plugin prepares must hold no
descriptor of the plugin's (some suites count a child's open files). So the map is made with
libc's ``mmap`` and the descriptor closed at once; the map stays until the process ends.

Through :mod:`pytest_mpcheck._os.libc`, not :mod:`ctypes` itself (see there).
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
    from pytest_mpcheck._os import libc

    pointer, size, integer, offset, byte = (libc.scalar(code) for code in "PLiqB")
    mmap = libc.function("mmap", pointer, (pointer, size, integer, integer, integer, offset))
    array = libc.ffi().Array
    blocks: dict[int, Any] = {}

    def view(address: int, length: int) -> memoryview:
        block: Any = blocks.get(length)
        if block is None:
            block = blocks[length] = type("Block", (array,), {"_type_": byte, "_length_": length})
        return memoryview(block.from_address(address)).cast("B")

    return mmap, view


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
