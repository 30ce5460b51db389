"""Warning classes of the plugin, so that ``-W error::...`` can escalate them."""

from __future__ import annotations

import pytest


class MpCheckWarning(pytest.PytestWarning):
    """A test left a process behind (mode ``warn``), or another multiprocessing problem."""


class MpCheckInternalWarning(pytest.PytestWarning):
    """The plugin itself failed; the run goes on and the user's own outcome is kept."""
