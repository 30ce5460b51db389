"""The start-method matrix: each test that uses an ``mp_*`` fixture, once per start method.

Every ``mp_*`` fixture depends on ``mp_start_method``; :func:`parametrize` gives that fixture one
value per method (ids ``[fork]``, ``[spawn]``, ``[forkserver]``) when the test has an
``mp_start_methods`` marker or the run has ``--mp-start-methods`` (ini ``mp_start_methods``).
Otherwise the test runs once, under the platform's default method, and its id is unchanged.

A marker with bad arguments does not stop the collection of other tests: the test is not
parametrized, and fails at setup with a message naming the bad value and the methods available.
"""

from __future__ import annotations

import multiprocessing

import pytest

from pytest_mpcheck.settings import available_start_methods, check_start_methods

#: The fixture that every ``mp_*`` fixture depends on, and that the matrix parametrizes.
FIXTURE = "mp_start_method"


def marker_methods(node: pytest.Item, nodeid: str) -> tuple[str, ...]:
    """The methods of the ``mp_start_methods`` marker; fails with a usage message when bad."""
    marker = node.get_closest_marker("mp_start_methods")
    if marker is None:
        return ()
    where = f"{nodeid}: @pytest.mark.mp_start_methods"
    if marker.kwargs or not marker.args or not all(isinstance(a, str) for a in marker.args):
        pytest.fail(
            f"{where} takes the names of start methods, e.g. "
            f'mp_start_methods("fork", "spawn"); got args={marker.args!r} '
            f"kwargs={marker.kwargs!r}. Available: {', '.join(available_start_methods())}",
            pytrace=False,
        )
    names: list[str] = []
    for arg in marker.args:
        names.extend(part.strip() for part in arg.split(","))
    try:
        return check_start_methods(names, where)
    except pytest.UsageError as error:
        problem = str(error)
    pytest.fail(problem, pytrace=False)


def parametrize(metafunc: pytest.Metafunc, configured: tuple[str, ...]) -> None:
    """``pytest_generate_tests``: one call per start method for tests of the ``mp_*`` fixtures."""
    if FIXTURE not in metafunc.fixturenames:
        return
    try:
        methods = marker_methods(metafunc.definition, metafunc.definition.nodeid) or configured
    except pytest.fail.Exception:
        return  # reported at setup by :func:`method_for`, for this test only
    if methods:
        metafunc.parametrize(FIXTURE, list(methods), ids=list(methods))


def method_for(request: pytest.FixtureRequest) -> str:
    """The start method of the current test (the ``mp_start_method`` fixture)."""
    param = getattr(request, "param", None)
    if isinstance(param, str):
        return param
    marker_methods(request.node, request.node.nodeid)  # fails the test if the marker is bad
    return multiprocessing.get_start_method()
