"""A dead worker's task, read back in the pytest process from the pickle the worker received:
named as its user knows it, and rebuilt without side effects here. No process is started: the
pickles are made as a Pool and an executor make them."""

from __future__ import annotations

import datetime
import decimal
import enum
import pickle
import subprocess
import sys
from concurrent.futures.process import _CallItem
from pathlib import Path
from typing import Any

from pytest_mpcheck.watch import tasknotes


def work(*args: object, **kwargs: object) -> None:
    """A task's function, as a test module defines it."""


class Colour(enum.Enum):
    RED = 1


class Opener:
    """An argument whose pickle asks to call ``open`` when rebuilt."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


class Noisy:
    """An argument whose own ``__setstate__`` acts (here: writes a file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __setstate__(self, state: dict[str, Any]) -> None:
        Path(state["path"]).write_text("rebuilt")


def pool_task(*args: object, **kwargs: object) -> bytes:
    """The pickle of a task as a Pool's task queue carries it: ``(job, i, func, args, kwds)``."""
    return pickle.dumps((7, None, work, args, kwargs))


def described(data: bytes, busy: bool = True) -> str:
    return tasknotes.describe(tasknotes.TaskNote(busy, len(data), data))


def test_a_pool_task_is_named_with_its_values() -> None:
    data = pool_task(
        decimal.Decimal("1.5"),
        datetime.date(2026, 11, 30),
        Path("/tmp/x"),
        Colour.RED,
        {1, 2},
        label="x" * 100,
    )
    line = described(data)
    assert line.startswith(
        "work(Decimal('1.5'), datetime.date(2026, 11, 30), PosixPath('/tmp/x'), "
        "<Colour.RED: 1>, {1, 2}, label='xxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxx'), defined at "
    )
    assert line.endswith(f"test_unit_tasknotes.py:{work.__code__.co_firstlineno}")
    assert (
        described(data, busy=False)
        == f"none (the worker was idle; its last task had finished: {line})"
    )


def test_an_executor_task_is_named() -> None:
    data = pickle.dumps(_CallItem(3, work, (1,), {"b": 2}))
    assert described(data).startswith("work(1, b=2), defined at ")


def test_rebuilding_a_task_acts_on_nothing(tmp_path: Path) -> None:
    # A user's __reduce__ that names open(), a user's own __setstate__: neither runs in the
    # pytest process; their objects are shown by name.
    opened, noisy = tmp_path / "opened", tmp_path / "noisy"
    data = pool_task(Opener(str(opened)), Noisy(str(noisy)))
    line = described(data)
    assert line.startswith("work(<open(...)>, <")
    assert " at 0x" in line  # the object's repr (cut short), its state never set
    assert not opened.exists()
    assert not noisy.exists()


def test_rebuilding_a_task_imports_nothing() -> None:
    # A task naming a module that the pytest process has not imported (`this` prints when it
    # is imported): shown by name, not imported. Checked in a fresh interpreter.
    code = (
        "import pickle, sys\n"
        "from pytest_mpcheck.watch import tasknotes\n"
        "data = b'(K\\x07Ncbuiltins\\nprint\\n(cthis\\nrot13\\ntp0\\n}t.'\n"
        "print(tasknotes.describe(tasknotes.TaskNote(True, len(data), data)))\n"
        "print('this' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["print(<this.rot13>)", "False"]
