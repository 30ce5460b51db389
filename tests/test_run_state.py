"""The plugin's state lives per config: two pytest runs in one process (pytester's
``runpytest_inprocess``) are independent, and each undoes what it changed when it ends."""

from __future__ import annotations

import pytest

#: The outer session: in-process runs of two projects, one after the other.
RUNS = '''
import textwrap

# The outer session uses the fixtures too: the module that keeps the checks is one for all runs.
import pytest_mpcheck.fixtures.bootstrap  # noqa: F401

#: A project whose conftest adds a check to the children of mp_spawn (bootstrap's extension
#: point), and whose test leaks a process.
FIRST = {
    "conftest.py": """
from pytest_mpcheck.fixtures import bootstrap

bootstrap.register_child_check("firstchecks:always")
""",
    "firstchecks.py": """
def always(target, args, kwargs):
    return ["the first run's check ran"]
""",
    "test_first.py": """
import subprocess

def child():
    pass

def test_checked(mp_spawn):
    mp_spawn(child).join()

def test_leaks():
    subprocess.Popen(["sleep", "73"])
""",
}

#: A project that knows nothing of the first one's check.
SECOND = {
    "test_second.py": """
def child():
    return 2

def test_spawned(mp_spawn):
    p = mp_spawn(child)
    p.join()
    assert p.result == 2
""",
}


def run(pytester, files):
    for name, text in files.items():
        (pytester.path / name).write_text(textwrap.dedent(text))
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "--mp-kill-grace=0.3")


def test_two_runs(pytester):
    first = run(pytester, FIRST)
    first.assert_outcomes(passed=2, errors=2)
    first.stdout.fnmatch_lines(["*the first run's check ran*"])
    first.stdout.fnmatch_lines(["mpcheck: 2 processes started by tests, 1 leaked, *"])
    for name in FIRST:
        (pytester.path / name).unlink()
    second = run(pytester, SECOND)
    # The first run's check is not run in the second run's children, its figures are not the
    # second run's.
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(["mpcheck: 1 process started by tests, 0 leaked, *"])
    second.stdout.no_fnmatch_line("*first run's check*")
'''


#: The outer session's second test: in-process runs that each undo what they changed.
UNDO = """
import multiprocessing.process
import os
import signal
import subprocess
from multiprocessing import resource_tracker


class Keep:
    def __init__(self):
        self.registered = []

    def pytest_configure(self, config):
        self.config = config

    def pytest_sessionstart(self, session):
        plugin = session.config.pluginmanager.get_plugin("mpcheck-run")
        self.registered.append(plugin is not None)


def patched():
    return (
        subprocess.Popen.__init__,
        multiprocessing.process.BaseProcess.start,
        os.fork,
        os.system,
        resource_tracker.ResourceTracker._send,
        signal.getsignal(signal.SIGCHLD),
    )


def test_inner_runs(pytester):
    before = patched()
    pytester.makepyfile(test_inner="def test_nothing(): pass")
    for _ in range(2):
        keep = Keep()
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", plugins=[keep])
        result.assert_outcomes(passed=1)
        # Registered while its config lived, taken away with it.
        assert keep.registered == [True]
        assert keep.config.pluginmanager.get_plugin("mpcheck-run") is None
        # What the inner run wrapped is the outer run's again.
        assert patched() == before
"""


def test_in_process_runs_are_independent_and_undo_what_they_changed(
    pytester: pytest.Pytester,
) -> None:
    # Both stories in one outer session (an interpreter start is most of the cost of each).
    pytester.makeconftest('pytest_plugins = ["pytester"]')
    pytester.makepyfile(test_runs=RUNS, test_undo=UNDO)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2)
    # The inner runs' findings are theirs: the outer run sees their processes start (they are
    # its test's too) but blames nothing, the inner runs having ended what they found.
    result.stdout.fnmatch_lines(
        ["mpcheck: * processes started by tests, 0 leaked, 0 unreaped, 0 hung, 0 ended by mpcheck"]
    )


#: A program that runs pytest twice in one process, warnings as errors (an IDE's runner, a
#: watch-mode tool).
MAIN_TWICE = """
import pytest

args = ["-q", "-p", "no:cacheprovider", "-W", "error", "test_one.py"]
first = pytest.main(args)
second = pytest.main(args)
print("STATUSES", int(first), int(second))
"""


def test_a_second_run_in_the_same_process_warns_of_nothing(pytester: pytest.Pytester) -> None:
    # After the first run the plugin's modules have a plain loader (they no longer hold its
    # config); pytest's warning that its package was imported without the assertion rewriter
    # failed the second run under -W error.
    pytester.makepyfile(test_one="def test_one(): pass")
    script = pytester.makepyfile(main_twice=MAIN_TWICE)
    result = pytester.runpython(script)
    result.stdout.fnmatch_lines(["STATUSES 0 0"])
    assert "cannot be rewritten" not in result.stdout.str() + result.stderr.str()
