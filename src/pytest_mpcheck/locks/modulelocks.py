"""The child check for module-level locks (and queues, values, events) that a child made again.

``mp_spawn`` children run :func:`module_lock_check` before their target (see
:mod:`~pytest_mpcheck.fixtures.bootstrap`); what it returns fails the test at teardown.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from pytest_mpcheck.watch.modulelevel import made_again

#: The name under which the plugin registers the check (``module:function``).
MODULE_LOCK_CHECK = "pytest_mpcheck.locks.modulelocks:module_lock_check"


def module_lock_check(target: Any, args: Any, kwargs: Any) -> list[str]:
    """Child check: module-level multiprocessing locks (and queues, values, events) made again.

    Runs in each child that ``mp_spawn`` starts, after the target was unpickled (so its module was
    imported again under spawn and forkserver) and before it runs; see
    :mod:`pytest_mpcheck.watch.modulelevel`.
    """
    method = getattr(multiprocessing.current_process(), "_start_method", None)
    if method is None:
        return []
    return made_again(target, method, "mp_spawn(target, args=(NAME, ...))")
