"""``mp_spawn``: results, remote tracebacks, output, names, checks, hangs, under every method."""

from __future__ import annotations

import os
import signal

import pytest

from pytest_mpcheck._os import procfs
from tests.conftest import STRICT_ARGS, wait_until
from tests.sections import section

METHODS = ("fork", "spawn", "forkserver")

# The targets live in a module of their own that does not import pytest: a spawned child (and a
# child of the forkserver) imports the module of its target, and pytest would cost it ~0.2s.
TARGETS = """
import multiprocessing
import sys
import time


def square(n):
    print("squaring", n)
    return n * n


def whoami():
    return multiprocessing.current_process().name


def shout():
    print("to out")
    print("to err", file=sys.stderr)
    print("partial", end="")


def boom(x):
    print("about to fail", end="")
    raise ValueError(f"bad {x}")


class TwoPartError(Exception):
    # Pickles, but does not unpickle: pickle calls __init__ with its args, one string.
    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


def raise_two_parts():
    raise TwoPartError(1, 2)


def leave(code):
    sys.exit(code)


def hang(ready=None):
    if ready is not None:
        open(ready, "w").close()
    time.sleep(60)
"""

CHILDREN = """
import os
import time

import pytest

from children import boom, hang, leave, raise_two_parts, shout, square, whoami
from pytest_mpcheck import ChildError, RemoteTraceback


def wait_for_file(path):
    # Until a child made the file (it is then in its sleep, or about to be); then remove it.
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.remove(path)


def test_result_and_output(mp_spawn):
    p = mp_spawn(square, (7,))
    p.join()
    assert p.exitcode == 0
    assert p.result == 49
    assert p.output == "squaring 7\\n"


def test_result_joins(mp_spawn):
    assert mp_spawn(square, (3,)).result == 9


def test_names(mp_spawn):
    first, second = mp_spawn(whoami), mp_spawn(whoami)
    named = mp_spawn(whoami, name="Funct 1")
    empty = mp_spawn(whoami, name="")  # no name, as for multiprocessing.Process
    assert [first.result, second.result, named.result] == ["Process-1", "Process-2", "Funct 1"]
    assert [first.name, named.name, empty.name, empty.result] == [
        "Process-1",
        "Funct 1",
        "Process-4",
        "Process-4",
    ]


def test_streams(mp_spawn, mp_output):
    p = mp_spawn(shout, name="shouter")
    p.join()
    assert p.output == "to out\\nto err\\npartial"
    assert [(line.stream, line.text, line.newline) for line in mp_output.lines] == [
        ("stdout", "to out", True),
        ("stderr", "to err", True),
        ("stdout", "partial", False),
    ]
    assert {(line.pid, line.name) for line in mp_output.lines} == {(p.pid, "shouter")}


def test_error_read(mp_spawn):
    p = mp_spawn(boom, (1,))
    error = p.error
    assert isinstance(error, ValueError)
    assert str(error) == "bad 1"
    assert isinstance(error.__cause__, RemoteTraceback)
    assert '/children.py", line {boom}, in boom' in p.traceback
    assert 'raise ValueError(f"bad {x}")' in p.traceback
    assert p.output == "about to fail"
    assert p.exitcode == 1


def test_result_raises_the_error(mp_spawn):
    p = mp_spawn(boom, (2,))
    with pytest.raises(ValueError, match="bad 2") as info:
        p.result
    assert "in boom" in info.value.__cause__.text


def test_error_that_does_not_unpickle(mp_spawn):
    # Its type name, message and traceback still come back, though the object cannot.
    p = mp_spawn(raise_two_parts)
    assert type(p.error) is ChildError
    assert str(p.error) == "TwoPartError: 1-2"
    assert "    raise TwoPartError(1, 2)" in p.traceback
    assert isinstance(p.error.__cause__, RemoteTraceback)


def test_check_false(mp_spawn):
    mp_spawn(leave, (3,), check=False).join()


def test_start_false_and_daemon(mp_spawn):
    p = mp_spawn(square, (2,), start=False, daemon=True)
    assert p.pid is None
    assert p.daemon
    p.start()
    assert p.result == 4


def test_misuse_gets_the_errors_of_multiprocessing(mp_spawn):
    p = mp_spawn(square, (5,))
    with pytest.raises(AssertionError) as twice:
        p.start()
    assert str(twice.value) == (
        "cannot start a process twice: 'Process-1' was started already "
        "(mp_spawn starts the process it makes, unless given start=False)"
    )
    with pytest.raises(AssertionError) as unstarted:
        mp_spawn(square, (1,), start=False).join()
    assert str(unstarted.value) == (
        "can only join a started process: 'Process-2' was made with start=False; "
        "call its start() first"
    )
    p.join()
    p.close()
    # What the child left outlives its process object; multiprocessing's attributes do not.
    assert (p.result, p.output) == (25, "squaring 5\\n")
    with pytest.raises(ValueError, match="process object is closed"):
        p.exitcode
    with pytest.raises(ValueError, match="process object is closed"):
        p.join()


def test_ended_on_purpose(mp_spawn):
    p = mp_spawn(hang)
    p.terminate()
    p.join()


def test_fails_on_error(mp_spawn):
    mp_spawn(boom, (3,), name="thrower").join()


def test_fails_on_error_that_does_not_unpickle(mp_spawn):
    mp_spawn(raise_two_parts, name="two parts").join()


def test_fails_on_exit_code(mp_spawn):
    p = mp_spawn(leave, (4,), name="leaver")
    p.join()
    p.close()  # closing the process object does not hide its exit code


def test_child_check(mp_spawn):
    mp_spawn(square, (13,), name="unlucky").join()


@pytest.mark.mp_join_timeout(1)  # the only test that waits for the join timeout
def test_hung_join(mp_spawn):
    # The join timeout counts from when the child sleeps, not from when it starts to start.
    child = mp_spawn(hang, ("sleeper.ready",), name="sleeper")
    wait_for_file("sleeper.ready")
    child.join()


def test_never_joined(mp_spawn):
    mp_spawn(hang, ("forgotten.ready",), name="forgotten")
    wait_for_file("forgotten.ready")
"""


def line_of(source: str, fragment: str) -> int:
    """The line number of ``fragment`` in a file made by ``pytester.makepyfile(source)``."""
    lines = source.strip().splitlines()
    return next(number for number, line in enumerate(lines, 1) if fragment in line)


# A check that runs inside each child before its target (the extension point of bootstrap).
CHECKS = """
def unlucky(target, args, kwargs):
    return ["13 brings bad luck"] if args == (13,) else []
"""

CONFTEST = """
from pytest_mpcheck.fixtures import bootstrap

bootstrap.register_child_check("childchecks:unlucky")
"""


def test_mp_spawn_under_every_start_method(pytester: pytest.Pytester) -> None:
    # One inner run for the three methods: one pytest start instead of three.
    boom = line_of(TARGETS, 'raise ValueError(f"bad {x}")')
    sleep = line_of(TARGETS, "time.sleep(60)")
    two_parts = line_of(TARGETS, "raise TwoPartError(1, 2)")
    hung_start = line_of(CHILDREN, 'mp_spawn(hang, ("sleeper.ready",), name="sleeper")')
    forgotten_start = line_of(CHILDREN, 'mp_spawn(hang, ("forgotten.ready",), name="forgotten")')
    pytester.makepyfile(
        test_children=CHILDREN.replace("{boom}", str(boom)),
        children=TARGETS,
        childchecks=CHECKS,
        conftest=CONFTEST,
    )
    result = pytester.runpytest_subprocess(
        f"--mp-start-methods={','.join(METHODS)}", *STRICT_ARGS, timeout=180
    )
    # 17 tests per method; the last 6 fail (in the call or at teardown: those pass, then err).
    result.assert_outcomes(passed=(11 + 5) * 3, failed=1 * 3, errors=5 * 3)
    for method in METHODS:
        m = f"[{method}]"
        section(result, f"ERROR at teardown of test_fails_on_error{m}").fnmatch_lines(
            [
                f"*ERROR at teardown of test_fails_on_error[[]{method}[]]*",
                f"mpcheck: test_children.py::test_fails_on_error[[]{method}[]]: "
                "child process failed",
                "",
                "'thrower' (pid *) raised ValueError: bad 3",
                "Traceback (most recent call last):",
                f'  File "*/children.py", line {boom}, in boom',
                '    raise ValueError(f"bad {x}")',
                "ValueError: bad 3",
                "",
                "(Read p.error or p.exitcode in the test, or pass check=False to mp_spawn, "
                "to check it yourself.)",
            ]
        )
        section(
            result, f"ERROR at teardown of test_fails_on_error_that_does_not_unpickle{m}"
        ).fnmatch_lines(
            [
                "*ERROR at teardown of test_fails_on_error_that_does_not_unpickle*",
                "mpcheck: test_children.py::test_fails_on_error_that_does_not_unpickle"
                f"[[]{method}[]]: child process failed",
                "",
                "'two parts' (pid *) raised TwoPartError: 1-2",
                "Traceback (most recent call last):",
                f'  File "*/children.py", line {two_parts}, in raise_two_parts',
                "    raise TwoPartError(1, 2)",
                "children.TwoPartError: 1-2",
                "",
            ]
        )
        section(result, f"ERROR at teardown of test_fails_on_exit_code{m}").fnmatch_lines(
            [
                f"*ERROR at teardown of test_fails_on_exit_code[[]{method}[]]*",
                f"mpcheck: test_children.py::test_fails_on_exit_code[[]{method}[]]: "
                "child process failed",
                "",
                "'leaver' (pid *) exited with code 4",
            ]
        )
        section(result, f"ERROR at teardown of test_child_check{m}").fnmatch_lines(
            [
                f"*ERROR at teardown of test_child_check[[]{method}[]]*",
                "'unlucky' (pid *):",
                "    13 brings bad luck",
            ]
        )
        section(result, f"test_hung_join{m}").fnmatch_lines(
            [
                f"*_ test_hung_join[[]{method}[]] _*",
                "mpcheck: 'sleeper' (pid *) did not finish: join() waited 1s (the join timeout)",
                "",
                "hung process * 'sleeper': hung, state sleeping, age *s",
                "    command:*",
                f"    started at: test_children.py:{hung_start} by multiprocessing.Process.start",
                "    ended by:   SIGTERM (ended by mpcheck)",
                "    join() timed out: the child hung or is too slow",
                "    waiting in: sleeping (time.sleep) [[]kernel: *[]]",
                "    stack (most recent call last):",
                "      Thread 0x* (main thread), most recent call last:",
                f'        File "*/children.py", line {sleep}, in hang',
                "          time.sleep(60)",
                "",
                "The join timeout is 1s (--mp-join-timeout, ini mp_join_timeout, "
                "@pytest.mark.mp_join_timeout(seconds)).*",
            ]
        )
        section(result, f"ERROR at teardown of test_never_joined{m}").fnmatch_lines(
            [
                f"*ERROR at teardown of test_never_joined[[]{method}[]]*",
                f"mpcheck: test_children.py::test_never_joined[[]{method}[]]: 'forgotten' "
                "(pid *) still running at teardown",
                "",
                "hung process * 'forgotten': hung, state sleeping, age *s",
                "*",
                f"    started at: test_children.py:{forgotten_start} by *",
                "    ended by:   SIGTERM (ended by mpcheck)",
                "    still running at the end of the test: it hung, or the test never joined it",
            ]
        )
    # The hung children were ended by the fixture, not found again by the process watch.
    result.stdout.fnmatch_lines(["mpcheck: * 0 leaked, 0 unreaped, 6 hung, 6 ended by mpcheck"])


# No pytest import: a spawned child imports this module for its target (the method is an option).
DEATH = """
import os
import signal
import time

PIDFILE = {pidfile!r}


def hang():
    with open(PIDFILE + ".new", "w") as out:
        out.write(str(os.getpid()))
    os.replace(PIDFILE + ".new", PIDFILE)
    time.sleep(60)


def test_pytest_dies(mp_spawn):
    mp_spawn(hang)
    deadline = time.monotonic() + 30
    while not os.path.exists(PIDFILE) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("method", METHODS)
def test_children_die_with_pytest(pytester: pytest.Pytester, method: str) -> None:
    pidfile = str(pytester.path / "child.pid")
    pytester.makepyfile(test_death=DEATH.format(pidfile=pidfile))
    result = pytester.runpytest_subprocess(f"--mp-start-methods={method}", *STRICT_ARGS, timeout=60)
    assert result.ret == -signal.SIGKILL
    with open(pidfile) as pid_text:
        child = int(pid_text.read())
    # The orphan reparents to this (subreaper) pytest process, which reaps it once it is dead.
    wait_until(
        lambda: procfs.state(child) in (None, "Z"),
        timeout=10,
        message=f"child {child} outlived the pytest that started it",
    )
    if procfs.state(child) == "Z":
        os.waitpid(child, 0)
