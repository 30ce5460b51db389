"""Text that came from a process, made safe to print in a report.

A command line, a process name, a path or a stack can hold anything its process put there:
terminal escapes that clear the screen or recolour the log, a newline followed by a line that a
CI system reads as its own command (``::error::``), a carriage return that hides what came
before. :func:`printable` shows every such character as its Python escape, and cuts a huge text
(a command line of 100 KB of arguments) to a length a person reads, saying how much was cut. The
JSON report keeps the text whole.
"""

from __future__ import annotations

#: Command lines longer than this are cut in the text reports.
COMMAND_LIMIT = 1000

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


# C0 and C1 controls, DEL; and the Unicode characters that break lines or reorder text.
_CONTROLS = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F)]
_CONTROLS += [*range(0x2066, 0x206A)]
_TABLE = {code: _escape(chr(code)) for code in _CONTROLS}
_TABLE_KEEPING_LINES = {code: text for code, text in _TABLE.items() if code != ord("\n")}


def printable(text: str, limit: int | None = None, lines: bool = False) -> str:
    """``text`` with its control characters escaped (``\\x1b``, ``\\n``), cut after ``limit``
    characters with a note of how many more there were. With ``lines``, newlines are kept (a
    stack, several lines each safe on its own)."""
    cut = 0
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = text[:limit]
    safe = text.translate(_TABLE_KEEPING_LINES if lines else _TABLE)
    if cut:
        safe += f"... [{cut} more characters cut; the JSON report (--mp-report) has them all]"
    return safe
