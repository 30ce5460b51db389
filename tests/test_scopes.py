"""Processes of module- and session-scoped fixtures belong to those fixtures, not to a test."""

from __future__ import annotations

import pytest


def test_session_fixture_leak_is_blamed_on_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import multiprocessing, subprocess, pytest
        from concurrent.futures import ProcessPoolExecutor

        @pytest.fixture(scope="session")
        def server():
            proc = subprocess.Popen(["sleep", "70"])
            yield proc
            # forgets to stop it

        @pytest.fixture(scope="module")
        def tidy_helper():
            proc = subprocess.Popen(["sleep", "71"])
            yield proc
            proc.terminate()
            proc.wait()

        # Executors start their workers at their first submit(), in a test: still the fixture's.
        @pytest.fixture(scope="session")
        def executor():
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(2, mp_context=context) as ex:
                yield ex

        @pytest.fixture(scope="module")
        def spawn_executor():
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(1, mp_context=context) as ex:
                yield ex

        # A server that daemonizes (as pg_ctl start does): its process reparents to pytest.
        @pytest.fixture(scope="session")
        def daemon(tmp_path_factory):
            pidfile = tmp_path_factory.mktemp("daemon") / "pid"
            subprocess.run(["sh", "-c", f"sleep 72 & echo $! > {pidfile}"], check=True)
            pid = int(pidfile.read_text())
            yield pid
            os.kill(pid, signal.SIGTERM)
        """.replace("import multiprocessing,", "import multiprocessing, os, signal,")
    )
    pytester.makepyfile(
        test_a="""
        def test_first(server, tidy_helper):
            assert server.poll() is None

        def test_second(server, tidy_helper):
            assert server.poll() is None
        """,
        test_b="""
        def test_third(server):
            assert server.poll() is None
        """,
        test_a_daemon="""
        import os, subprocess

        def test_uses_the_daemon(daemon):
            os.kill(daemon, 0)

        def test_leaves_its_own_daemon(daemon):
            os.kill(daemon, 0)
            subprocess.run(["sh", "-c", "sleep 73 &"], check=True)

        def test_the_daemon_is_still_there(daemon):
            os.kill(daemon, 0)
        """,
        test_a_executors="""
        import time
        import pytest

        def test_first_submit(executor):
            assert executor.submit(abs, -3).result(timeout=30) == 3

        @pytest.mark.timeout(1, method="signal")
        def test_times_out(spawn_executor):
            spawn_executor.submit(time.sleep, 5).result()

        def test_the_same_workers_after_the_timeout(executor, spawn_executor):
            assert list(executor.map(abs, [-1, -2])) == [1, 2]
            assert spawn_executor.submit(abs, -4).result(timeout=30) == 4
        """,
    )
    result = pytester.runpytest_subprocess("--mp-kill-grace=0.5", timeout=60)
    # Neither the first test nor the module fixture's tidy process is blamed; the session
    # fixture's process is found when the session scope ends (in the last test's teardown).
    # The executors' workers are the fixtures' though a test's submit() started them: no test
    # is blamed, and pytest-timeout's end of a test leaves them to the tests after it.
    # A session fixture's daemon is the fixture's, though its starter exited in a test's setup;
    # a test's own daemon is that test's.
    result.assert_outcomes(passed=8, failed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_its_own_daemon*",
            "mpcheck: test_a_daemon.py::test_leaves_its_own_daemon left 1 process behind*",
            "leaked process * 'sleep': still running*",
            "    command:    sleep 73",
        ]
    )
    result.stdout.no_fnmatch_line("*sleep 72*")
    result.stdout.fnmatch_lines(["FAILED test_a_executors.py::test_times_out - Failed: Timeout*"])
    result.stdout.no_fnmatch_line("*BrokenProcessPool*")
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_third*",
            "mpcheck: session-scoped fixture 'server' (finalized at the teardown of "
            "test_b.py::test_third) left 1 process behind (1 leaked)",
            "leaked process * 'sleep': still running*",
            "    command:    sleep 70",
            "    started at: conftest.py:6 by subprocess.Popen",
            "    owned by:   session-scoped fixture 'server'",
            "    ended by:   SIGTERM (ended by mpcheck)",
        ]
    )
    result.stdout.no_fnmatch_line("*sleep 71*")


def test_process_started_by_an_older_process_is_not_blamed(pytester: pytest.Pytester) -> None:
    # A server started by a session fixture forks a worker during a test: the worker is the
    # server's business, not the test's. The fixture stops the server but not the worker, which
    # then outlives the session: it is reported and ended at the end of the session.
    pytester.makeconftest(
        """
        import subprocess, sys, pytest

        @pytest.fixture(scope="session")
        def server():
            proc = subprocess.Popen(
                [sys.executable, "-c",
                 "import subprocess, sys, time\\n"
                 "for line in sys.stdin:\\n"
                 "    subprocess.Popen(['sleep', '72'])\\n"
                 "    print('started', flush=True)\\n"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            yield proc
            proc.kill()
            proc.wait()
        """
    )
    pytester.makepyfile(
        test_server="""
        def test_asks_for_a_worker(server):
            server.stdin.write("go\\n")
            server.stdin.flush()
            assert server.stdout.readline() == "started\\n"

        def test_another(server):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--mp-kill-grace=0.5", timeout=60)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: 1 process still running at the end of the session, that no test or "
            "fixture was blamed for:",
            "leaked process * 'sleep': still running*",
            "    command:    sleep 72",
            "    ended by:   SIGTERM (ended by mpcheck)",
        ]
    )


def test_a_fixture_set_up_inside_the_test_body_owns_its_process(pytester: pytest.Pytester) -> None:
    # A session fixture set up by request.getfixturevalue() while the test runs: what it starts
    # is the fixture's (read from the stack when the process starts), what the test body starts
    # next is the test's.
    pytester.makepyfile(
        test_lazy="""
        import subprocess, pytest

        @pytest.fixture(scope="session")
        def lazy():
            return subprocess.Popen(["sleep", "72"])  # never stopped

        def test_body(request):
            server = request.getfixturevalue("lazy")
            own = subprocess.Popen(["sleep", "0"])
            own.wait()
            assert server.poll() is None
        """
    )
    result = pytester.runpytest_subprocess("--mp-kill-grace=0.5", timeout=60)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: session-scoped fixture 'lazy' (finalized at the teardown of "
            "test_lazy.py::test_body) left 1 process behind (1 leaked)",
            "    command:    sleep 72",
            "    started at: test_lazy.py:5 by subprocess.Popen",
            "    owned by:   session-scoped fixture 'lazy'",
        ]
    )
    result.stdout.no_fnmatch_line("*sleep 0*")
