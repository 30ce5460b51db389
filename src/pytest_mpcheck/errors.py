"""Warning classes of the plugin, so that ``-W error::...`` can escalate them, and how to warn."""

from __future__ import annotations

import sys
import traceback
import warnings

import pytest


class MpCheckWarning(pytest.PytestWarning):
    """A test left a process behind (mode ``warn``), or another multiprocessing problem."""


class MpCheckInternalWarning(pytest.PytestWarning):
    """The plugin itself failed; the run goes on and the user's own outcome is kept."""


def warn_at_test(
    item: pytest.Item, message: str, category: type[pytest.PytestWarning] = MpCheckWarning
) -> None:
    """Warn with ``category``, pointing at the test rather than at this plugin.

    A warning of the plugin observes: it must not change the test's outcome. A blanket
    ``filterwarnings = error`` (or ``-W error``, or an error filter for any category broader than
    the plugin's) is common, and would turn it into an error; only a filter that names the
    plugin's category (``-W error::pytest_mpcheck.MpCheckWarning``) escalates it. The warning is
    still shown in pytest's warnings summary.
    """
    path, lineno, _ = item.reportinfo()
    filename, line = str(path), (lineno or 0) + 1
    with warnings.catch_warnings():
        if _blanket_error(category, message, filename, line):
            warnings.simplefilter("always", category)
        try:
            warnings.warn_explicit(
                category(message), category=category, filename=filename, lineno=line
            )
        except category as escalated:
            # A filter that names the plugin's category made it an error: the test fails for it
            # once the plugin's own work after it is done (see take_escalated), not here, in the
            # middle of that work, with a traceback through the plugin.
            item.stash.setdefault(_escalated_key, []).append(f"{category.__name__}: {escalated}")


#: The warnings of a test that a filter made errors, not raised yet (see :func:`warn_at_test`).
_escalated_key = pytest.StashKey[list[str]]()


def take_escalated(item: pytest.Item) -> list[str]:
    """The warnings of ``item`` that a filter naming the plugin's category made errors, since
    the last call: the test fails for them, at the end of its teardown."""
    escalated = item.stash.get(_escalated_key, None)
    if not escalated:
        return []
    del item.stash[_escalated_key]
    return escalated


def _blanket_error(category: type[Warning], message: str, filename: str, lineno: int) -> bool:
    """Whether the filter that decides about this warning is an ``error`` filter that does not
    name the plugin's own categories (``category`` or a subclass of it)."""
    module = filename[:-3] if filename.endswith(".py") else filename  # as warn_explicit does
    for action, text, of, module_pattern, line in warnings.filters:
        if not issubclass(category, of):
            continue
        if text is not None and not text.match(message):
            continue
        if module_pattern is not None and not module_pattern.match(module):
            continue
        if line and line != lineno:
            continue
        return action == "error" and not (isinstance(of, type) and issubclass(of, category))
    return False


def internal_error(doing: str, details: str | None = None) -> None:
    """Say that the plugin itself failed, without changing the run's outcome.

    A warning that no filter can escalate (``-W error`` or ``filterwarnings = error`` would
    otherwise turn the plugin's own bug into the user's failure, or an INTERNALERROR).
    ``details`` is a traceback kept earlier; by default, the exception being handled.
    """
    if details is None:
        details = "".join(traceback.format_exception(*sys.exc_info()))
    with warnings.catch_warnings():
        warnings.simplefilter("always", MpCheckInternalWarning)
        warnings.warn(
            MpCheckInternalWarning(
                f"pytest-mpcheck failed while {doing}; please report this bug:\n{details}"
            ),
            stacklevel=2,
        )
