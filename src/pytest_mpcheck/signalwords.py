"""How the reports name a signal that ended a process, and who usually sends it."""

from __future__ import annotations

import signal

#: How a process is usually sent each signal that ends it from outside.
SENT_BY = {
    "SIGTERM": "terminate()",
    "SIGKILL": "kill(), or the kernel's OOM killer",
    "SIGINT": "Ctrl-C, or os.kill",
}


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal 99`` for a number that names no signal here."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_sender(signum: int) -> str:
    """``SIGTERM (terminate())``: the signal, and who usually sends it."""
    name = signal_name(signum)
    return f"{name} ({SENT_BY.get(name, 'a signal')})"
