"""Checks of the arguments of the fixtures' factories (``mp_spawn``, ``mp_pool``, ``mp_executor``).

A bad argument is refused at the call, where the test made the mistake, not in a child or at
teardown. The exceptions are those of the equivalent ``multiprocessing`` and
``concurrent.futures`` calls (``TypeError`` for a wrong type, ``ValueError`` for a wrong value),
so that code written against them behaves the same; each message names the fixture, the
argument, what was given and what is accepted. The plugin's own frames are hidden from the
traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def _given(value: object) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def callable_or_none(where: str, name: str, value: object) -> None:
    """``value`` must be callable, or ``None``."""
    __tracebackhide__ = True
    if value is not None and not callable(value):
        raise TypeError(f"{where}: {name} must be a callable or None; got {_given(value)}")


def iterable(where: str, name: str, value: object) -> None:
    """``value`` must be an iterable (of positional arguments), such as a tuple."""
    __tracebackhide__ = True
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"{where}: {name} must be a tuple (or other iterable) of arguments; got {_given(value)}"
        )


def mapping_or_none(where: str, name: str, value: object) -> None:
    """``value`` must be a mapping of keyword arguments with string keys, or ``None``."""
    __tracebackhide__ = True
    if value is None:
        return
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise TypeError(
            f"{where}: {name} must be a dict of keyword arguments (str keys) or None; got "
            f"{_given(value)}"
        )


def str_or_none(where: str, name: str, value: object) -> None:
    """``value`` must be a ``str``, or ``None``."""
    __tracebackhide__ = True
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{where}: {name} must be a str or None; got {_given(value)}")


def bool_(where: str, name: str, value: object, none: bool = False) -> None:
    """``value`` must be ``True`` or ``False`` (or, with ``none``, ``None``)."""
    __tracebackhide__ = True
    if not isinstance(value, bool) and not (none and value is None):
        accepted = "True, False or None" if none else "True or False"
        raise TypeError(f"{where}: {name} must be {accepted}; got {_given(value)}")


def positive_int_or_none(where: str, name: str, value: object, meaning_of_none: str) -> None:
    """``value`` must be a whole number of at least 1, or ``None`` (``meaning_of_none``)."""
    __tracebackhide__ = True
    if value is None:
        return
    accepted = f"a whole number of at least 1, or None ({meaning_of_none})"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be {accepted}; got {_given(value)}")
    if value < 1:
        raise ValueError(f"{where}: {name} must be {accepted}; got {value!r}")
