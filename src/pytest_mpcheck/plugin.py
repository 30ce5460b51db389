"""The pytest plugin: options, hook specifications, markers and fixtures.

Registered under the name ``mpcheck`` (``-p no:mpcheck`` disables it). ``pytest_configure`` makes
the run's state, :class:`~pytest_mpcheck.run.MpCheckRun`, and registers it as a plugin of its own:
the hooks that need that state (the watch around each test, the summary, the JSON report,
pytest-xdist and pytest-timeout) are its methods.

The fixtures' modules (spawner, pools, lock checker, output) are imported when a fixture is first
used: every pytest run loads this plugin, and a suite that uses none of them should not pay for
them.
"""

from __future__ import annotations

import functools
import importlib.machinery
import multiprocessing
import sys
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from pytest_mpcheck import settings
from pytest_mpcheck.fixtures import startmethods
from pytest_mpcheck.run import (
    PLUGIN_NAME,
    MpCheckRun,
    guard_the_exit,
    remember_child_checks,
    run_key,
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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> Generator[None, None, None]:
    remember_child_checks(early_config)
    guard_the_exit(early_config)
    return (yield)


def pytest_configure(config: pytest.Config) -> None:
    config.add_cleanup(functools.partial(_release_loaders, config))  # the last cleanup to run
    for marker in settings.MARKERS:
        config.addinivalue_line("markers", marker)
    run = MpCheckRun(config, settings.resolve_settings(config))
    config.stash[run_key] = run
    config.pluginmanager.register(run, PLUGIN_NAME)
    config.add_cleanup(functools.partial(config.pluginmanager.unregister, run))
    run.start()


def _release_loaders(config: pytest.Config) -> None:
    """Let the plugin's modules forget the run that imported them.

    pytest loads the modules of an installed plugin through its assertion rewriter, which then
    is their loader (``__loader__``, ``__spec__.loader``) and holds the run's config. The modules
    that this plugin imports on first use (a fixture's, a report's) are first imported during
    some run; in a process that makes several runs (``pytester.runpytest_inprocess``), each such
    module would keep that run, its config and all its plugins, alive for good. At the end of
    each run, the modules it loaded get a plain loader of their file instead.
    """
    for name, module in list(sys.modules.items()):
        if name != "pytest_mpcheck" and not name.startswith("pytest_mpcheck."):
            continue
        loader = getattr(module, "__loader__", None)
        path = getattr(module, "__file__", None)
        # The rewriter's loader keeps its config as ``config``: pytest's, not ours to rely on
        # further (the in-process tests say when it stops holding).
        if getattr(loader, "config", None) is not config or not isinstance(path, str):
            continue
        plain = importlib.machinery.SourceFileLoader(name, path)
        module.__loader__ = plain
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is loader:
            spec.loader = plain


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
    request.node.stash[lockcheck.checker_key] = checker
    run = request.config.stash[run_key]
    checker.exit_status = run.exit_status_of
    checker.ended_by_mpcheck = functools.partial(run.ended_as_hung, request.node)
    yield checker
    lockcheck.finish_test(
        request.node,
        checker,
        mp_test.settle,
        run.test_mode(request.node),
        record=run.log.record,
    )
