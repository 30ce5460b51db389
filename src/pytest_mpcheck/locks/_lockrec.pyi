"""The hot path of :class:`pytest_mpcheck.locks.checked.CheckedLock`, in C (optional)."""

from typing import Any

from _typeshed import WriteableBuffer

FORMAT: tuple[int, int, int, int, int, int]
"""``(RECORD_SIZE, ACQUIRED, RELEASED, RELEASE_FAILED, TRY, CORE_VERSION)`` as compiled in."""

class Records:
    """A writer's record buffer (its mmap) and the offset of its next free slot."""

    def __init__(self, buffer: WriteableBuffer) -> None: ...
    def __iter__(self) -> Records: ...
    def __next__(self) -> int: ...
    def attach(self, buffer: WriteableBuffer) -> None:
        """Write into ``buffer`` from now on (the writer's new, bigger map)."""

    def release(self) -> None:
        """Let go of the buffer, so that its mmap can be closed."""

    @property
    def size(self) -> int:
        """Bytes of the attached buffer (0 when released)."""

class LockCore:
    """The hot path of ``CheckedLock``: acquire, release, ``__enter__``, ``__exit__``."""

    _held: int
    _idx: int
    _lock: Any
    _owner: int
    _per_thread: bool
    _try: Any
    _w: Any
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock, as ``multiprocessing.Lock.acquire`` does, and record it."""

    def release(self) -> None:
        """Release the lock, as ``multiprocessing.Lock.release`` does, and record it."""

    def __enter__(self) -> bool: ...
    def __exit__(self, *exc_info: object) -> None: ...
