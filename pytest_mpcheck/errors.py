"""Warning classes of the plugin, so that ``-W error::...`` can escalate them, and how to warn."""

from __future__ import annotations

import warnings

import pytest


class MpCheckWarning(pytest.PytestWarning):
    """A test left a process behind (mode ``warn``), or another multiprocessing problem."""


class MpCheckInternalWarning(pytest.PytestWarning):
    """The plugin itself failed; the run goes on and the user's own outcome is kept."""


def warn_at_test(
    item: pytest.Item, message: str, category: type[pytest.PytestWarning] = MpCheckWarning
) -> None:
    """Warn with ``category``, pointing at the test rather than at this plugin."""
    path, lineno, _ = item.reportinfo()
    warnings.warn_explicit(
        category(message),
        category=category,
        filename=str(path),
        lineno=(lineno or 0) + 1,
    )
