"""pytest-xdist: each worker checks its own tests and hands its findings to the controller.

A worker's run puts everything it found into ``config.workeroutput`` as its session ends
(:func:`hand_over`); pytest-xdist sends that to the controller, whose ``pytest_testnodedown``
adds it up (:func:`take_over`): the tally of the terminal summary, the findings of the JSON
report, and the lock checker's figures and findings. The controller runs no test: its own
findings are only those of the end of its session.

What travels is plain data (execnet sends dicts, lists, strings and numbers), made by the one
encoder of the findings (:func:`pytest_mpcheck.findings.as_json`).
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_mpcheck.findings import FindingLog, as_json

#: The key of the plugin's part of ``workeroutput``.
WORKEROUTPUT_KEY = "mpcheck"


def is_worker(config: pytest.Config) -> bool:
    """Whether this run is a pytest-xdist worker's (its findings go to the controller)."""
    return getattr(config, "workerinput", None) is not None


def hand_over(
    config: pytest.Config, log: FindingLog, contention: list[dict[str, Any]] | None
) -> bool:
    """On a worker: put what it found into ``workeroutput``; ``False`` elsewhere.

    ``contention`` is the lock checker's figures, ``None`` when no test of the worker used it.
    """
    workeroutput: dict[str, Any] | None = getattr(config, "workeroutput", None)
    if workeroutput is None:
        return False
    workeroutput[WORKEROUTPUT_KEY] = {
        "tally": as_json(log.tally),
        "findings": [as_json(finding) for finding in log.findings],
        "resource_findings": [as_json(finding) for finding in log.resource_findings],
        "lock_findings": log.lock_findings,
        "lock_contention": contention,
    }
    return True


def take_over(config: pytest.Config, log: FindingLog, workeroutput: dict[str, Any]) -> None:
    """On the controller: add what a worker that finished handed over."""
    section = workeroutput.get(WORKEROUTPUT_KEY)
    if not section:
        return  # the worker did not load the plugin (-p no:mpcheck there), or crashed
    log.tally.add(section.get("tally", {}))
    log.worker_findings.extend(section.get("findings", []))
    log.worker_resource_findings.extend(section.get("resource_findings", []))
    log.lock_findings.extend(section.get("lock_findings", []))
    rows = section.get("lock_contention")
    if rows is not None:
        from pytest_mpcheck.locks import tally  # the summary's most contended locks

        tally.tally_of(config).extend(rows)
