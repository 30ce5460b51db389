"""Every finding goes one way: counted in the summary, written to the JSON report, and shown to
other plugins through its hook, wherever it was made (a test, a hang, the end of the session, a
named resource, a lock)."""

from __future__ import annotations

import json

import pytest

FAST = ("--mp-kill-grace=0.3", "-p", "no:cacheprovider", "-s")

#: A conftest that prints the process findings that the hook sees.
PROCESS_HOOK = """
def pytest_mpcheck_finding(config, item, finding):
    test = item.nodeid if item is not None else None
    print(f"\\nHOOK process {test} {finding.kind} {finding.process.cmdline!r} "
          f"ended_by={finding.ended_by} reported_by={finding.reported_by}")
"""

#: A conftest that prints what each of the plugin's hooks sees.
HOOKS = (
    PROCESS_HOOK
    + """
def pytest_mpcheck_resource_finding(config, item, finding):
    test = item.nodeid if item is not None else None
    print(f"\\nHOOK resource {test} {finding.kind} freed={finding.freed}")


def pytest_mpcheck_lock_finding(config, item, finding):
    print(f"\\nHOOK lock {item.nodeid} {finding.kind} {finding.lock}")
"""
)


#: A process started while the module is collected: no test or fixture is to blame, and only the
#: end of the session finds it.
COLLECTED = """
import subprocess

STARTED = subprocess.Popen(["sleep", "{seconds}"])

def test_nothing():
    pass
"""


#: A test that stops the session with a status of its own while its child runs: it never
#: reaches its teardown, and pytest shows no terminal summary for such a status.
EXITS = """
import multiprocessing
import time

import pytest

def sleep():
    time.sleep(73)

def test_stops_the_session():
    multiprocessing.get_context("fork").Process(target=sleep, name="sleeper").start()
    pytest.exit("stopping here", returncode=7)
"""


def test_session_end_finding_reaches_the_hook(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(PROCESS_HOOK)
    pytester.makepyfile(test_collected=COLLECTED.format(seconds=71), test_exits=EXITS)
    result = pytester.runpytest_subprocess(*FAST, "--mp-report=report.json", timeout=60)
    result.assert_outcomes(passed=1)
    assert result.ret == 7  # the test's own status
    result.stdout.fnmatch_lines(
        [
            "HOOK process None leaked 'sleep 71' ended_by=SIGTERM reported_by=None",
            "HOOK process None leaked * ended_by=SIGTERM reported_by=None",
            # Shown though pytest writes no summary for status 7.
            "mpcheck: 1 process started by tests, 2 leaked, 0 unreaped, 0 hung, 2 ended by mpcheck",
            "*2 processes still running at the end of the session, that no test or fixture was "
            "blamed for:",
            "leaked process * 'sleeper': still running*",
            "    started at: test_exits.py:10 by multiprocessing.Process.start",
            "    owned by:   test_exits.py::test_stops_the_session",
            "    ended by:   SIGTERM (ended by mpcheck)",
        ]
    )
    # Started while no test ran: no owner to name.
    sleep_report = result.stdout.str().split("'sleep 71'", 1)[1].split("leaked process", 1)[0]
    assert "owned by" not in sleep_report
    document = json.loads((pytester.path / "report.json").read_text())
    found = sorted(
        (f["nodeid"], f["process"]["name"], f["process"]["owner"]) for f in document["findings"]
    )
    assert found == [
        ("<session end>", "sleep", "<session end>"),
        ("<session end>", "sleeper", "test_exits.py::test_stops_the_session"),
    ]
    assert document["summary"]["leaked"] == 2
    assert document["summary"]["ended"] == 2


#: Findings of every kind that a test makes, one module each, for one inner run with the HOOKS
#: conftest: a process kept running (seen again when the session ends it), a named resource, a
#: hang and a lock-order inversion.
KINDS = {
    "test_kept": """
        import subprocess
        import pytest

        KEPT = []

        @pytest.mark.mp_check("warn")
        def test_keeps_one():
            KEPT.append(subprocess.Popen(["sleep", "72"]))
        """,
    "test_kinds": """
        import time
        from multiprocessing import shared_memory

        import pytest

        def test_forgets_unlink():
            shared_memory.SharedMemory(create=True, size=4096).close()

        def hang():
            time.sleep(60)

        @pytest.mark.mp_join_timeout(0.5)
        def test_hung_child(mp_spawn):
            mp_spawn(hang, name="sleeper").join()
        """,
    "test_order": """
        def nested(first, second):
            with first:
                with second:
                    pass

        def test_inversion(mp_locks, mp_spawn):
            a, b = mp_locks.Lock("a"), mp_locks.Lock("b")
            mp_spawn(nested, args=(a, b)).join()
            mp_spawn(nested, args=(b, a)).join()
        """,
}


def test_findings_of_every_kind_reach_the_hooks_and_the_report(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HOOKS)
    pytester.makepyfile(**KINDS)
    result = pytester.runpytest_subprocess(*FAST, "--mp-report=report.json", timeout=90)
    result.assert_outcomes(passed=3, failed=1, errors=2, warnings=1)
    document = json.loads((pytester.path / "report.json").read_text())

    # A process reported by a test is seen again when the session ends it.
    result.stdout.fnmatch_lines(
        [
            "HOOK process test_kept.py::test_keeps_one leaked 'sleep 72' ended_by=None "
            "reported_by=None",
            "HOOK process None leaked 'sleep 72' ended_by=SIGTERM "
            "reported_by=test_kept.py::test_keeps_one",
        ]
    )
    kept = [
        f
        for f in document["findings"]
        if "test_kept.py::test_keeps_one" in (f["nodeid"], f["reported_by"])
    ]
    # Counted once as leaked (by its test), once as ended (by the session); the hung child is
    # the other process ended.
    assert document["summary"]["leaked"] == 1
    assert document["summary"]["ended"] == 2
    assert [f["reported_by"] for f in kept] == [None, "test_kept.py::test_keeps_one"]

    # Resource and hang findings.
    result.stdout.fnmatch_lines_random(
        [
            "HOOK resource test_kinds.py::test_forgets_unlink shared_memory freed=True",
            "HOOK process test_kinds.py::test_hung_child hung * ended_by=SIG* reported_by=None",
        ]
    )
    assert document["summary"]["resources"] == 1
    assert document["summary"]["hung"] == 1
    assert [f["owner"] for f in document["resource_findings"]] == [
        "test_kinds.py::test_forgets_unlink"
    ]
    assert [(f["kind"], f["nodeid"]) for f in document["findings"] if f not in kept] == [
        ("hung", "test_kinds.py::test_hung_child")
    ]

    # Lock findings.
    result.stdout.fnmatch_lines(["HOOK lock test_order.py::test_inversion lock-order inversion a"])
    (finding,) = document["locks"]["findings"]
    assert (finding["nodeid"], finding["kind"], finding["lock"]) == (
        "test_order.py::test_inversion",
        "lock-order inversion",
        "a",
    )
    assert sorted(p["name"] for p in finding["processes"]) == ["Process-1", "Process-2"]


def test_a_hook_that_expects_a_test_does_not_lose_the_report(pytester: pytest.Pytester) -> None:
    # Written when the hook saw findings of tests only: item.nodeid fails at the end of the
    # session. The finding is counted and written all the same.
    pytester.makeconftest(
        """
        def pytest_mpcheck_finding(config, item, finding):
            print("HOOK", item.nodeid)
        """
    )
    pytester.makepyfile(test_collected=COLLECTED.format(seconds=74))
    result = pytester.runpytest_subprocess(*FAST, "--mp-report=report.json", timeout=60)
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*pytest-mpcheck failed while showing a finding of the end of the session to the "
            "hooks*",
            "*mpcheck: 1 process still running at the end of the session*",
        ]
    )
    document = json.loads((pytester.path / "report.json").read_text())
    assert [f["process"]["cmdline"] for f in document["findings"]] == ["sleep 74"]
