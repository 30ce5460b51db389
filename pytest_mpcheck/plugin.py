"""The pytest plugin: wires pytest's hooks, options, markers and fixtures to the modules.

Registered under the name ``mpcheck`` (``-p no:mpcheck`` disables it).

The fixtures' modules (spawner, pools, lock checker, output) are imported when a fixture is first
used: every pytest run loads this plugin, and a suite that uses none of them should not pay for
them.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mpcheck import report, settings, timeouts
from pytest_mpcheck.fixtures import startmethods
from pytest_mpcheck.watch.session import (
    MpCheckSession,
    internal_error,
    loaded_lockcheck,
    session_key,
)

if TYPE_CHECKING:
    import multiprocessing.context

    from pytest_mpcheck.fixtures.output import OutputLog
    from pytest_mpcheck.fixtures.pools import ExecutorFactory, PoolFactory
    from pytest_mpcheck.fixtures.spawn import Spawner
    from pytest_mpcheck.fixtures.testrun import MpTest
    from pytest_mpcheck.locks.checker import LockChecker


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_mpcheck import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    for marker in settings.MARKERS:
        config.addinivalue_line("markers", marker)
    state = MpCheckSession(config, settings.resolve_settings(config))
    config.stash[session_key] = state
    state.start()
    config.add_cleanup(state.stop)


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(session_key, None)
    try:
        return state.header() if state is not None else None
    except Exception:
        internal_error("writing the report header")
        return None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    state = item.config.stash.get(session_key, None)
    if state is not None:
        try:
            state.begin_test(item)
        except Exception:
            internal_error("noting the processes before " + item.nodeid)
    return (yield)


@pytest.hookimpl(specname="pytest_runtest_setup", tryfirst=True)
def pytest_runtest_setup_markers(item: pytest.Item) -> None:
    # Not in the wrapper above: a failure there would skip the setup of the other plugins, whose
    # teardown then fails on what their setup did not leave (pytest's own among them).
    state = item.config.stash.get(session_key, None)
    if state is not None:
        state.check_markers(item)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    state = item.config.stash.get(session_key, None)
    try:
        result = yield
        # After every teardown: a test that went on after its children were ended for
        # pytest-timeout's thread method fails here.
        timeouts.check_teardown(item)
    except BaseException:
        if state is not None:
            state.end_test(item, teardown_failed=True)
        raise
    if state is not None:
        state.end_test(item, teardown_failed=False)
    return result


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    state = metafunc.config.stash.get(session_key, None)
    startmethods.parametrize(metafunc, state.settings.start_methods if state is not None else ())


@pytest.hookimpl(wrapper=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Generator[None, Any, Any]:
    """pytest-timeout: end the test's children, with their stacks, before it ends the test."""
    result = yield
    timeouts.after_set_timer(item, settings)
    return result


@pytest.hookimpl(wrapper=True, optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> Generator[None, Any, Any]:
    result = yield
    timeouts.after_cancel_timer(item)
    return result


@pytest.fixture
def mp_start_method(request: pytest.FixtureRequest) -> str:
    """The start method of this test: one of the --mp-start-methods matrix, or the default.

    Parametrized by ``--mp-start-methods`` (ini ``mp_start_methods``) and by the marker
    ``@pytest.mark.mp_start_methods(...)``; every other ``mp_*`` fixture uses it.
    """
    return startmethods.method_for(request)


@pytest.fixture
def mp_context(mp_start_method: str) -> multiprocessing.context.BaseContext:
    """The ``multiprocessing`` context of this test's start method."""
    return multiprocessing.get_context(mp_start_method)


@pytest.fixture
def mp_test(request: pytest.FixtureRequest, mp_start_method: str) -> Iterator[MpTest]:
    """What the ``mp_*`` fixtures of one test share (start method, join timeout, work directory)."""
    from pytest_mpcheck.fixtures import bootstrap
    from pytest_mpcheck.fixtures.testrun import MpTest
    from pytest_mpcheck.locks.modulelocks import MODULE_LOCK_CHECK

    # Children of mp_spawn look for module-level locks that their import made again.
    bootstrap.register_child_check(MODULE_LOCK_CHECK)
    test = MpTest(request.node, mp_start_method)
    yield test
    test.cleanup()


@pytest.fixture
def mp_output(mp_test: MpTest) -> OutputLog:
    """The output of this test's children, line by line in the real order of writing.

    ``mp_output.lines`` (each with ``.pid``, ``.name``, ``.stream``, ``.time_ns``, ``.text``),
    ``mp_output.text``, ``mp_output.by_process()``, ``mp_output.assert_grouped()``.
    """
    return mp_test.output


@pytest.fixture
def mp_spawn(mp_test: MpTest) -> Iterator[Spawner]:
    """Factory of tracked processes of this test's start method.

    ``mp_spawn(target, args=(), kwargs=None, name=None, daemon=None, start=True, check=True)``
    returns a process like ``multiprocessing.Process`` with ``result``, ``error`` and ``output``.
    ``join()`` is bounded by the join timeout. At teardown a child still running fails the test
    with its stack and is ended; with ``check=True`` a child that raised or exited non-zero fails
    the test with its traceback, unless the test read its ``error`` or ``exitcode``.
    """
    from pytest_mpcheck.fixtures.spawn import Spawner

    spawner = Spawner(mp_test)
    yield spawner
    spawner.finish()


@pytest.fixture
def mp_pool(mp_test: MpTest) -> Iterator[PoolFactory]:
    """Factory of ``multiprocessing.pool.Pool`` of this test's start method.

    ``mp_pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None)``. At teardown
    each pool is closed and joined within the join timeout: one that does not finish fails the test
    with its busy workers' stacks and is terminated; a task error nobody fetched fails the test.
    """
    from pytest_mpcheck.fixtures.pools import PoolFactory

    factory = PoolFactory(mp_test)
    yield factory
    factory.finish()


@pytest.fixture
def mp_executor(mp_test: MpTest) -> Iterator[ExecutorFactory]:
    """Factory of ``concurrent.futures.ProcessPoolExecutor`` of this test's start method.

    ``mp_executor(max_workers=None, initializer=None, initargs=(), max_tasks_per_child=None)``.
    At teardown each executor is shut down within the join timeout, as ``mp_pool`` is.
    """
    from pytest_mpcheck.fixtures.pools import ExecutorFactory

    factory = ExecutorFactory(mp_test)
    yield factory
    factory.finish()


@pytest.fixture
def mp_locks(request: pytest.FixtureRequest, mp_test: MpTest) -> Iterator[LockChecker]:
    """The lock checker: checked ``multiprocessing`` locks of this test's start method.

    ``mp_locks.Lock(name)`` and ``mp_locks.RLock(name)`` are real locks to pass to children; each
    request, acquisition and release is recorded. After the test it fails for two holders at once,
    a lock held by a process that ended, a release by a process that did not hold the lock,
    lock-order inversion, and a lock that is not shared. ``mp_locks.stats(name)`` gives the
    contention figures; ``assert_exclusive(name)``, ``assert_no_contention(name)``,
    ``assert_contended(name)``, ``assert_ordered()``, ``assert_released()`` and ``check()`` assert.
    """
    from pytest_mpcheck.locks import checker as lockcheck

    checker = lockcheck.LockChecker(mp_test.context, title=request.node.nodeid)
    yield checker
    state = request.config.stash.get(session_key, None)
    mode = state.test_mode(request.node) if state is not None else "fail"
    lockcheck.finish_test(request.node, checker, mp_test.settle, mode)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    state = request.config.stash.get(session_key, None)
    if state is None or fixturedef.scope == "function":
        return (yield)
    owner = f"{fixturedef.scope}-scoped fixture {fixturedef.argname!r}"
    with state.recorder.owned_by(owner, fixturedef):
        return (yield)


def pytest_fixture_post_finalizer(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    state = request.config.stash.get(session_key, None)
    if state is not None and fixturedef.scope != "function":
        state.scope_finished(fixturedef)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: add up the figures of a worker that finished."""
    state = node.config.stash.get(session_key, None)
    workeroutput = getattr(node, "workeroutput", None)
    try:
        if state is not None and workeroutput:
            state.add_worker(workeroutput)
        if workeroutput:
            from pytest_mpcheck.locks import tally

            tally.add_worker(node.config, workeroutput)
    except Exception:
        internal_error("adding up the figures of an xdist worker")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # trylast: after pytest's own implementation has torn down the remaining fixtures.
    state = session.config.stash.get(session_key, None)
    try:
        if state is not None:
            state.sweep()
            try:
                state.finish()
            except report.ReportNotWritten as problem:
                # One line in the summary; pytest's own summary and exit status stay as they are.
                session.config.stash[report.report_problem_key] = str(problem)
        lockcheck = loaded_lockcheck()
        if lockcheck is not None:
            lockcheck.session_finish(session.config)
    except Exception:
        internal_error("finishing the session")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = terminalreporter.config.stash.get(session_key, None)
    if state is None:
        return
    problem = terminalreporter.config.stash.get(report.report_problem_key, None)
    if problem is not None:
        terminalreporter.write_line(problem, yellow=True, bold=True)
    try:
        for line in state.summary_lines():
            terminalreporter.write_line(line)
        lockcheck = loaded_lockcheck()
        if lockcheck is not None:
            for line in lockcheck.summary_lines(terminalreporter.config):
                terminalreporter.write_line(line)
    except Exception:
        internal_error("writing the terminal summary")
