"""The pytest plugin: wires pytest's hooks, options, markers and fixtures to the modules.

Registered under the name ``mpcheck`` (``-p no:mpcheck`` disables it).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_mpcheck import settings
from pytest_mpcheck.session import MpCheckSession, session_key


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
    return state.header() if state is not None else None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    state = item.config.stash.get(session_key, None)
    if state is not None:
        state.begin_test(item)
    return (yield)


@pytest.hookimpl(specname="pytest_runtest_setup", tryfirst=True)
def pytest_runtest_setup_markers(item: pytest.Item) -> None:
    # Not in the wrapper above: a failure there would skip the setup of other plugins.
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
    except BaseException:
        if state is not None:
            state.end_test(item, teardown_failed=True)
        raise
    if state is not None:
        state.end_test(item, teardown_failed=False)
    return result


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
    if state is not None and workeroutput:
        state.add_worker(workeroutput)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # trylast: after pytest's own implementation has torn down the remaining fixtures.
    state = session.config.stash.get(session_key, None)
    if state is not None:
        state.sweep()
        state.finish()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = terminalreporter.config.stash.get(session_key, None)
    if state is None:
        return
    for line in state.summary_lines():
        terminalreporter.write_line(line)
