"""The output of the children the fixtures start: every line, with its process, in real order.

Child side
    :func:`capture_child_output` replaces ``sys.stdout`` and ``sys.stderr`` of a child with
    :class:`LineWriter` objects. Each complete line is written at once as one record, with a single
    ``os.write`` to the test's log file, which every child opens with ``O_APPEND``: the kernel
    appends each write whole, so the order of the records in the file is the order in which the
    lines were really written, across processes. A partial last line is written when the target ends
    (also when it raised; see :func:`flush_child_output`). The text also goes on to the stream it
    replaced, so pytest's captured output still shows it.

Record format
    One JSON object per line of the log file (UTF-8), with the keys:

    ``pid`` (int), ``name`` (the process name, ``multiprocessing.current_process().name`` at the
    write), ``stream`` (``"stdout"`` or ``"stderr"``), ``t`` (``time.monotonic_ns()`` at the write:
    the system-wide monotonic clock, comparable across processes on one machine), ``text`` (the line
    without its newline) and ``nl`` (whether the line ended with a newline; ``false`` only for a
    partial last line).

Parent side
    :class:`OutputLog` reads the records back when asked: no thread, no pipe reader.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

#: Name of the log file in a test's work directory.
LOG_NAME = "output.log"


@dataclass(frozen=True)
class OutputLine:
    """One line that a child wrote to its stdout or stderr."""

    pid: int
    """The pid of the process that wrote it."""
    name: str
    """The process name (``multiprocessing.current_process().name``) at the time of writing."""
    stream: str
    """``"stdout"`` or ``"stderr"``."""
    time_ns: int
    """``time.monotonic_ns()`` in the child when the line was written."""
    text: str
    """The line without its newline."""
    newline: bool = True
    """Whether the line ended with a newline (``False`` for a partial last line)."""

    def __str__(self) -> str:
        return self.text


# -- child side ---------------------------------------------------------------------------------


def _open_log(path: str) -> int:
    return os.open(
        path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600
    )


def _write_all(fd: int, data: bytes) -> None:
    # A regular file takes the whole write at once; the loop only guards against a short write.
    while data:
        written = os.write(fd, data)
        data = data[written:]


class LineWriter(io.TextIOBase):
    """A text stream that writes each complete line as one record to the log (child side)."""

    def __init__(self, fd: int, stream: str, passthrough: TextIO | None) -> None:
        super().__init__()
        self._fd = fd
        self.stream = stream
        self.passthrough = passthrough
        self._pending = ""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self.passthrough is not None:
            try:
                self.passthrough.write(text)
                self.passthrough.flush()
            except (OSError, ValueError):
                self.passthrough = None  # the original stream is gone; the log still has it
        data = self._pending + text
        *complete, self._pending = data.split("\n")
        for line in complete:
            self._record(line, True)
        return len(text)

    def flush(self) -> None:
        """Complete lines are written at once; a partial line waits for its end (or :meth:`end`)."""

    def end(self) -> None:
        """Write a partial last line, if there is one."""
        if self._pending:
            line, self._pending = self._pending, ""
            self._record(line, False)

    def _record(self, line: str, newline: bool) -> None:
        record = {
            "pid": os.getpid(),
            "name": multiprocessing.current_process().name,
            "stream": self.stream,
            "t": time.monotonic_ns(),
            "text": line,
            "nl": newline,
        }
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "replace")
        # An error means the test's work directory is gone: the test is over.
        with contextlib.suppress(OSError):
            _write_all(self._fd, data)


_writers: list[LineWriter] = []


def capture_child_output(workdir: str) -> None:
    """Route this child's ``sys.stdout`` and ``sys.stderr`` through the log (child side)."""
    if _writers:
        return  # already done (a pool worker runs the initializer once)
    fd = _open_log(os.path.join(workdir, LOG_NAME))
    for stream in ("stdout", "stderr"):
        original = getattr(sys, stream)
        writer = LineWriter(fd, stream, original)
        _writers.append(writer)
        setattr(sys, stream, writer)


def flush_child_output() -> None:
    """Write the partial last lines (child side; when the target ended or raised)."""
    for writer in _writers:
        writer.end()


def release_child_output() -> None:
    """Flush, and give the child its own streams back (child side; when its target is done).

    What multiprocessing itself prints afterwards (the traceback of a target that raised) goes to
    the child's real stderr, not into the test's output.
    """
    flush_child_output()
    for writer in _writers:
        if getattr(sys, writer.stream) is writer and writer.passthrough is not None:
            setattr(sys, writer.stream, writer.passthrough)


# -- parent side --------------------------------------------------------------------------------


def _describe(line: OutputLine) -> str:
    return f"{line.name!r} (pid {line.pid})"


class OutputLog:
    """The output of the children of one test, read from the log file when asked.

    This is the ``mp_output`` fixture. Lines are in the order in which they were written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lines: list[OutputLine] = []
        self._offset = 0

    def _read(self) -> list[OutputLine]:
        try:
            with open(self.path, "rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return self._lines
        end = data.rfind(b"\n") + 1  # a record being written right now is read next time
        for raw in data[:end].splitlines():
            try:
                record = json.loads(raw)
                self._lines.append(
                    OutputLine(
                        pid=int(record["pid"]),
                        name=str(record["name"]),
                        stream=str(record["stream"]),
                        time_ns=int(record["t"]),
                        text=str(record["text"]),
                        newline=bool(record.get("nl", True)),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue  # not a record of ours
        self._offset += end
        return self._lines

    @property
    def lines(self) -> list[OutputLine]:
        """Every line so far, in the order of writing."""
        return list(self._read())

    @property
    def text(self) -> str:
        """All output so far as one string, in the order of writing."""
        return join_lines(self._read())

    def of_pid(self, pid: int | None) -> str:
        """The output of one process as one string."""
        return join_lines(line for line in self._read() if line.pid == pid)

    def by_process(self) -> dict[str, list[OutputLine]]:
        """The lines of each process, keyed by process name in order of first output.

        Two processes with the same name are told apart as ``"name (pid N)"``.
        """
        lines = self._read()
        pids_of: dict[str, set[int]] = {}
        for line in lines:
            pids_of.setdefault(line.name, set()).add(line.pid)
        grouped: dict[str, list[OutputLine]] = {}
        for line in lines:
            key = line.name if len(pids_of[line.name]) == 1 else f"{line.name} (pid {line.pid})"
            grouped.setdefault(key, []).append(line)
        return grouped

    def assert_grouped(self) -> None:
        """Assert that the lines of each process form one contiguous block.

        On failure the message shows the interleaving and marks where a block was broken.
        """
        __tracebackhide__ = True
        lines = self._read()
        finished: set[int] = set()
        broken: dict[int, int] = {}  # index of a line that resumes a block -> the block's pid
        for index, line in enumerate(lines):
            previous = lines[index - 1].pid if index else None
            if previous is not None and previous != line.pid:
                finished.add(previous)
                if line.pid in finished:
                    broken[index] = line.pid
        if not broken:
            return
        first = min(broken)
        resumed = lines[first]
        interrupter = lines[first - 1]
        message = [
            f"mp_output.assert_grouped(): the lines of {_describe(resumed)} are not one block: "
            f"it wrote again at line {first + 1} after {_describe(interrupter)} wrote in between",
            "",
            format_interleaving(lines, broken),
        ]
        raise AssertionError("\n".join(message))

    def assert_atomic(self, lock: object, *, unprotected_ok: bool = False) -> None:
        """Assert that the lines written during each hold of ``lock`` are one block of its holder.

        ``lock`` is a lock of ``mp_locks``. Decided on when each line was written and when the lock
        was held, not on the text: a line that another process wrote during a hold breaks it, and
        a line that a process using the lock wrote while not holding it was not protected (unless
        ``unprotected_ok=True``). On failure the message shows the interleaving, each line with
        the hold it was written in, and marks where a block was broken.
        """
        __tracebackhide__ = True
        from pytest_mpcheck import lockcheck

        lockcheck.assert_atomic(self._read(), lock, unprotected_ok=unprotected_ok)

    def __iter__(self) -> Iterator[OutputLine]:
        return iter(self.lines)

    def __len__(self) -> int:
        return len(self._read())

    def __repr__(self) -> str:
        return f"<OutputLog {len(self)} lines from {self.path}>"


def join_lines(lines: Iterator[OutputLine] | list[OutputLine]) -> str:
    """The lines as one string, newlines where they were written."""
    return "".join(line.text + ("\n" if line.newline else "") for line in lines)


def format_interleaving(lines: list[OutputLine], marks: dict[int, int]) -> str:
    """The lines numbered, with their process; ``>>`` marks a line that resumes a broken block."""
    from pytest_mpcheck.safetext import printable  # a failure's path only

    # The children's text is escaped: one line of the report per line written, and no escapes.
    width = max((len(f"{printable(line.name)} ({line.pid})") for line in lines), default=0)
    out = []
    for index, line in enumerate(lines):
        mark = ">>" if index in marks else "  "
        who = f"{printable(line.name)} ({line.pid})".ljust(width)
        stream = "err" if line.stream == "stderr" else "out"
        note = "   <-- block broken: this process wrote before" if index in marks else ""
        out.append(f"{mark} {index + 1:4d}  {who}  {stream}| {printable(line.text)}{note}")
    return "\n".join(out)
