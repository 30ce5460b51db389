"""Tracked processes: ``mp_spawn`` and the :class:`TrackedProcess` it returns.

A tracked process is a ``multiprocessing`` process of the test's start method whose ``run()``
first prepares the child (:mod:`pytest_mpcheck.bootstrap`), runs the checks of other parts of the
plugin, then the target; at the end it writes one pickle to a result file in the test's work
directory: the target's return value, or its exception with the remote traceback, and the checks'
messages. The parent reads that file when asked, once the child has ended.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import pickle
import select
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_mpcheck import arguments, bootstrap, output

if TYPE_CHECKING:
    from pytest_mpcheck.testrun import MpTest


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a child: the child's frames, file and line.

    Set as the ``__cause__`` of :attr:`TrackedProcess.error`, so that the error, raised again in
    the test, shows where it happened in the child.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n\n"""\n{self.text.rstrip()}\n"""'


class ChildError(Exception):
    """A child's exception that could not be pickled back, by type name and message."""


class ProcessFailed(Exception):
    """Raised by :attr:`TrackedProcess.result` when the child ended without returning a value."""


@dataclass
class _Outcome:
    """What a child sends back, pickled once at its end."""

    ok: bool
    value: Any = None
    error: BaseException | None = None
    error_type: str = ""
    error_text: str = ""
    traceback: str = ""
    messages: list[str] = field(default_factory=list)

    def as_tuple(self) -> tuple[Any, ...]:
        """The fields as a plain tuple: quicker to pickle than the object, in a fresh child."""
        return (
            self.ok,
            self.value,
            self.error,
            self.error_type,
            self.error_text,
            self.traceback,
            self.messages,
        )


def _describe_error(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__qualname__}: {text}" if text else type(error).__qualname__


def _write_outcome(workdir: str, token: str, outcome: _Outcome) -> None:
    if outcome == _RETURNED_NONE:
        bootstrap.write_result(workdir, token, _RETURNED_NONE_DATA)
        return
    try:
        data = pickle.dumps(outcome.as_tuple())
    except Exception as problem:
        if outcome.ok:
            outcome = _Outcome(
                ok=False,
                error_type="PicklingError",
                error_text=f"the return value of the target cannot be pickled: {problem}",
                messages=outcome.messages,
            )
        else:
            outcome.error = None  # the exception cannot travel; its text and traceback can
        data = pickle.dumps(outcome.as_tuple())
    bootstrap.write_result(workdir, token, data)


# The most common outcome, pickled once in the parent: a forked child need not run pickle.
_RETURNED_NONE = _Outcome(ok=True)
_RETURNED_NONE_DATA = pickle.dumps(_RETURNED_NONE.as_tuple())


class TrackedProcess(multiprocessing.process.BaseProcess):
    """A process started by ``mp_spawn``: a ``multiprocessing`` process, plus what came back.

    It has the whole interface of ``multiprocessing.Process`` (``start()``, ``join()``,
    ``is_alive()``, ``pid``, ``name``, ``exitcode``, ``terminate()``, ``kill()``, ``close()``,
    ``sentinel``, ``daemon``) and adds :attr:`result`, :attr:`error`, :attr:`traceback`,
    :attr:`output` and :attr:`check_messages`. ``join()`` without a timeout is bounded by the join
    timeout: a child still running then fails the test with its stack, and is ended.
    """

    # Parent-side attributes: not pickled into a spawned child.
    _PARENT_ONLY = ("_mp_test", "_mp_outcome", "_mp_seen")

    def __init__(
        self,
        test: MpTest,
        target: Callable[..., Any] | None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        daemon: bool | None = None,
        check: bool = True,
        number: int = 1,
    ) -> None:
        super().__init__(target=target, args=tuple(args), kwargs=dict(kwargs or {}), name=name)
        if name is None:
            # As plain multiprocessing.Process names them (not after this class), counted per test.
            self.name = f"Process-{number}"
        if daemon is not None:
            self.daemon = daemon
        self._start_method = test.method  # multiprocessing's own: the child's start method
        self._mp_spec = test.spec
        self._mp_token = uuid.uuid4().hex
        self._mp_check = check
        self._mp_test: MpTest | None = test
        self._mp_outcome: _Outcome | None = None
        self._mp_seen = False

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        context = multiprocessing.get_context(process_obj._start_method)
        return context.Process._Popen(process_obj)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._PARENT_ONLY}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._mp_test = None
        self._mp_outcome = None
        self._mp_seen = False

    # -- in the child ---------------------------------------------------------------------------

    def run(self) -> None:
        """Prepare the child, run the checks and the target, send the outcome back."""
        spec = self._mp_spec
        bootstrap.prepare_child(spec)
        target: Callable[..., Any] | None = self._target  # type: ignore[attr-defined]
        args: tuple[Any, ...] = self._args  # type: ignore[attr-defined]
        kwargs: dict[str, Any] = self._kwargs  # type: ignore[attr-defined]
        messages = bootstrap.run_checks(spec.checks, target, args, kwargs)
        try:
            value = target(*args, **kwargs) if target is not None else None
        except SystemExit as leaving:
            # sys.exit() is an exit code, as in multiprocessing, not an error.
            output.release_child_output()
            _write_outcome(spec.workdir, self._mp_token, _Outcome(ok=leaving.code in (None, 0)))
            raise
        except BaseException as error:
            output.release_child_output()
            # The child's own frames: this method's frame is left out.
            frames = "".join(traceback.format_tb(error.__traceback__.tb_next))  # type: ignore[union-attr]
            text = "".join(traceback.format_exception_only(type(error), error))
            _write_outcome(
                spec.workdir,
                self._mp_token,
                _Outcome(
                    ok=False,
                    error=error,
                    error_type=type(error).__qualname__,
                    error_text=str(error),
                    traceback=f"Traceback (most recent call last):\n{frames}{text}",
                    messages=messages,
                ),
            )
            raise
        output.release_child_output()
        _write_outcome(
            spec.workdir, self._mp_token, _Outcome(ok=True, value=value, messages=messages)
        )

    # -- in the parent --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the child, as ``multiprocessing.Process.start``."""
        bootstrap.mark_starter(self)
        super().start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the child; without a timeout, at most the join timeout, then fail the test."""
        __tracebackhide__ = True
        test = self._mp_test
        if timeout is not None or test is None:
            super().join(timeout)
            return
        if self._ended_within(test.join_timeout):
            super().join()  # it has ended: this only reaps it
            return
        if self._running():
            from pytest_mpcheck.hangs import Suspect

            test.fail_hung(
                [Suspect(self.pid or 0, self)],
                f"mpcheck: {self.name!r} (pid {self.pid}) did not finish: join() waited "
                f"{test.join_timeout:g}s (the join timeout)",
                "join() timed out: the child hung or is too slow",
            )

    def terminate(self) -> None:
        """Send SIGTERM, as ``multiprocessing.Process.terminate``; the test ends it on purpose,
        so the exit code that follows does not fail the test."""
        self._mp_seen = True
        super().terminate()

    def kill(self) -> None:
        """Send SIGKILL, as ``multiprocessing.Process.kill``; as :meth:`terminate`, on purpose."""
        self._mp_seen = True
        super().kill()

    def mark_reported(self) -> None:
        """The plugin reported this child (as hung) and ends it: its exit code is no failure."""
        self._mp_seen = True

    def _ended_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the child to end (its sentinel becomes readable).

        A bare ``poll`` on the sentinel: ``join(timeout)`` builds a selector for each call, which
        costs a tenth of a fork's start+join.
        """
        sentinel = self.sentinel
        poller = select.poll()
        poller.register(sentinel, select.POLLIN | select.POLLHUP)
        deadline = time.monotonic() + seconds
        while True:
            # poll() is retried after a signal (PEP 475); the bound is in milliseconds.
            if poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                return True
            if time.monotonic() >= deadline:
                return False

    def _running(self) -> bool:
        popen = self._popen  # type: ignore[attr-defined]
        return popen is not None and popen.poll() is None

    def _exitcode_unseen(self) -> int | None:
        popen = self._popen  # type: ignore[attr-defined]
        return popen.poll() if popen is not None else None

    @property
    def exitcode(self) -> int | None:
        """The exit code, as in ``multiprocessing.Process``; reading it counts as checking it."""
        code = self._exitcode_unseen()
        if code is not None:
            self._mp_seen = True
        return code

    def _load(self) -> _Outcome | None:
        if self._mp_outcome is None:
            test = self._mp_test
            data = test.result_data(self._mp_token) if test is not None else None
            if data is None:
                return None
            try:
                self._mp_outcome = _Outcome(*pickle.loads(data))
            except Exception as problem:
                self._mp_outcome = _Outcome(
                    ok=False,
                    error_type=type(problem).__qualname__,
                    error_text=f"the child's result could not be unpickled: {problem}",
                )
        return self._mp_outcome

    def _finished(self) -> _Outcome | None:
        """Join (bounded) a started child and load its outcome."""
        __tracebackhide__ = True
        if self._popen is None:  # type: ignore[attr-defined]
            raise RuntimeError(f"{self.name!r} was not started; call start() first")
        if self._running():
            self.join()
        return self._load()

    @property
    def result(self) -> Any:
        """The target's return value. Waits for the child (bounded by the join timeout).

        If the child raised, its exception is raised here, with the remote traceback as its cause;
        if it ended without a result (killed, ``os._exit``), :class:`ProcessFailed` is raised.
        """
        __tracebackhide__ = True
        outcome = self._finished()
        if outcome is not None and outcome.ok:
            return outcome.value
        error = self.error
        if error is not None:
            raise error
        raise ProcessFailed(f"{self.name!r} (pid {self.pid}) {self._exit_words()} without a result")

    @property
    def error(self) -> BaseException | None:
        """The child's exception, with its remote traceback as ``__cause__``; ``None`` if none.

        Waits for the child (bounded by the join timeout). Reading it counts as checking it.
        """
        __tracebackhide__ = True
        outcome = self._finished()
        self._mp_seen = True
        if outcome is None or outcome.ok or not (outcome.error_type or outcome.error):
            return None
        error = outcome.error
        if error is None:
            error = ChildError(f"{outcome.error_type}: {outcome.error_text}")
        if outcome.traceback and not isinstance(error.__cause__, RemoteTraceback):
            error.__cause__ = RemoteTraceback(outcome.traceback)
        return error

    @property
    def traceback(self) -> str | None:
        """The child's traceback as text (its own frames, file and line), or ``None``."""
        outcome = self._finished()
        return outcome.traceback if outcome is not None and outcome.traceback else None

    @property
    def output(self) -> str:
        """What the child wrote to stdout and stderr so far, line by line as written."""
        test = self._mp_test
        if test is None or self.pid is None:
            return ""
        return test.output.of_pid(self.pid)

    @property
    def check_messages(self) -> list[str]:
        """Messages of the checks run in the child before its target (see bootstrap)."""
        outcome = self._load()
        return list(outcome.messages) if outcome is not None else []

    def stack(self, timeout: float = 2.0) -> str | None:
        """The current Python stacks of all the child's threads, most recent call last.

        ``None`` when the child is not running or does not answer within ``timeout`` seconds (it
        answers once its start-up is done and its target is about to run).
        """
        test = self._mp_test
        if test is None or self.pid is None or not self._running():
            return None
        from pytest_mpcheck import stacks

        return stacks.stacks_of(test.workdir, [self.pid], timeout, pyspy=False)[self.pid].text

    def waiting_in(self) -> str | None:
        """What the running child waits in, in words (a lock, a queue, a join, a sleep), or
        ``None`` when it is running on a CPU or cannot be told."""
        test = self._mp_test
        if test is None or self.pid is None or not self._running():
            return None
        from pytest_mpcheck import stacks

        return stacks.stacks_of(test.workdir, [self.pid], 2.0, pyspy=False)[self.pid].waiting_in

    def _exit_words(self) -> str:
        code = self._exitcode_unseen()
        if code is None:
            return "is still running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"was killed by {name} (exit code {code})"
        return f"exited with code {code}"

    # -- at teardown ----------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What fails the test at teardown for this (ended) child; empty when all is well."""
        if self._popen is None or self._running():  # type: ignore[attr-defined]
            return []
        outcome = self._load()
        found: list[str] = []
        if outcome is not None and outcome.messages:
            found.append(
                f"{self.name!r} (pid {self.pid}):\n"
                + "\n".join(f"    {message}" for message in outcome.messages)
            )
        if not self._mp_check or self._mp_seen:
            return found
        code = self._exitcode_unseen()
        if outcome is not None and not outcome.ok and outcome.traceback:
            found.append(
                f"{self.name!r} (pid {self.pid}) raised "
                f"{outcome.error_type}: {outcome.error_text}\n{outcome.traceback.rstrip()}"
            )
        elif code:
            found.append(f"{self.name!r} (pid {self.pid}) {self._exit_words()}")
        return found

    def __repr__(self) -> str:
        return super().__repr__().replace("<TrackedProcess", "<TrackedProcess", 1)


class Spawner:
    """The ``mp_spawn`` fixture: a factory of tracked processes, checked at teardown."""

    def __init__(self, test: MpTest) -> None:
        self._test = test
        self.processes: list[TrackedProcess] = []
        """Every process made by this factory in this test, in order."""

    def __call__(
        self,
        target: Callable[..., Any] | None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        daemon: bool | None = None,
        start: bool = True,
        check: bool = True,
    ) -> TrackedProcess:
        """A tracked process running ``target(*args, **kwargs)``, started unless ``start=False``.

        With ``check=True`` a child that raised or exited with a code other than 0 fails the test
        at teardown with its traceback, unless the test read its ``error`` or ``exitcode``.
        """
        __tracebackhide__ = True
        arguments.callable_or_none("mp_spawn", "target", target)
        arguments.iterable("mp_spawn", "args", args)
        arguments.mapping_or_none("mp_spawn", "kwargs", kwargs)
        arguments.str_or_none("mp_spawn", "name", name)
        arguments.bool_("mp_spawn", "daemon", daemon, none=True)
        arguments.bool_("mp_spawn", "start", start)
        arguments.bool_("mp_spawn", "check", check)
        process = TrackedProcess(
            self._test, target, args, kwargs, name, daemon, check, len(self.processes) + 1
        )
        self.processes.append(process)
        if start:
            process.start()
        return process

    def finish(self) -> None:
        """Teardown: a child still alive hung or was never joined; then errors and exit codes."""
        __tracebackhide__ = True
        test = self._test
        started = [p for p in self.processes if p._popen is not None]  # type: ignore[attr-defined]
        # Children that are already exiting get the settle window, as the process watch gives.
        deadline = time.monotonic() + test.settle
        while any(p._running() for p in started) and time.monotonic() < deadline:
            time.sleep(0.005)
        hung = [p for p in started if p._running()]
        problems: list[str] = []
        for process in started:
            problems.extend(process.problems())
        if hung:
            from pytest_mpcheck.hangs import Suspect, format_hung, join_advice

            names = ", ".join(f"{p.name!r} (pid {p.pid})" for p in hung)
            findings = test.end_hung(
                [Suspect(p.pid or 0, p) for p in hung],
                "still running at the end of the test: it hung, or the test never joined it",
            )
            message = format_hung(
                f"mpcheck: {test.item.nodeid}: {names} still running at teardown",
                findings,
                join_advice(test.join_timeout),
            )
            if problems:
                message += "\n\nAlso:\n" + "\n\n".join(problems)
            import pytest

            pytest.fail(message, pytrace=False)
        if problems:
            import pytest

            pytest.fail(
                f"mpcheck: {test.item.nodeid}: child process failed\n\n"
                + "\n\n".join(problems)
                + "\n\n(Read p.error or p.exitcode in the test, or pass check=False to "
                "mp_spawn, to check it yourself.)",
                pytrace=False,
            )
