"""Under pytest-xdist each worker checks its own tests; the controller adds the figures up."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("xdist")


def test_workers_check_their_tests_and_controller_adds_up(pytester: pytest.Pytester) -> None:
    # One run of two workers for both stories (each run starts a controller and two workers):
    # the controller adds up what the workers found, and a fork leaked in a worker is that test's
    # leak. A fork of an xdist worker runs the worker's own command line: it once passed for one
    # of xdist's helpers, went unreported, held the worker, and the controller then blamed a
    # zombie 'python' "started at unknown place" on nobody.
    pytester.makepyfile(
        test_par="""
        import multiprocessing, subprocess, time

        def work():
            pass

        def test_leaks_one():
            subprocess.Popen(["sleep", "80"])

        def test_leaks_another():
            subprocess.Popen(["sleep", "81"])

        def test_clean_a():
            p = multiprocessing.get_context("spawn").Process(target=work)
            p.start()
            p.join()

        def test_clean_b():
            subprocess.run(["true"])
        """,
        test_fork="""
        import multiprocessing, time

        def test_leaks_a_fork():
            multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,)).start()

        def test_clean():
            pass
        """,
    )
    result = pytester.runpytest_subprocess(
        "-n", "2", "--mp-kill-grace=0.3", "--mp-report=report.json", timeout=120
    )
    result.assert_outcomes(passed=6, errors=3)
    result.stdout.fnmatch_lines_random(
        [
            "*mpcheck: test_par.py::test_leaks_one left 1 process behind (1 leaked)*",
            "*mpcheck: test_par.py::test_leaks_another left 1 process behind (1 leaked)*",
            "*mpcheck: test_fork.py::test_leaks_a_fork left 1 process behind (1 leaked)*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*mpcheck: test_fork.py::test_leaks_a_fork left 1 process behind (1 leaked)*",
            "*started at: test_fork.py:4 by multiprocessing.Process.start*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["mpcheck: * processes started by tests, 3 leaked, 0 unreaped, 0 hung, 3 ended by*"]
    )
    result.stdout.no_fnmatch_line("*unknown place*")
    # xdist's own workers are not leaks of the controller.
    result.stdout.no_fnmatch_line("*still running at the end of the session*")
    document = json.loads((pytester.path / "report.json").read_text())
    assert document["summary"]["leaked"] == 3
    # The workers' findings are in the one list of findings, as in a run without xdist.
    assert "worker_findings" not in document
    nodeids = sorted(f["nodeid"] for f in document["findings"])
    assert nodeids == [
        "test_fork.py::test_leaks_a_fork",
        "test_par.py::test_leaks_another",
        "test_par.py::test_leaks_one",
    ]
