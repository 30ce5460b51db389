"""pytest-timeout: report the children's stacks and end them before pytest-timeout ends the test.

pytest-timeout sets its timer through its ``pytest_timeout_set_timer`` hook; this module wraps
that hook (:func:`after_set_timer`) and its ``pytest_timeout_cancel_timer`` counterpart.

``signal`` method
    pytest-timeout's ``SIGALRM`` handler is wrapped: when the alarm comes, the live children of the
    test (started by the fixtures or not) have their stacks read and are ended, the report is added
    to the test's report, and then pytest-timeout's handler fails the test as usual.

``thread`` method
    pytest-timeout's timer thread calls ``os._exit`` when the time is up, so nothing could be done
    after it. A ``SIGALRM`` of our own, set to go off shortly before (:func:`lead_time`), does
    the same work first, in the main thread, without a thread of our own; it writes the report to
    the terminal at once (``os._exit`` may follow), and keeps the findings, so that a test that
    goes on once its children are ended fails at teardown. pytest-timeout then does what it
    always does. Should the main thread be unable to run signal handlers at all, the children of
    the fixtures still die with pytest (``PR_SET_PDEATHSIG``).

Nothing is set up when another handler of ``SIGALRM`` is in place (the test's own).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mpcheck._os import procfs
from pytest_mpcheck.watch.terminate import reap_interrupted_waits

if TYPE_CHECKING:
    # The stack reader and the report come in only when a timeout expires (see _end_children).
    from pytest_mpcheck.fixtures import hangs
    from pytest_mpcheck.run import MpCheckRun

#: What to undo when pytest-timeout cancels its timer.
_undo_key = pytest.StashKey[Callable[[], None]]()


def lead_time(timeout: float) -> float:
    """How long before pytest-timeout's ``os._exit`` the children are ended (thread method)."""
    return min(2.0, max(0.1, timeout / 4))


def _test_children(run: MpCheckRun, item: pytest.Item) -> list[hangs.Suspect]:
    from pytest_mpcheck.fixtures import hangs

    baseline = run.baseline_of(item)
    before = baseline.pids if baseline is not None else frozenset()
    suspects = []
    tree = run.watch.descendants()
    for pid in tree:
        if pid in before or procfs.state(pid) in (None, "Z"):
            continue
        record = run.recorder.records.get(pid)
        if record is not None and record.scope is not None:
            continue  # a wider-scoped fixture's process, not this test's
        if record is None and run.watch.orphaned_by_a_scope(pid, tree):
            continue  # a wider-scoped fixture's daemon
        if run.watch.is_helper(pid, tree):
            continue
        suspects.append(hangs.Suspect(pid, hangs.handle_of(run, pid)))
    return suspects


def _end_children(
    run: MpCheckRun,
    item: pytest.Item,
    timeout: float,
    method: str,
    budget: float,
    suspects: list[hangs.Suspect],
) -> str | None:
    """Stacks, end, record; the report text, or ``None`` when the test has no live child."""
    from pytest_mpcheck.fixtures import hangs

    if not suspects:
        return None
    hung = hangs.end_hung(
        run,
        item,
        suspects,
        f"still running when pytest-timeout's {timeout:g}s timeout ({method} method) expired",
        grace=min(run.settings.kill_grace, budget / 4),
        stack_timeout=budget / 2,
        pyspy=budget >= 1.0,
    )
    if not hung.findings:
        return None
    count = len(hung.findings)
    headline = (
        f"mpcheck: {item.nodeid}: pytest-timeout ({timeout:g}s, {method} method): "
        f"{count} child process{'es' if count != 1 else ''} of the test "
        "still running; their stacks, then ended"
    )
    return hangs.format_hung(
        headline,
        hung,
        "The stacks show where each child was when the time ran out.",
    )


def _ours_free() -> bool:
    handler = signal.getsignal(signal.SIGALRM)
    return handler in (signal.SIG_DFL, signal.SIG_IGN, None)


def after_set_timer(run: MpCheckRun, item: pytest.Item, settings: Any) -> None:
    """Called once pytest-timeout has set its timer for ``item``."""
    if not hasattr(signal, "SIGALRM"):
        return
    timeout = float(getattr(settings, "timeout", 0) or 0)
    method = getattr(settings, "method", None)
    if timeout <= 0:
        return
    if method == "signal":
        theirs = signal.getsignal(signal.SIGALRM)
        if not callable(theirs):
            return

        def on_alarm(signum: int, frame: FrameType | None) -> None:
            __tracebackhide__ = True
            suspects: list[hangs.Suspect] = []
            try:
                suspects = _test_children(run, item)
                text = _end_children(run, item, timeout, "signal", 5.0, suspects)
            except Exception:
                text = None  # never stand in the way of pytest-timeout
            if text is not None:
                item.add_report_section("call", "mpcheck", text)
            try:
                theirs(signum, frame)
            except BaseException:
                # It fails the test from here: a Popen.wait() the alarm interrupted never
                # resumes to reap the child that was ended.
                with contextlib.suppress(Exception):
                    reap_interrupted_waits(s.handle for s in suspects)
                raise

        signal.signal(signal.SIGALRM, on_alarm)
    elif method == "thread":
        if not _ours_free():
            return
        lead = lead_time(timeout)

        def before_exit(signum: int, frame: FrameType | None) -> None:
            text = _end_children(run, item, timeout, "thread", lead, _test_children(run, item))
            if text is None:
                return
            # To the terminal itself, not the test's captured output: os._exit may follow.
            capman = item.config.pluginmanager.getplugin("capturemanager")
            with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
                writer = item.config.get_terminal_writer()
                writer.line()
                writer.sep("+", "mpcheck: before pytest-timeout ends pytest")
                writer.line(text)
                writer.flush()
            item.stash[_report_key] = text

        previous = signal.signal(signal.SIGALRM, before_exit)
        signal.setitimer(signal.ITIMER_REAL, max(0.05, timeout - lead))

        def undo() -> None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if signal.getsignal(signal.SIGALRM) is before_exit:
                signal.signal(signal.SIGALRM, previous)

        item.stash[_undo_key] = undo


_report_key = pytest.StashKey[str]()


def after_cancel_timer(item: pytest.Item) -> None:
    """Called once pytest-timeout has cancelled its timer for ``item``."""
    undo = item.stash.get(_undo_key, None)
    if undo is not None:
        del item.stash[_undo_key]
        undo()


def check_teardown(item: pytest.Item) -> None:
    """Fail a test that went on after its children were ended for its timeout (thread method)."""
    __tracebackhide__ = True
    text = item.stash.get(_report_key, None)
    if text is not None:
        del item.stash[_report_key]
        pytest.fail(text, pytrace=False)
