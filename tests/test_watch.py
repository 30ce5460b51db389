"""The process watch: every kind of leftover fails its test with a report a person can act on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import (
    FAST_ARGS,
    WITH_PYSPY,
    WITHOUT_PYSPY,
    InnerRun,
    process_gone,
    wait_until,
)


def test_never_joined_process_fails_and_is_ended(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_leak="""
        import multiprocessing, time
        from pathlib import Path
        import psutil
        def forever():
            time.sleep(60)

        def test_never_joined():
            p = multiprocessing.Process(target=forever, name="worker-1")
            p.start()
            Path("pid").write_text(f"{p.pid} {psutil.Process(p.pid).create_time()!r}")

        def test_next_starts_clean():
            pid, created = Path("pid").read_text().split()
            try:  # the pid may be another process's by now
                assert psutil.Process(int(pid)).create_time() != float(created)
            except psutil.NoSuchProcess:
                pass
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=60)
    result.assert_outcomes(passed=2, errors=1)
    pid, created = (pytester.path / "pid").read_text().split()
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_never_joined*",
            "mpcheck: test_leak.py::test_never_joined left 1 process behind (1 leaked)",
            f"leaked process {pid} 'worker-1': still running, state *",
            "    command:    *",
            "    started at: test_leak.py:9 by multiprocessing.Process.start",
            "    ended by:   SIGTERM (ended by mpcheck)",
            "How to fix: wait for every process the test starts before it ends:*",
            "*fixture of module or session scope*mp_ignore*mp_check*",
            "mpcheck: 1 process started by tests, 1 leaked, 0 unreaped, 0 hung, 1 ended by mpcheck",
        ]
    )
    assert process_gone(int(pid), float(created))


#: Leftovers of every kind, the mp_check marker and ignored processes, one module each, for one
#: inner run (an interpreter start is most of the cost of a run): each test's report is checked
#: in its own teardown error.
LEFTOVERS = {
    "test_zombie": """
        import subprocess, time
        kept = []  # a Popen object that is garbage collected polls its child in __del__

        def test_never_waited():
            kept.append(subprocess.Popen(["true"]))
            time.sleep(0.3)
        """,
    # The article's lock example starts three processes and never joins them.
    "test_seed_lock": """
        from multiprocessing import Process, Lock
        lck = Lock()

        def func_print(item):
            lck.acquire()
            try:
                for i in range(5):
                    print(item)
            finally:
                lck.release()

        def test_article_lock_example():
            items = ['Hi', 'Hello', 'Bye']
            for item in items:
                p = Process(target=func_print, args=(item,))
                p.start()
        """,
    "test_popen": """
        import subprocess

        def test_popen_never_waited():
            subprocess.Popen(["sleep", "60"])

        def test_new_session_child():
            subprocess.Popen(["sleep", "61"], start_new_session=True)
        """,
    "test_orphan": """
        import os, time

        def test_daemonizes():
            pid = os.fork()
            if pid == 0:
                # the classic double fork: the grandchild is orphaned at once
                if os.fork() == 0:
                    os.setsid()
                    time.sleep(60)
                os._exit(0)
            os.waitpid(pid, 0)
        """,
    "test_stubborn": """
        import multiprocessing, signal, time
        from pathlib import Path

        def stubborn(ready):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            ready.set()
            time.sleep(60)

        def test_stubborn():
            ready = multiprocessing.Event()
            p = multiprocessing.Process(target=stubborn, args=(ready,))
            p.start()
            assert ready.wait(10)
            import psutil
            Path("pid").write_text(f"{p.pid} {psutil.Process(p.pid).create_time()!r}")

        def test_gone_by_the_next_test():
            import psutil
            pid, created = Path("pid").read_text().split()
            try:  # the pid may be another process's by now
                assert psutil.Process(int(pid)).create_time() != float(created)
            except psutil.NoSuchProcess:
                pass
        """,
    "test_both": """
        import subprocess, pytest

        @pytest.fixture
        def broken():
            yield
            raise RuntimeError("the user's own teardown error")

        def test_leaks(broken):
            subprocess.Popen(["sleep", "67"])
        """,
    # The marker relaxes the check of one test: off leaves its process alone, warn warns.
    "test_off": """
        import os, signal, subprocess
        import pytest
        from pathlib import Path

        @pytest.mark.mp_check("off")
        def test_allowed_to_leave_it():
            Path("off-pid").write_text(str(subprocess.Popen(["sleep", "60"]).pid))

        @pytest.mark.mp_check("warn")
        def test_only_warns():
            subprocess.Popen(["sleep", "62"])

        def test_it_was_not_ended():
            pid = int(Path("off-pid").read_text())
            os.kill(pid, 0)  # still running: mode off leaves it alone
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        """,
    # Processes the ini value mp_ignore names, or the hook vetoes, are no leaks (see
    # IGNORE_INI and VETO_CONFTEST).
    "test_ignore": """
        import subprocess

        procs = []

        def test_ignored_by_ini():
            procs.append(subprocess.Popen(["sleep", "63"]))

        def test_vetoed_by_hook():
            procs.append(subprocess.Popen(["sleep", "64"]))

        def test_not_ignored():
            subprocess.Popen(["sleep", "65"])

        def test_cleanup():
            for p in procs:
                p.kill()
                p.wait()
        """,
    # A forkserver child carries the forkserver's command line; it is no helper.
    "test_fs": """
        import multiprocessing, time

        def forever():
            time.sleep(60)

        def test_never_joined():
            multiprocessing.get_context("forkserver").Process(target=forever).start()
        """,
}


IGNORE_INI = """
[pytest]
mp_ignore =
    sleep 63*
"""

VETO_CONFTEST = """
def pytest_mpcheck_ignore_process(config, item, process):
    if process.cmdline == "sleep 64":
        return True
    return None
"""


def teardown_error(result: pytest.RunResult, test: str) -> pytest.LineMatcher:
    """The lines of the one teardown error of ``test`` (named as pytest's header names it), up to
    the next section: a report is checked where its test's error shows it."""
    lines = result.stdout.lines
    header = re.compile(rf"_+ ERROR at teardown of {re.escape(test)} _+")
    (start,) = [i for i, line in enumerate(lines) if header.fullmatch(line)]
    end = start + 1
    while end < len(lines) and not lines[end].startswith(("____", "====")):
        end += 1
    return pytest.LineMatcher(lines[start:end])


def test_leftovers_of_every_kind_the_marker_and_ignored_processes(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(IGNORE_INI)
    pytester.makeconftest(VETO_CONFTEST)
    pytester.makepyfile(**LEFTOVERS)
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=90)
    result.assert_outcomes(passed=16, errors=9, warnings=1)
    result.stdout.fnmatch_lines(["*MpCheckWarning: mpcheck: test_off.py::test_only_warns left*"])
    teardown_error(result, "test_not_ignored").fnmatch_lines(
        ["*ERROR at teardown of test_not_ignored*", "    command:    sleep 65"]
    )
    result.stdout.no_fnmatch_line("*command:    sleep 63*")
    result.stdout.no_fnmatch_line("*command:    sleep 64*")

    teardown_error(result, "test_never_waited").fnmatch_lines(
        [
            "mpcheck: test_zombie.py::test_never_waited left 1 process behind (1 unreaped)",
            "unreaped process * 'true': exited but never joined or waited for (zombie), "
            "state zombie, age *",
            "    started at: test_zombie.py:5 by subprocess.Popen",
            "    ended by:   reaped by mpcheck",
        ]
    )
    # Each Process.start() reaps the children that have already finished, so the first two
    # may be gone by then; the last one is always left running or unreaped. It is the fourth
    # process object of the run: test_fs.py, collected first, made the first.
    teardown_error(result, "test_article_lock_example").fnmatch_lines(
        [
            "mpcheck: test_seed_lock.py::test_article_lock_example left * behind*",
            "* process * 'Process-4': *",
            "    started at: test_seed_lock.py:16 by multiprocessing.Process.start",
        ]
    )
    teardown_error(result, "test_popen_never_waited").fnmatch_lines(
        [
            "mpcheck: test_popen.py::test_popen_never_waited left 1 process behind (1 leaked)",
            "leaked process * 'sleep': still running*",
            "    command:    sleep 60",
            "    started at: test_popen.py:4 by subprocess.Popen",
        ]
    )
    teardown_error(result, "test_new_session_child").fnmatch_lines(
        [
            "mpcheck: test_popen.py::test_new_session_child left 1 process behind (1 leaked)",
            "    command:    sleep 61",
            "    started at: test_popen.py:7 by subprocess.Popen",
            "    ended by:   SIGTERM (ended by mpcheck)",
        ]
    )
    teardown_error(result, "test_daemonizes").fnmatch_lines(
        [
            "mpcheck: test_orphan.py::test_daemonizes left 1 process behind (1 leaked)",
            "leaked process *: still running*",
            "    started by: unknown: an orphan that reparented to pytest*",
            "    ended by:   SIGTERM (ended by mpcheck)",
        ]
    )
    teardown_error(result, "test_stubborn").fnmatch_lines(
        ["    ended by:   SIGKILL (it ignored SIGTERM; killed by mpcheck)"]
    )
    teardown_error(result, "test_leaks").fnmatch_lines(
        [
            "E       RuntimeError: the user's own teardown error",
            "*Captured mpcheck teardown*",
            "mpcheck: test_both.py::test_leaks left 1 process behind (1 leaked)",
        ]
    )
    teardown_error(result, "test_never_joined").fnmatch_lines(
        ["mpcheck: test_fs.py::test_never_joined left 1 process behind (1 leaked)"]
    )


def test_warn_mode_and_its_escalation(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_warn="""
        import subprocess

        def test_leaks():
            subprocess.Popen(["sleep", "60"])
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-check=warn", timeout=60)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*MpCheckWarning: mpcheck: test_warn.py::test_leaks left 1 process behind (1 leaked)",
        ]
    )
    escalated = pytester.runpytest_subprocess(
        *FAST_ARGS, "--mp-check=warn", "-W", "error::pytest_mpcheck.MpCheckWarning", timeout=60
    )
    escalated.assert_outcomes(passed=1, errors=1)
    escalated.stdout.fnmatch_lines(["*MpCheckWarning: mpcheck: test_warn.py::test_leaks left*"])


def test_off_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_off="""
        import subprocess
        import psutil

        def test_leaks_but_check_is_off():
            p = subprocess.Popen(["sleep", "60"])
            open("pid", "w").write(f"{p.pid} {psutil.Process(p.pid).create_time()!r}")
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-check=off", timeout=60)
    result.assert_outcomes(passed=1)
    pid, created = (pytester.path / "pid").read_text().split()
    # Mode off blames no test, but nothing outlives pytest: the end of the session ended it.
    assert wait_until(lambda: process_gone(int(pid), float(created)), timeout=5)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: 1 process still running at the end of the session, that no test or "
            "fixture was blamed for:",
            "leaked process * 'sleep': still running*",
            "    ended by:   SIGTERM (ended by mpcheck)",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown*")


def test_finding_hook_sees_each_finding_and_json_report(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        def pytest_mpcheck_finding(config, item, finding):
            print(f"HOOK {finding.kind} {finding.process.cmdline} {finding.ended_by}")
        """
    )
    pytester.makepyfile(
        test_json="""
        import subprocess

        def test_leaks():
            subprocess.Popen(["sleep", "66"])
        """
    )
    result = pytester.runpytest_subprocess(
        *FAST_ARGS, "-s", "--mp-report=out/report.json", timeout=60
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*HOOK leaked sleep 66 SIGTERM*"])
    document = json.loads(Path(pytester.path / "out" / "report.json").read_text())
    assert document["summary"]["leaked"] == 1
    assert document["summary"]["ended"] == 1
    (finding,) = document["findings"]
    assert finding["kind"] == "leaked"
    assert finding["nodeid"] == "test_json.py::test_leaks"
    assert finding["process"]["cmdline"] == "sleep 66"
    assert finding["process"]["started_at"] == "test_json.py:4"


#: A test that leaves a Python child and a program running, under the start method METHOD.
STACK = """
import multiprocessing, os, subprocess, sys, time
import psutil

def wait_for_ever():
    open("ready-METHOD", "w").close()
    time.sleep(60)

def test_leaks_a_python_child_and_a_program_METHOD():
    context = multiprocessing.get_context("METHOD")
    child = context.Process(target=wait_for_ever, name="sleeper")
    child.start()
    subprocess.Popen(["sleep", "60"])
    python = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # program"])
    # Until the child is in its sleep: it made the file, then nothing but sleep blocks.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
        os.path.exists("ready-METHOD") and psutil.Process(child.pid).status() == "sleeping"
        and psutil.Process(python.pid).status() == "sleeping"
    ):
        time.sleep(0.01)
"""


@pytest.mark.parametrize("inner", [WITH_PYSPY, WITHOUT_PYSPY], indirect=True)
def test_leaked_python_child_is_reported_with_its_stack(
    pytester: pytest.Pytester, inner: InnerRun
) -> None:
    # What the child was still doing when its test ended is what tells a person why it never
    # finished. A child of multiprocessing gives its own stack, with py-spy or without, under
    # every method (both in one inner run); a Python program run by subprocess is read by py-spy
    # only; a program that is not Python (sleep) has no Python stack to show.
    methods = ["fork", "spawn"]
    pytester.makepyfile(**{f"test_stack_{m}": STACK.replace("METHOD", m) for m in methods})
    result = inner(*FAST_ARGS, timeout=90)
    result.assert_outcomes(passed=len(methods), errors=len(methods))
    for method in methods:
        report = teardown_error(result, f"test_leaks_a_python_child_and_a_program_{method}")
        report.fnmatch_lines(
            [
                "leaked process * 'sleeper': still running, *",
                f"    started at: test_stack_{method}.py:11 by multiprocessing.Process.start",
                "    ended by:   SIGTERM (ended by mpcheck)",
                "    waiting in: sleeping (time.sleep)*",
                "    stack (most recent call last):",
                "      Thread 0x* (main thread), most recent call last:",
                f'        File "*test_stack_{method}.py", line 6, in wait_for_ever',
                "          time.sleep(60)",
                "",
            ]
        )
        text = "\n".join(report.lines)
        program = text[text.index("    command:    sleep 60") :]
        assert "stack (most recent call last)" not in program[: program.index("leaked process")]
        python = pytest.LineMatcher(
            text[text.index("-c import time; time.sleep(60)  # program") :].splitlines()
        )
        if inner.pyspy:
            python.fnmatch_lines(
                [
                    "    stack (most recent call last):",
                    "      Thread * (idle), most recent call last:",
                    '        File "<string>", line 1, in <module>',
                ]
            )
        else:
            python.fnmatch_lines(
                [
                    "    no Python stack: it does not answer the stack signal (the children that "
                    "pytest starts through multiprocessing or os.fork do), and py-spy is not "
                    "installed; *",
                ]
            )
