"""Hooks that other plugins and ``conftest.py`` files can implement.

Registered in ``pytest_addhooks``; see the pytest documentation on writing hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_mpcheck.findings import Finding, ProcessInfo, ResourceFinding
    from pytest_mpcheck.locks.checks import LockFinding


@pytest.hookspec(firstresult=True)
def pytest_mpcheck_ignore_process(
    config: pytest.Config, item: pytest.Item, process: ProcessInfo
) -> bool | None:
    """Decide whether a process left behind by ``item`` is a leak.

    Called for each process that the watch would report, before it is ended. Return ``True`` to
    veto the finding (the process is then neither reported nor ended), ``False`` to keep it, or
    ``None`` to leave the decision to other implementations. The first non-``None`` answer wins.

    :param config: The pytest config object.
    :param item: The test during whose run (or teardown of a wider fixture scope) it was found.
    :param process: What the watch knows of the process.
    """


def pytest_mpcheck_finding(
    config: pytest.Config, item: pytest.Item | None, finding: Finding
) -> None:
    """See each finding of the plugin once it is final (after leftovers were ended).

    Called for the processes a test (or a wider-scoped fixture) left behind, for hung children,
    and for what still runs at the end of the session; a process that a test reported already
    and that the end of the session ended is seen again then, with ``finding.reported_by``
    naming that test.

    :param config: The pytest config object.
    :param item: The test that the finding fails or warns; ``None`` at the end of the session,
        where no test is blamed.
    :param finding: The finding, with the process it concerns and how it was ended.
    """


def pytest_mpcheck_resource_finding(
    config: pytest.Config, item: pytest.Item | None, finding: ResourceFinding
) -> None:
    """See each named resource (semaphore, shared memory segment) left behind, once final.

    Called when a test (or a wider-scoped fixture) left it: freed then, or, when a later test
    may still use it (warn mode, or a live object still refers to it), kept and handed to the
    session (``finding.handed_over``). The end of the session frees what is still left; a
    resource handed over is seen again then, with ``finding.reported_by`` naming whose it was.

    :param config: The pytest config object.
    :param item: The test that the finding fails or warns; ``None`` at the end of the session,
        where no test is blamed.
    :param finding: The resource's kind and name, where it was made, and what became of it.
    """


def pytest_mpcheck_lock_finding(
    config: pytest.Config, item: pytest.Item, finding: LockFinding
) -> None:
    """See each finding of the lock checker (``mp_locks``) after the test that used it.

    Called before the test fails (or warns, under ``@pytest.mark.mp_check("warn")``), also when
    the test's mode is ``off`` and nothing is reported.

    :param config: The pytest config object.
    :param item: The test whose locks it concerns.
    :param finding: Its kind (e.g. ``"two holders at once"``), the lock's name, the message and
        the processes involved.
    """
