"""pytest runs in one process (``pytester.runpytest()``, as pytest-xdist's suite makes them) are
independent, and an in-process run leaves nothing alive."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FAST_ARGS

#: The project of the in-process runs: a process started by a module-scoped fixture and by a
#: test, a shared memory segment, and the plugin's own fixtures (the modules they load).
INNER = """
import multiprocessing
from multiprocessing import shared_memory

import pytest

def work():
    return 1

@pytest.fixture(scope="module")
def started():
    p = multiprocessing.get_context("fork").Process(target=work)
    p.start()
    p.join()
    return p

def test_fixture_process(started):
    assert started.exitcode == 0

def test_shared_memory():
    segment = shared_memory.SharedMemory(create=True, size=64)
    segment.close()
    segment.unlink()
"""

INNER_FIXTURES = """
def test_spawned(mp_spawn, mp_locks):
    lock = mp_locks.Lock("a")
    with lock:
        pass
    p = mp_spawn(len, args=("ab",))
    p.join()
    assert p.result == 2
"""

#: How many in-process runs with the plugin, and then without it. Five (each costs about 0.2 s of
#: CPU): the first three import what the others reuse, so two runs of each kind are counted, and
#: that is enough. Runs that each kept a copy of the plugin (about 1,900 objects) would show 3,800
#: objects more with it than without, against a tolerance of 500; a Config or an at-fork callback
#: kept by a run is seen from one run on.
IN_PROCESS_RUNS = 5

#: The session that makes the in-process runs: with the plugin, then with ``-p no:mpcheck``.
#: Objects are counted before each run, after the teardown of the previous test (pytester holds
#: its runs until then), from the fourth run on: the first runs import what the others reuse, and
#: the package ``pytest_mpcheck``, which this session imports, keeps the last run's copy of each of
#: its modules as an attribute (the import system sets it; pytester takes only sys.modules back),
#: and through it what that copy imported. Then the count grows by the same number of objects a
#: run, with the plugin and without.
RUNS = f"""
# ctypes itself keeps a copy of its types each time it is imported again, whoever imports it; the
# plugin needs it (prctl). Imported here, it is not imported again by each run.
import ctypes
import gc
import inspect
import json
import sys
import weakref

import pytest


def collect():
    # Python 3.12.0 to 3.12.3 cache the classes of every object that pluggy registers as a
    # plugin (inspect.getattr_static, CPython gh-118013): 128 at most, but each keeps one run's
    # copy of the plugin. Not the plugin's to keep: emptied before counting.
    cached = getattr(inspect, "_shadowed_dict_from_mro_tuple", None)
    if cached is not None:
        cached.cache_clear()
    gc.collect()

from pytest_mpcheck._os import atfork

RUNS = {IN_PROCESS_RUNS}
INNER = {INNER!r}
INNER_FIXTURES = {INNER_FIXTURES!r}
configs = {{"on": [], "off": []}}
counts = []
fork_callbacks = [atfork.registered()]


plugin_loaders = set()


class KeepConfig:
    def __init__(self, plugin):
        self.plugin = plugin

    def pytest_configure(self, config):
        configs[self.plugin].append(weakref.ref(config))
        plugin = sys.modules.get("pytest_mpcheck.plugin")
        if plugin is not None:
            plugin_loaders.add(type(plugin.__loader__).__name__)


# The "off" runs follow the "on" runs, so that the "on" figures cannot profit from them.
@pytest.mark.parametrize("plugin", ["on"] * RUNS + ["off"] * RUNS)
def test_in_process_run(pytester, plugin):
    collect()
    counts.append(len(gc.get_objects()))
    fork_callbacks.append(atfork.registered())
    pytester.makepyfile(test_inner=INNER, test_fixtures=INNER_FIXTURES)
    if plugin == "on":
        result = pytester.runpytest_inprocess(
            "-p", "no:cacheprovider", plugins=[KeepConfig(plugin)]
        )
        result.assert_outcomes(passed=3)
    else:
        result = pytester.runpytest_inprocess(
            "-p", "no:cacheprovider", "-p", "no:mpcheck", "--ignore=test_fixtures.py",
            plugins=[KeepConfig(plugin)],
        )
        result.assert_outcomes(passed=2)


def test_after_the_runs():
    collect()
    counts.append(len(gc.get_objects()))
    fork_callbacks.append(atfork.registered())
    # From the fourth run of each kind to the first run of the next.
    retained = dict(on=counts[RUNS] - counts[3], off=counts[2 * RUNS] - counts[RUNS + 3])
    with open("measured.json", "w") as out:
        json.dump(
            dict(
                retained=retained,
                configs=len(configs["on"]),
                alive={{p: sum(ref() is not None for ref in refs) for p, refs in configs.items()}},
                fork_callbacks=fork_callbacks,
                plugin_loaders=sorted(plugin_loaders),
            ),
            out,
        )
"""


@pytest.mark.parametrize("outer", ["plugin", "no plugin"])
def test_in_process_runs_leave_nothing_alive(pytester: pytest.Pytester, outer: str) -> None:
    # Without the plugin in the outer session, each inner run imports it afresh (pytester takes
    # out of sys.modules what a run imported): nothing may keep a copy alive either.
    pytester.makeconftest('pytest_plugins = ["pytester"]')
    pytester.makepyfile(test_runs=RUNS)
    args = ["-p", "no:cacheprovider"]
    if outer == "no plugin":
        args += ["-p", "no:mpcheck"]
    result = pytester.runpytest_subprocess(*args, timeout=180)
    result.assert_outcomes(passed=2 * IN_PROCESS_RUNS + 1)
    measured = json.loads((pytester.path / "measured.json").read_text())
    assert measured["configs"] == IN_PROCESS_RUNS
    # As pytest loads an installed plugin: through its assertion rewriter, which becomes the
    # loader of the modules it loads and holds its run's config (what the plugin must release).
    assert "AssertionRewritingHook" in measured["plugin_loaders"], measured["plugin_loaders"]
    # The crisp check: the Config of every finished run is collected.
    assert measured["alive"] == {"on": 0, "off": 0}
    # Over the counted runs, no more objects kept with the plugin than without it: a fixed
    # tolerance for the noise of the count, far below one copy of the plugin (about 1,900 objects)
    # per run.
    retained = measured["retained"]
    assert retained["on"] <= retained["off"] + 500, retained
    # Each run takes its at-fork callback away at its cleanup: forks do not pay for past runs.
    # One more at most: the lock checker's, of the copy that the package still refers to.
    fork_callbacks = measured["fork_callbacks"]
    assert len(set(fork_callbacks[3:])) == 1, fork_callbacks
    assert fork_callbacks[-1] <= fork_callbacks[0] + 1, fork_callbacks


def test_in_process_runs_and_the_outer_resource_check(pytester: pytest.Pytester) -> None:
    # One outer session: an in-process run fails its own test and frees the segment, so the
    # outer test left nothing; after it and a clean in-process run, the outer resource check
    # still finds the outer test's own leak.
    pytester.makeconftest('pytest_plugins = ["pytester"]')
    pytester.makepyfile(
        test_inner_leak="""
        def test_in_process_run(pytester):
            pytester.makepyfile(
                test_inner='''
                from multiprocessing import shared_memory

                def test_forgets_unlink():
                    shared_memory.SharedMemory(create=True, size=4096).close()
                '''
            )
            result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
            result.assert_outcomes(passed=1, errors=1)
            result.stdout.fnmatch_lines(["leaked shared memory segment '/*': never unlinked"])
        """,
        test_outer="""
        import multiprocessing, os, signal, time
        from multiprocessing import shared_memory

        def test_in_process_run(pytester):
            # The caller's own process, older than the in-process run: not the run's to end.
            p = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
            p.start()
            pytester.makepyfile(test_inner="def test_nothing(): pass")
            pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
            assert os.waitpid(p.pid, os.WNOHANG) == (0, 0)  # neither ended nor reaped
            p.terminate()
            p.join()
            assert p.exitcode == -signal.SIGTERM

        def test_forgets_unlink():
            segment = shared_memory.SharedMemory(create=True, size=4096)
            segment.close()
        """,
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=60)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgets_unlink*",
            "mpcheck: test_outer.py::test_forgets_unlink left 1 named resource behind*",
            "leaked shared memory segment '/*': never unlinked",
            "    made at:    test_outer.py:16 by the test process",
        ]
    )
    # The in-process run's leak was its own: the outer run blames its test for nothing, and
    # counts only the outer test's segment.
    result.stdout.no_fnmatch_line("*test_inner_leak.py::*")
    # Counted in the report above the short summary: on CI (the CI variable set) pytest repeats
    # the whole message there.
    lines = result.stdout.lines
    report = lines[: lines.index(next(line for line in lines if "short test summary" in line))]
    assert sum(line.startswith("leaked shared memory segment") for line in report) == 1
    result.stdout.fnmatch_lines(
        ["mpcheck: 1 named resource (shared memory, semaphores) left behind"]
    )
