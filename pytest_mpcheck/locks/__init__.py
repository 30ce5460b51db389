"""The lock checker: checked locks and their records, replay, checks and statistics.

``ACCELERATED`` (whether this process records through the C hot path) stays importable from here,
where the changelog of 0.1 documented it.
"""

from pytest_mpcheck.locks.checked import ACCELERATED

__all__ = ["ACCELERATED"]
