"""Where a prepared child writes its stacks, and the signal that asks it to.

Shared by the child side (:mod:`pytest_mpcheck.fixtures.bootstrap`, which must stay cheap to import
in every child) and the reading side (:mod:`pytest_mpcheck._os.stacks`).
"""

from __future__ import annotations

import os
import signal

#: The signal on which a prepared child writes the stacks of all its threads to its stack file.
#: A real-time signal, because user code rarely uses them (SIGUSR1 is a common choice of its own).
STACK_SIGNAL: int = int(signal.SIGRTMIN) + 3 if hasattr(signal, "SIGRTMIN") else int(signal.SIGUSR1)

#: The file, in a test's work directory, that prepared children write their stacks to. The parent
#: creates it (creating a file costs more than opening one) and asks one child at a time.
STACKS_NAME = "stacks.log"


def stack_path(workdir: str) -> str:
    """The file prepared children write their stacks to."""
    return os.path.join(workdir, STACKS_NAME)
