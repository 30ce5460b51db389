"""``mp_output``: every line of the children, with its process, in the real order of writing."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from pytest_mpcheck.fixtures import output
from pytest_mpcheck.fixtures.output import (
    LOG_NAME,
    LineWriter,
    OutputLine,
    OutputLog,
    format_interleaving,
)

OUTPUT = """
import os
import sys


def even(n):
    for i in range(0, n, 2):
        print("even:", i)


def odd(n):
    for i in range(1, n, 2):
        print("odd:", i)


def first(mine, theirs):
    print("a1")
    mine.set()
    theirs.wait(30)
    print("a2")


def second(theirs, mine):
    theirs.wait(30)
    print("b1")
    mine.set()


def quiet():
    pass


def as_files():
    # What code does with sys.stdout as a file: its binary layer, its descriptor.
    sys.stdout.write("text, ")
    sys.stdout.buffer.write(b"then bytes\\n")
    encoded = "caf\\u00e9\\n".encode()
    sys.stdout.buffer.write(encoded[:4])  # the two bytes of the last letter in two writes
    sys.stdout.buffer.write(encoded[4:])
    sys.stderr.buffer.write(b"to err\\n")
    os.fstat(sys.stdout.fileno())
    os.fstat(sys.stderr.buffer.fileno())
    return sys.stdout.isatty()


def test_one_after_the_other(mp_spawn, mp_output):
    p1 = mp_spawn(even, (15,))
    p1.join()
    p2 = mp_spawn(odd, (15,))
    p2.join()
    mp_output.assert_grouped()
    groups = mp_output.by_process()
    assert list(groups) == ["Process-1", "Process-2"]
    assert [line.text for line in groups["Process-1"]] == [f"even: {i}" for i in range(0, 15, 2)]
    assert {line.pid for line in groups["Process-2"]} == {p2.pid}
    assert mp_output.text.splitlines()[7:9] == ["even: 14", "odd: 1"]
    times = [line.time_ns for line in mp_output.lines]
    assert times == sorted(times)
    silent = mp_spawn(quiet)
    silent.join()  # output is what was written so far: the child must have finished
    assert silent.output == ""


def test_interleaved(mp_spawn, mp_context, mp_output):
    a_done, b_done = mp_context.Event(), mp_context.Event()
    a = mp_spawn(first, (a_done, b_done), name="A")
    b = mp_spawn(second, (a_done, b_done), name="B")
    a.join()
    b.join()
    assert [line.text for line in mp_output.lines] == ["a1", "b1", "a2"]
    mp_output.assert_grouped()


def test_streams_as_files(mp_spawn, mp_output):
    assert mp_spawn(as_files).result is False
    assert [(line.stream, line.text) for line in mp_output.lines] == [
        ("stdout", "text, then bytes"),
        ("stdout", "caf\\u00e9"),
        ("stderr", "to err"),
    ]
"""


def test_output_under_every_start_method(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_output=OUTPUT)
    result = pytester.runpytest_subprocess(
        "--mp-start-methods=fork,spawn,forkserver", "-p", "no:cacheprovider", timeout=60
    )
    result.assert_outcomes(passed=6, failed=3)
    for method in ("fork", "spawn", "forkserver"):
        result.stdout.fnmatch_lines(
            [
                f"*_ test_interleaved[[]{method}[]] _*",
                "*",
                "E       AssertionError: mp_output.assert_grouped(): the lines of 'A' (pid *) are "
                "not one block: it wrote again at line 3 after 'B' (pid *) wrote in between",
                "E       ",
                "E             1  A (*)  out| a1",
                "E             2  B (*)  out| b1",
                "E       >>    3  A (*)  out| a2   <-- block broken: this process wrote before",
            ]
        )


def _write(path: Path, records: list[str]) -> None:
    path.write_text("".join(record + "\n" for record in records), encoding="utf-8")


def test_log_reads_records_and_skips_what_is_not_one(tmp_path: Path) -> None:
    # The parent reads the file when asked; a record being written (no newline yet) waits.
    log = OutputLog(tmp_path / LOG_NAME)
    assert log.lines == []
    assert log.text == ""
    record = '{"pid": 7, "name": "w", "stream": "stdout", "t": 5, "text": "hi", "nl": true}'
    partial = '{"pid": 7, "name": "w", "stream": "stderr", "t": 6, "text": "end", "nl": false}'
    with open(tmp_path / LOG_NAME, "w", encoding="utf-8") as out:
        out.write(record + "\nnot json\n" + partial[:10])
    assert log.lines == [OutputLine(7, "w", "stdout", 5, "hi", True)]
    with open(tmp_path / LOG_NAME, "a", encoding="utf-8") as out:
        out.write(partial[10:] + "\n")
    assert log.text == "hi\nend"
    assert log.of_pid(7) == "hi\nend"
    assert log.of_pid(8) == ""
    assert len(log) == 2


def test_by_process_tells_apart_processes_of_the_same_name(tmp_path: Path) -> None:
    _write(
        tmp_path / LOG_NAME,
        [
            '{"pid": 1, "name": "w", "stream": "stdout", "t": 1, "text": "x", "nl": true}',
            '{"pid": 2, "name": "w", "stream": "stdout", "t": 2, "text": "y", "nl": true}',
            '{"pid": 3, "name": "v", "stream": "stdout", "t": 3, "text": "z", "nl": true}',
        ],
    )
    groups = OutputLog(tmp_path / LOG_NAME).by_process()
    assert {key: [line.text for line in lines] for key, lines in groups.items()} == {
        "w (pid 1)": ["x"],
        "w (pid 2)": ["y"],
        "v": ["z"],
    }


def test_interleaving_marks_each_broken_block() -> None:
    lines = [
        OutputLine(1, "a", "stdout", 1, "a1"),
        OutputLine(2, "b", "stderr", 2, "b1"),
        OutputLine(1, "a", "stdout", 3, "a2"),
    ]
    assert format_interleaving(lines, {2: 1}).splitlines() == [
        "      1  a (1)  out| a1",
        "      2  b (2)  err| b1",
        ">>    3  a (1)  out| a2   <-- block broken: this process wrote before",
    ]


def test_line_writer_answers_as_the_stream_it_replaced(tmp_path: Path) -> None:
    # Code in a child uses sys.stdout as a file: its binary layer, descriptor, encoding, name.
    fd = output._open_log(str(tmp_path / LOG_NAME))
    with open(tmp_path / "original", "w", encoding="latin-1") as original:
        writer = LineWriter(fd, "stdout", original)
        assert (writer.encoding, writer.errors, writer.name) == ("latin-1", "strict", original.name)
        assert writer.fileno() == writer.buffer.fileno() == original.fileno()
        assert not writer.isatty()
        assert writer.buffer is writer.buffer
        writer.write("text, ")
        assert writer.buffer.write(b"bytes \xe9\npartial") == 15
        with pytest.raises(TypeError):
            writer.buffer.write("text")
        writer.end()
    os.close(fd)
    assert (tmp_path / "original").read_bytes() == b"text, bytes \xe9\npartial"
    log = OutputLog(tmp_path / LOG_NAME)
    assert [(line.text, line.newline) for line in log.lines] == [
        ("text, bytes \u00e9", True),
        ("partial", False),
    ]


def test_line_writer_without_a_stream_to_replace(tmp_path: Path) -> None:
    # A child without stdout (sys.stdout None): its output is logged; there is no descriptor.
    fd = output._open_log(str(tmp_path / LOG_NAME))
    writer = LineWriter(fd, "stderr", None)
    writer.buffer.write(b"logged\n")
    with pytest.raises(io.UnsupportedOperation):
        writer.fileno()
    with pytest.raises(AttributeError):
        writer.name  # noqa: B018
    os.close(fd)
    assert OutputLog(tmp_path / LOG_NAME).text == "logged\n"
