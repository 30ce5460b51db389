"""The lock checker (``mp_locks``): checked locks, their records, and what the records prove.

One module per concern; imports point down this list, never up:

- :mod:`.records`: the record format, and the writer of one process's record files;
- :mod:`.checked`: :class:`CheckedLock` and its hot path (``_lockrec``, in C, or in Python);
- :mod:`.modulelocks`: the child check for module-level locks that a child made again;
- :mod:`.replay`: reading the record files back and replaying them into holds;
- :mod:`.checks`: the findings (two holders, held at exit, release not held, lock-order
  inversion, lock not shared) and their messages;
- :mod:`.stats`: contention figures per lock, process and site;
- :mod:`.tally`: the session's side: summary, JSON report, pytest-xdist;
- :mod:`.atomic`: the decision of ``mp_output.assert_atomic(lock)``;
- :mod:`.checker`: :class:`LockChecker` (the fixture's object) and the end of each test.

``ACCELERATED`` (whether this process records through the C hot path) stays importable from here,
where the changelog of 0.1 documented it.
"""

from pytest_mpcheck.locks.checked import ACCELERATED

__all__ = ["ACCELERATED"]
