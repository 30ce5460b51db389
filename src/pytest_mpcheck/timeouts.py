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
    goes on once its children are ended fails at teardown. The test may still finish in that
    window and pytest-timeout cancel its timer: the session then goes on, so the processes of
    wider-scoped fixtures are not touched here. Should the main thread be unable to run signal
    handlers at all, the children of the fixtures still die with pytest
    (``PR_SET_PDEATHSIG``).

    Once the timer's function runs, ``os._exit`` is certain (a cancel then waits for it): the
    function it runs is wrapped (:func:`ending_the_session_first`), and before pytest-timeout
    dumps its stacks and exits, every process of the session still running (a module or session
    fixture's pool, executor or server, a child the alarm could not end) is ended as the
    session's end would end it, and named on the terminal. Bounded, and never raises into
    pytest-timeout's thread.

Nothing is set up when another handler of ``SIGALRM`` is in place (the test's own), but for that
last step, which needs no signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
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

        # Set while the alarm's work runs: the timer's wrapper waits for it (bounded) rather
        # than end the same children at the same time and interleave the two reports.
        quiet = threading.Event()
        quiet.set()
        item.stash[_quiet_key] = (quiet, lead)

        def before_exit(signum: int, frame: FrameType | None) -> None:
            quiet.clear()
            try:
                text = _end_children(run, item, timeout, "thread", lead, _test_children(run, item))
                if text is None:
                    return
                _to_terminal(item, text)
                item.stash[_report_key] = text
            finally:
                quiet.set()

        previous = signal.signal(signal.SIGALRM, before_exit)
        signal.setitimer(signal.ITIMER_REAL, max(0.05, timeout - lead))

        def undo() -> None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if signal.getsignal(signal.SIGALRM) is before_exit:
                signal.signal(signal.SIGALRM, previous)

        item.stash[_undo_key] = undo


_report_key = pytest.StashKey[str]()

#: The alarm's work in progress (thread method), and the most it takes: ``(quiet, lead)``.
_quiet_key: pytest.StashKey[tuple[threading.Event, float]] = pytest.StashKey()

#: How long the processes of the session are given after SIGTERM before pytest-timeout's
#: ``os._exit`` (at most: ``--mp-kill-grace`` when shorter).
EXIT_GRACE = 1.0


def _to_terminal(item: pytest.Item, text: str) -> None:
    """Write ``text`` to the terminal itself, not to the test's captured output: ``os._exit``
    may follow."""
    capman = item.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        writer = item.config.get_terminal_writer()
        writer.line()
        writer.sep("+", "mpcheck: before pytest-timeout ends pytest")
        writer.line(text)
        writer.flush()


@contextlib.contextmanager
def ending_the_session_first(run: MpCheckRun) -> Iterator[None]:
    """While pytest-timeout sets its timer: the function that its timer thread runs, which ends
    pytest with ``os._exit``, is wrapped so that the session's processes are ended first.

    pytest-timeout's ``pytest_timeout_set_timer`` hands its module's ``timeout_timer`` to the
    ``threading.Timer`` it makes: for that call only, the module's name is bound to the wrapper,
    and the timer keeps it. Only its ``thread`` method uses that function (and its ``signal``
    method off the main thread, where it falls back to a thread): the ``signal`` method, and a
    plugin that sets the timer its own way, are left as they are.
    """
    module = sys.modules.get("pytest_timeout")
    original = getattr(module, "timeout_timer", None)
    if module is None or not callable(original):
        yield
        return
    wrapper = _session_ended_first(run, original)
    module.timeout_timer = wrapper  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if getattr(module, "timeout_timer", None) is wrapper:
            module.timeout_timer = original  # type: ignore[attr-defined]


def _session_ended_first(
    run: MpCheckRun, original: Callable[[pytest.Item, Any], object]
) -> Callable[[pytest.Item, Any], object]:
    def timeout_timer(item: pytest.Item, settings: Any) -> object:
        """pytest-timeout's function, once the session's processes were ended."""
        try:
            if _exit_is_certain(settings):
                _end_the_session(run, item, settings)
        except Exception:
            pass  # never stand in the way of pytest-timeout's stacks and exit
        return original(item, settings)

    timeout_timer.__wrapped__ = original  # type: ignore[attr-defined]
    return timeout_timer


def _exit_is_certain(settings: Any) -> bool:
    """Whether pytest-timeout's timer function will call ``os._exit``: it returns instead when
    it finds a debugger (its own test, with its own function)."""
    if getattr(settings, "disable_debugger_detection", False):
        return True
    is_debugging = getattr(sys.modules.get("pytest_timeout"), "is_debugging", None)
    return not callable(is_debugging) or not is_debugging()


def _end_the_session(run: MpCheckRun, item: pytest.Item, settings: Any) -> None:
    """End every process of the session still running, and say so on the terminal."""
    baseline = run.session_baseline
    if baseline is None or os.getpid() != run.watch.session_pid:
        return
    alarm = item.stash.get(_quiet_key, None)
    if alarm is not None:
        quiet, lead = alarm
        quiet.wait(lead)  # the test's children, with their stacks, are the alarm's to report
    ended = run.watch.end_before_exit(baseline, min(run.settings.kill_grace, EXIT_GRACE))
    if not ended:
        return
    from pytest_mpcheck import report

    timeout = float(getattr(settings, "timeout", 0) or 0)
    _to_terminal(item, report.format_ended_before_exit(timeout, "thread", ended))


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
