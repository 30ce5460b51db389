"""Which processes are session helpers: kept for the whole run on purpose, never a test's leak.

The helpers of every multiprocessing family (``multiprocessing``, ``multiprocess``, ``billiard``,
``loky`` and joblib's copy of it) are found by what they are: the resource tracker, semaphore
tracker and forkserver objects of each family's modules name their process, and a helper
started elsewhere runs its module's ``main`` (``python -c 'from X.resource_tracker import
main; main(fd)'``). pytest-xdist's workers run execnet's bootstrap line. A fork of the pytest
process (or of an xdist worker) carries the same command line as its parent and is never a
helper, whatever it matches.
"""

from __future__ import annotations

import re
import sys

#: ``-c`` programs of the helpers: each family's tracker and forkserver modules run ``main``.
_HELPER_PROGRAM = re.compile(
    r"\bfrom\s+[\w.]+\.(?:resource_tracker|semaphore_tracker|forkserver)\s+import\s+main\b"
)

#: How execnet starts pytest-xdist's workers.
XDIST_WORKER = "import sys;exec(eval(sys.stdin.readline()))"

#: ``(module name ending, object in it, attribute holding the pid)``.
_HELPER_OBJECTS = (
    (".resource_tracker", "_resource_tracker", "_pid"),
    (".semaphore_tracker", "_semaphore_tracker", "_pid"),
    (".forkserver", "_forkserver", "_forkserver_pid"),
)


def is_helper_command(cmdline: str) -> bool:
    """Whether a command line is a multiprocessing family's helper or an xdist worker's."""
    return XDIST_WORKER in cmdline or _HELPER_PROGRAM.search(cmdline) is not None


def running_helper_pids() -> set[int]:
    """The pids of the helpers that the families' modules in this process have started.

    Looks only at modules already imported: a family nobody imported started no helper here.
    """
    pids: set[int] = set()
    for name, module in list(sys.modules.items()):
        for ending, attribute, pid_attribute in _HELPER_OBJECTS:
            if not name.endswith(ending):
                continue
            helper = getattr(module, attribute, None)
            pid = getattr(helper, pid_attribute, None)
            if isinstance(pid, int) and pid > 0:
                pids.add(pid)
    return pids
