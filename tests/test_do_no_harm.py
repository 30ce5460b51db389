"""First, do no harm (DESIGN s.0): the plugin fails the tests that leak and changes nothing else.

Each principle is tried on real processes in an inner pytest session, the way a user meets it.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys

import pytest

from tests.conftest import FAST_ARGS
from tests.test_watch import teardown_error

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux procfs")


def test_warn_observes_only_and_the_session_end_ends_it(pytester: pytest.Pytester) -> None:
    # Principle 1: in warn mode nothing is signalled or reaped while the run goes on; what is
    # still running at the end of the session is ended then, and said once.
    linux = sys.platform.startswith("linux")
    pytester.makepyfile(
        test_warn="""
        import multiprocessing, os, subprocess, time
        from pathlib import Path

        def test_leaves_a_sleeper_and_a_zombie():
            p = subprocess.Popen(["sleep", "60"])
            Path("sleeper").write_text(str(p.pid))
            z = multiprocessing.get_context("fork").Process(target=int)
            z.start()
            Path("zombie").write_text(str(z.pid))
            time.sleep(0.2)

        def test_a_later_test_finds_them_as_they_were():
            os.kill(int(Path("sleeper").read_text()), 0)  # not signalled
            pid = int(Path("zombie").read_text())
            # not reaped: the status is still there for whoever waits
            assert os.waitpid(pid, os.WNOHANG)[0] == pid
        """,
        # The same run shows that warn mode keeps the semantics of the process tree (Linux):
        # see test_warn_mode_keeps_process_tree_semantics.
        **({"test_tree": TREE} if linux else {}),
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-check=warn", timeout=60)
    result.assert_outcomes(passed=2 + linux, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*mpcheck: process watch warn*subreaper off (mode warn only observes*",
            "*MpCheckWarning: mpcheck: test_warn.py::test_leaves_a_sleeper_and_a_zombie left 2 "
            "processes behind (1 leaked, 1 unreaped)",
            "mpcheck: 1 process that tests left behind was still running at the end of the "
            "session, and ended:",
            "    process * 'sleep' of test_warn.py::test_leaves_a_sleeper_and_a_zombie: SIGTERM*",
        ]
    )
    sleeper = int((pytester.path / "sleeper").read_text())
    assert not _alive(sleeper)


def test_nothing_holds_the_exit(pytester: pytest.Pytester) -> None:
    # Two ways a suite holds pytest's exit for ever, each ended and reported on standard error
    # as Python exits, after the user's own pytest_unconfigure and atexit functions, in warn mode
    # too:
    # - a process that a conftest.py at the rootdir starts as it is imported (before the plugin
    #   watches) and never joins: multiprocessing joins it at exit, with no timeout. One that
    #   pytest_unconfigure stops keeps its exit status; a daemonic one is multiprocessing's to
    #   end; a child that pytest inherited through exec (a shell's job) is not the plugin's.
    #   A server that pytest_sessionstart starts and pytest_unconfigure stops through an Event
    #   is left to it (ended at the session's end, it would have made set() wait for ever); one
    #   that nothing stops is ended as Python exits, with its own child; one that an atexit
    #   function of the conftest stops is left to it too.
    # - a queue that a test dropped with more put() than its pipe holds: multiprocessing joins
    #   its feeder thread at exit, and the thread waits for a reader for ever. A queue that is
    #   still referenced and idle ends its feeder by itself at exit, and is not reported.
    pytester.makeconftest(
        """
        import atexit, multiprocessing, time
        from pathlib import Path

        def _sleep():
            time.sleep(60)

        _ctx = multiprocessing.get_context("fork")
        held = _ctx.Process(target=_sleep, name="holds-the-exit")
        held.start()
        Path("held").write_text(str(held.pid))
        stopped = _ctx.Process(target=_sleep, name="stopped-at-unconfigure")
        stopped.start()
        daemonic = _ctx.Process(target=_sleep, name="a-daemon", daemon=True)
        daemonic.start()

        def _serve(stop):
            stop.wait()

        def _forget(path):
            import subprocess
            Path(path).write_text(str(subprocess.Popen(["sleep", "60"]).pid))
            time.sleep(60)

        def _stop_the_other_server():
            stop_the_other.set()
            other_server.join(30)
            print("other server exit code", other_server.exitcode)

        atexit.register(_stop_the_other_server)

        def pytest_sessionstart(session):
            global server, stop_serving, other_server, stop_the_other
            stop_serving = _ctx.Event()
            server = _ctx.Process(target=_serve, args=(stop_serving,), name="server")
            server.start()
            stop_the_other = _ctx.Event()
            other_server = _ctx.Process(target=_serve, args=(stop_the_other,), name="other")
            other_server.start()
            forgotten = _ctx.Process(target=_forget, args=("its-child",), name="forgotten")
            forgotten.start()
            Path("forgotten").write_text(str(forgotten.pid))
            while not Path("its-child").exists():
                time.sleep(0.01)

        def pytest_unconfigure():
            stopped.terminate()
            stopped.join()
            print("stopped-at-unconfigure exit code", stopped.exitcode)
            # Ended at the session's end, the server would never have told set() that it woke:
            # set() would wait for it for ever.
            stop_serving.set()
            server.join(30)
            print("server exit code", server.exitcode)
        """
    )
    pytester.makepyfile(
        test_queues="""
        import multiprocessing

        kept = multiprocessing.Queue()

        def test_puts_to_a_kept_queue():
            kept.put(1)

        def test_drops_a_full_queue():
            dropped = multiprocessing.Queue()
            dropped.put(b"x" * 200_000)
            dropped.put(2)
        """
    )
    pytest_command = shlex.join([sys.executable, "-m", "pytest", *FAST_ARGS, "--mp-check=warn"])
    result = pytester.run(
        "sh", "-c", f"sleep 60 & echo $! > inherited; exec {pytest_command}", timeout=45
    )
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2)
    held = int((pytester.path / "held").read_text())
    assert not _alive(held)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: 0 processes started by tests, 0 leaked, 0 unreaped, 0 hung, 0 ended by "
            "mpcheck",
            f"stopped-at-unconfigure exit code {-signal.SIGTERM}",
            "server exit code 0",
            "other server exit code 0",
        ]
    )
    forgotten = int((pytester.path / "forgotten").read_text())
    its_child = int((pytester.path / "its-child").read_text())
    assert not _alive(forgotten)
    assert not _alive(its_child)
    assert result.stderr.lines == [
        "mpcheck: 3 processes started outside any test or fixture (as a conftest.py or a test "
        "module was imported, or by a hook or a plugin) were still running as Python exited, "
        "never joined: "
        "multiprocessing would have waited for it with no timeout, and pytest would not have "
        "ended. Ended:",
        f"    process {held} 'holds-the-exit', started by multiprocessing.Process.start: SIGTERM "
        "(ended by mpcheck)",
        f"    process {forgotten} 'forgotten', started by multiprocessing.Process.start: SIGTERM "
        "(ended by mpcheck)",
        f"    process {its_child} 'sleep', started by process {forgotten}: SIGTERM (ended by "
        "mpcheck)",
        "How to fix: join it where the run ends (pytest_unconfigure, or a session-scoped fixture "
        "that starts it), or make it a daemon.",
        "mpcheck: 1 multiprocessing queue feeder thread was still writing as Python exited, to a "
        "pipe that nobody read: multiprocessing would have waited for it with no timeout, and "
        "pytest would not have ended. Not waited for; what was not written is lost:",
        "    thread 'QueueFeederThread', its queue's first put() at test_queues.py:10 by "
        "test_queues.py::test_drops_a_full_queue: writing an item, 1 more waiting",
        "How to fix: get() every item that was put before the queue is dropped (the "
        "multiprocessing guidelines: joining processes that use queues), or call "
        "cancel_join_thread() on a queue whose data may be lost.",
    ]
    inherited = int((pytester.path / "inherited").read_text())
    try:
        assert _alive(inherited), "the shell's job was signalled"
    finally:
        os.kill(inherited, signal.SIGKILL)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


#: A test that ends a child and then checks that none of its own children remain: with the
#: plugin observing, the orphaned grandchild goes where it would without it (not to pytest).
TREE = """
import multiprocessing, os, subprocess, time
import psutil

def spawn_worker(conn):
    conn.send(subprocess.Popen(["sleep", "30"]).pid)
    time.sleep(30)

def test_orphans_leave_the_tree():
    here, there = multiprocessing.Pipe()
    p = multiprocessing.get_context("fork").Process(target=spawn_worker, args=(there,))
    p.start()
    worker = here.recv()
    p.kill()
    p.join()
    try:
        assert worker not in [c.pid for c in psutil.Process().children(recursive=True)]
    finally:
        os.kill(worker, 9)
"""


@linux_only
def test_warn_mode_keeps_process_tree_semantics(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_tree=TREE)
    without = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:mpcheck")
    without.assert_outcomes(passed=1)
    # With --mp-check=warn it passes too: test_warn_observes_only_and_the_session_end_ends_it
    # runs it with its own warn-mode project.
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-subreaper=off", timeout=60)
    result.assert_outcomes(passed=1)
    on = pytester.runpytest_subprocess(
        *FAST_ARGS, "--mp-check=warn", "--mp-subreaper=on", timeout=60
    )
    on.assert_outcomes(failed=1)
    on.stdout.fnmatch_lines(["*orphans reparent to pytest (subreaper)*"])


def test_bad_subreaper_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--mp-subreaper=sometimes")  # no process started
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*'sometimes' is not a valid mp-subreaper value. Valid values: auto, on, off"]
    )


#: Exit statuses that must reach their own callers while the orphan reaper runs on every SIGCHLD
#: (principle 3), one module each, for one inner run with the subreaper on.
STATUSES = {
    # A conftest's pytest_configure runs before the plugin's: nothing noted this child's start,
    # and it is no orphan all the same (nor one started at the conftest's import).
    "conftest": """
        import subprocess

        BUILT_AT_IMPORT = subprocess.Popen(["sh", "-c", "sleep 0.2; exit 3"])

        def pytest_configure(config):
            config.migration = subprocess.Popen(["sh", "-c", "sleep 0.2; exit 5"])
        """,
    "test_older_children": """
        import time
        import conftest

        def test_their_statuses_are_kept(pytestconfig):
            time.sleep(0.6)  # they exit, SIGCHLD comes, the orphan reaper runs
            assert (conftest.BUILT_AT_IMPORT.wait(), pytestconfig.migration.wait()) == (3, 5)
        """,
    # As a bounded stress test: two threads start short-lived children, for 2 s (about 1,200
    # children on a loaded 2-core machine; each costs 1.5 ms of CPU, so 4 s cost 2 s more).
    "test_race": """
        import subprocess, threading, time

        def test_two_threads():
            wrong = []
            deadline = time.monotonic() + 2

            def loop():
                while time.monotonic() < deadline:
                    code = subprocess.run(["sh", "-c", "exit 3"]).returncode
                    if code != 3:
                        wrong.append(code)

            threads = [threading.Thread(target=loop) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert wrong == []
        """,
    # os.system forks and waits in C (system(3)), past the wrappers of os.fork and fork_exec:
    # its child is no orphan either, whichever thread calls it. Bounded: 1 s (some 1,200 calls,
    # about a tenth of which lost their status to the reaper before the fix). The main thread
    # wakes for each result, so that the handler runs while the other threads are in system().
    "test_os_system": """
        import os, time
        from concurrent.futures import ThreadPoolExecutor

        def test_four_threads():
            wrong = []
            deadline = time.monotonic() + 1
            with ThreadPoolExecutor(4) as pool:
                while time.monotonic() < deadline:
                    statuses = pool.map(os.system, ["exit 3"] * 20)
                    wrong += [status for status in statuses if status != 3 << 8]
            assert wrong == []
        """,
    # multiprocess, billiard and loky have their own copy of spawnv_passfds, which calls
    # _posixsubprocess.fork_exec: the child it starts is no orphan, and its status stays.
    "test_fork_exec": """
        import multiprocessing.util, os, sys, time, types

        ours = getattr(multiprocessing.util.spawnv_passfds, "__wrapped__",
                       multiprocessing.util.spawnv_passfds)
        # the same code with globals of its own: a fork of multiprocessing's function
        their_spawnv_passfds = types.FunctionType(ours.__code__, dict(vars(multiprocessing.util)))

        def test_status_is_kept():
            exe = os.fsencode(sys.executable)
            pid = their_spawnv_passfds(exe, [exe, b"-c", b"import sys; sys.exit(7)"], ())
            time.sleep(0.5)  # it exits, SIGCHLD comes, the orphan reaper runs
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 7
        """,
    # Found by CPython's test_forkserver_sigkill under the plugin: a process that the forkserver
    # forked reparents to pytest when the forkserver is killed. Its Popen reads the exit status
    # from the forkserver, never waits for it: a true orphan, reaped, and not the test's zombie.
    "test_forkserver_death": """
        import multiprocessing, os, signal, time
        from multiprocessing import forkserver

        def test_kill_the_forkserver():
            ctx = multiprocessing.get_context("forkserver")
            forkserver.ensure_running()
            p = ctx.Process(target=time.sleep, args=(0.5,))
            p.start()
            os.kill(forkserver._forkserver._forkserver_pid, signal.SIGKILL)
            time.sleep(1)  # p is orphaned, exits and reparents to pytest (the subreaper)
            p.join(10)
            assert p.exitcode in (0, 255)
        """,
    # Code under test that resets SIGCHLD to its default (a library restoring the signal
    # dispositions) does not leave the orphans adopted from then on zombies: the orphan
    # reaper's handler is put back after the test. A handler of the user's, or SIG_IGN, stays.
    # Named to run last: each test leaves the next one its handler.
    "test_sigchld_reset": """
        import os, signal, subprocess, time

        def mine(signum, frame):
            pass

        def test_a_library_sets_a_handler():
            signal.signal(signal.SIGCHLD, mine)

        def test_it_is_left_alone():
            assert signal.getsignal(signal.SIGCHLD) is mine
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)

        def test_so_is_ignore():
            assert signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            assert subprocess.run(["true"]).returncode == 0

        def test_an_orphan_that_ends_is_reaped_as_it_would_be_by_init():
            worker = int(subprocess.run(
                ["sh", "-c", "sleep 0.3 & echo $!"], capture_output=True, text=True
            ).stdout)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    os.kill(worker, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)
            raise AssertionError("the orphan is still a zombie")
        """,
}


@linux_only
def test_exit_statuses_reach_their_callers_under_the_subreaper(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(**STATUSES)
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-subreaper=on", timeout=60)
    result.assert_outcomes(passed=9)
    result.stdout.fnmatch_lines(["*orphans reparent to pytest (subreaper)*"])
    # The orphaned forkserver child is no test's zombie (and nothing else was left).
    result.stdout.fnmatch_lines(["mpcheck: * 0 leaked, 0 unreaped, 0 hung, 0 ended by mpcheck"])


def test_a_pool_kept_by_a_module_is_handed_to_the_session(pytester: pytest.Pytester) -> None:
    # Principle 2 and 5: the test that left the pool running fails; the pool is not killed
    # under the next tests, and the workers it starts for them are not blamed on them.
    pytester.makepyfile(
        test_kept="""
        import multiprocessing

        POOL = None

        def square(n):
            return n * n

        def pool():
            global POOL
            if POOL is None:
                POOL = multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1)
            return POOL

        def test_creates_it():
            assert len(pool()._pool) == 2

        def test_uses_it_and_it_replaces_workers():
            assert pool().map(square, range(6)) == [0, 1, 4, 9, 16, 25]

        def test_uses_it_again():
            assert pool().apply(square, (7,)) == 49
        """,
        # A worker killed while it waited for a task never released the task queue's lock:
        # the pool's terminate() then waits for it for ever. The session's end is bounded all
        # the same (the pool's workers are then ended by signals).
        # Named to run first: a pool forking for a later test (the one above replaces its
        # workers from its thread) could copy this pool's worker's sentinel into its own worker,
        # and this pool would then never see its worker die (CPython's fork-with-threads race).
        test_a_lock_lost="""
        import multiprocessing, os, signal, time

        BROKEN = None

        def test_an_idle_worker_is_killed():
            global BROKEN
            BROKEN = multiprocessing.get_context("fork").Pool(1)
            worker = BROKEN.apply(os.getpid)
            lock, deadline = BROKEN._inqueue._rlock, time.monotonic() + 20
            while lock.acquire(False):  # free: the worker is not waiting for a task yet
                lock.release()
                assert time.monotonic() < deadline
                time.sleep(0.01)
            killed = BROKEN._pool[0]
            os.kill(worker, signal.SIGKILL)  # it dies holding the lock
            # Told apart by the object, not the pid: the new worker may get the dead one's pid
            # (another test of this suite hands out pids again through ns_last_pid).
            while not BROKEN._pool or BROKEN._pool[0] is killed:
                assert time.monotonic() < deadline
                time.sleep(0.02)  # the pool replaces it
        """,
        # A pool or executor still open does not end its workers by itself, and the settle
        # window is not waited out for them (test_creates_it); an executor shut down without
        # waiting, even kept by a module, ends them, and the window lets them finish: no leak.
        test_closing="""
        import concurrent.futures, multiprocessing

        KEPT = {}

        def test_shuts_an_executor_down_without_waiting():
            context = multiprocessing.get_context("fork")
            KEPT["executor"] = concurrent.futures.ProcessPoolExecutor(2, mp_context=context)
            assert list(KEPT["executor"].map(abs, [-1, -2])) == [1, 2]
            KEPT["executor"].shutdown(wait=False)
        """,
        # A process that another thread started and still holds in a local variable (as a
        # pool's thread does between a new worker's start() and its append to the pool's list)
        # is that thread's to use: it is reported, but not ended under it.
        test_threaded="""
        import multiprocessing, threading, time

        KEPT = {}

        def keep_a_child():
            context = multiprocessing.get_context("fork")
            child = context.Process(target=time.sleep, args=(30,), name="kept")
            child.start()
            KEPT["started"].set()
            KEPT["release"].wait(30)
            KEPT["alive"] = child.is_alive()
            child.terminate()
            child.join()

        def test_a_thread_starts_a_child_and_keeps_it():
            KEPT.update(started=threading.Event(), release=threading.Event())
            KEPT["thread"] = threading.Thread(target=keep_a_child, name="keeper")
            KEPT["thread"].start()
            assert KEPT["started"].wait(20)

        def test_the_thread_still_has_it():
            KEPT["release"].set()
            KEPT["thread"].join(20)
            assert KEPT["alive"]
        """,
    )
    # A settle window long enough for the closing workers on a loaded machine.
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-settle=3", timeout=90)
    result.assert_outcomes(passed=7, errors=3)
    result.stdout.no_fnmatch_line("*test_closing.py::* left *")
    result.stdout.fnmatch_lines(
        [
            "mpcheck: test_threaded.py::test_a_thread_starts_a_child_and_keeps_it left 1 process "
            "behind (1 leaked)",
            "leaked process * 'kept': still running*",
            "    kept running: still held by the running thread 'keeper', which later tests may "
            "use; handed to the session, and ended when the session ends",
        ]
    )
    # The pool that lost its lock: its terminate() did not return, its new worker was ended by
    # a signal, and pytest ended (it hung at exit before).
    result.stdout.fnmatch_lines(
        [
            "'ForkPoolWorker-*' (pid *): died of SIGKILL: *",
            "    running:    none (the worker was idle; its last task had finished: getpid())",
            "mpcheck: 1 process that tests left behind was still running at the end of the "
            "session, and ended:",
            "    process * 'ForkPoolWorker-*' of "
            "test_a_lock_lost.py::test_an_idle_worker_is_killed: SIGTERM (ended by mpcheck)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_creates_it*",
            "mpcheck: test_kept.py::test_creates_it left 2 processes behind (2 leaked)",
            "    kept running: still held by a live multiprocessing.pool.Pool*",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_uses_it*")
    # The workers the pool's thread forks as the tests end keep their start records (a stale
    # view of the process tree once dropped them, and one was then killed by signal, leaving the
    # pool's queue lock held: pytest hung at exit).
    result.stdout.no_fnmatch_line("*started by: unknown*")


#: A tracker of another multiprocessing family: known by what it runs (principle 4).
OTHER_FAMILY_TRACKER = (
    "import signal, sys\n"
    "def main(fd):\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # trackers ignore SIGTERM\n"
    "    sys.stdin.read()  # until the pytest process ends\n"
)

#: Who owns a process, one module each, for one inner run.
OWNERS = {
    # Principle 4: a tracker is known by what it runs, whichever family's it is.
    "test_family": """
        import os, subprocess, sys, time

        tracker = None

        def test_first_use_starts_the_tracker():
            global tracker
            tracker = subprocess.Popen(
                [sys.executable, "-c", "from otherfamily.resource_tracker import main; main(3)"],
                stdin=subprocess.PIPE,
            )

        def test_the_tracker_is_still_there():
            assert tracker.poll() is None
        """,
    # setUpClass owns what it starts, as a class-scoped fixture does; its pool replacing a
    # worker during a test is the class's, not that test's.
    "test_unit": """
        import multiprocessing, unittest

        def square(n):
            return n * n

        class TestWithPool(unittest.TestCase):
            @classmethod
            def setUpClass(cls):
                cls.pool = multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1)

            @classmethod
            def tearDownClass(cls):
                cls.pool.terminate()
                cls.pool.join()

            def test_apply(self):
                self.assertEqual(self.pool.apply(square, (3,)), 9)

            def test_map(self):
                self.assertEqual(self.pool.map(square, range(4)), [0, 1, 4, 9])

        class TestForgets(unittest.TestCase):
            @classmethod
            def setUpClass(cls):
                cls.proc = multiprocessing.get_context("fork").Process(
                    target=__import__("time").sleep, args=(30,))
                cls.proc.start()

            def test_one(self):
                pass

            @unittest.skip("not today")
            def test_skipped(self):
                pass
        """,
}

#: A process whose main thread exited is still running, not a zombie (Linux: pthread_exit).
LEADER_EXITED = """
    import ctypes, os, threading, time

    def test_leaves_one():
        if os.fork() == 0:
            threading.Thread(target=time.sleep, args=(60,)).start()
            ctypes.CDLL(None).pthread_exit(None)  # only the main thread ends
        time.sleep(0.3)
    """


def test_helpers_setupclass_and_a_leader_that_exited(pytester: pytest.Pytester) -> None:
    # Three stories of one inner run (an interpreter start is most of the cost of each): the
    # tracker of another family is a helper, setUpClass owns its processes, and a process whose
    # main thread exited is a leak.
    linux = sys.platform.startswith("linux")
    (pytester.mkpydir("otherfamily") / "resource_tracker.py").write_text(OTHER_FAMILY_TRACKER)
    pytester.makepyfile(**OWNERS, **({"test_leader": LEADER_EXITED} if linux else {}))
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=60)
    result.assert_outcomes(passed=5 + linux, skipped=1, errors=1 + linux)
    # The tracker is reported nowhere: not at the end of its tests, not at the end of the
    # session (a report of it would name its test or show its command line).
    result.stdout.no_fnmatch_line("*test_family.py::*")
    result.stdout.no_fnmatch_line("*otherfamily*")
    result.stdout.fnmatch_lines(
        [
            "mpcheck: setUpClass of TestForgets (finalized at the teardown of "
            "test_unit.py::TestForgets::test_skipped) left 1 process behind (1 leaked)",
        ]
    )
    result.stdout.no_fnmatch_line("*TestWithPool*left*")
    if linux:
        teardown_error(result, "test_leaves_one").fnmatch_lines(
            [
                "mpcheck: test_leader.py::test_leaves_one left 1 process behind (1 leaked)",
                "leaked process *: still running, state running (its main thread has exited)*",
                "    ended by:   SIGTERM (ended by mpcheck)",
            ]
        )


@linux_only
def test_hundreds_of_children_are_all_found(pytester: pytest.Pytester) -> None:
    # procfs hands a task's children out a page at a time: hundreds of pids do not fit in one
    # read. The test process starts children until their pids ("%d " each) fill more than a
    # page, and checks that its own children file then is longer than one (800 children were
    # not always enough: with 4-digit pids they fill 4,000 bytes). The children are `cat` on a
    # pipe that stays open, started with posix_spawn: forks of the pytest process cost a copy of
    # its page tables and a py-spy stack each when reported, which prove nothing more here.
    pytester.makepyfile(
        test_many="""
        import os, shutil

        def test_starts_hundreds():
            cat = shutil.which("cat")
            r, w = os.pipe()
            pids, size = [], 0
            while size <= 4096:
                pid = os.posix_spawn(cat, ["cat"], dict(os.environ),
                                     file_actions=[(os.POSIX_SPAWN_DUP2, r, 0)])
                pids.append(pid)
                size += len(str(pid)) + 1
            os.close(r)
            fd = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY)
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
            os.close(fd)
            assert len(data) > 4096
            assert sorted(map(int, data.split())) == sorted(pids)
            with open("started", "w") as out:
                out.write(str(len(pids)))
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=120)
    result.assert_outcomes(passed=1, errors=1)
    started = int((pytester.path / "started").read_text())
    assert started >= 512  # a Linux pid has at most 7 digits: 4096 bytes hold 512 of them
    result.stdout.fnmatch_lines(
        [
            f"mpcheck: test_many.py::test_starts_hundreds left {started} processes behind "
            f"({started} leaked)",
            "leaked process * 'cat': still running, *",
            "    command:    cat",
            "    started at: test_many.py:8 by os.posix_spawn",
            "    ended by:   SIGTERM (ended by mpcheck)",
        ]
    )
    result.stdout.fnmatch_lines(
        [f"mpcheck: {started} processes started by tests, {started} leaked*"]
    )


def test_a_fault_inside_the_plugin_changes_no_outcome(pytester: pytest.Pytester) -> None:
    # Principle 6, with faults injected into the plugin itself: after each test, at the end of
    # the session and in the summary. The user's outcomes, failure report and exit status stay;
    # each fault is one warning that even `-W error` does not escalate; no INTERNALERROR.
    pytester.makeconftest(
        """
        from pytest_mpcheck import run
        from pytest_mpcheck.watch import process_watch, reaper

        def fault(*args, **kwargs):
            raise RuntimeError("injected fault")

        process_watch.ProcessWatch.finish_test = fault
        process_watch.ProcessWatch.finish_session = fault
        run.MpCheckRun.summary_lines = fault
        reaper.OrphanReaper.reap_orphans = fault
        """
    )
    pytester.makepyfile(
        test_user="""
        import subprocess
        import sys

        def test_passes():
            pass

        def test_child_exits():
            # Its SIGCHLD runs the reaper's handler in this test's code: the fault stays out of it.
            for _ in range(3):
                assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0

        def test_fails():
            assert 1 == 2, "the user's own failure"
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, "-W", "error", timeout=60)
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["failed"]) == (2, 1)
    # One warning for each test's check, two at the end, and one or more for the handler (one
    # SIGCHLD for each child, but signals that arrive together are delivered once).
    assert 6 <= outcomes["warnings"] <= 8
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: the user's own failure*",
            "*pytest-mpcheck failed while checking the processes of test_user.py::test_passes;*",
            "*pytest-mpcheck failed while checking the processes of test_user.py::test_fails;*",
            "FAILED test_user.py::test_fails - AssertionError: the user's own failure*",
            "*warnings summary (final)*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*pytest-mpcheck failed while reaping orphans during test_user.py::test_child_exits;*"]
    )
    for doing in ("ending what was left at the end of the session", "writing the terminal summary"):
        result.stdout.fnmatch_lines([f"*pytest-mpcheck failed while {doing}; please report*"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


FORKED_RUNNER = """
import os
import pickle

import pytest
from _pytest.runner import runtestprotocol


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    # pytest-forked's way: each test runs in a fork of the session process, which sends its
    # reports back.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        reports = runtestprotocol(item, log=False, nextitem=nextitem)
        hook = item.config.hook
        data = [hook.pytest_report_to_serializable(config=item.config, report=r) for r in reports]
        with os.fdopen(write_end, "wb") as out:
            out.write(pickle.dumps(data))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as source:
        data = pickle.loads(source.read())
    os.waitpid(pid, 0)
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for entry in data:
        report = item.config.hook.pytest_report_from_serializable(config=item.config, data=entry)
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
"""


@linux_only
def test_a_forked_test_runner_is_watched_from_the_fork(pytester: pytest.Pytester) -> None:
    # pytest-forked runs each test in a fork of the session process (pytest-forked itself does
    # not run under pytest 9, so its way is written out here). The fork is not the test's leak
    # (a clean test was once killed with SIGTERM), and the test's real leak is found.
    pytester.makeconftest(FORKED_RUNNER)
    pytester.makepyfile(
        test_forked="""
        import subprocess

        def test_clean():
            pass

        def test_leaks():
            subprocess.Popen(["sleep", "30"])

        def test_clean_after():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=60)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: test_forked.py::test_leaks left 1 process behind (1 leaked)",
            "",
            "leaked process * 'sleep': still running, *",
            "    command:    sleep 30",
            "    started at: test_forked.py:7 by subprocess.Popen",
        ]
    )
    result.stdout.no_fnmatch_line("*test_clean*left*behind*")


@linux_only
def test_pool_workers_without_start_records_are_ended_through_their_pool(
    pytester: pytest.Pytester,
) -> None:
    # A Pool's idle worker waits for tasks holding the pool's queue lock: killed, it leaves the
    # lock held, and the pool's terminate() at interpreter exit hangs pytest for ever. A worker
    # with no start record (as one forked by C code) has no handle that leads to its pool; the
    # pool is found all the same and ends its workers. Before, this run never exited.
    pytester.makepyfile(
        test_unrecorded="""
        import multiprocessing

        KEPT = []

        def test_pool_workers_without_records(request):
            pool = multiprocessing.get_context("fork").Pool(2)
            assert pool.map(abs, [-1, -2]) == [1, 2]
            KEPT.append(pool)
            run = request.config.pluginmanager.get_plugin("mpcheck-run")
            for worker in pool._pool:
                run.recorder.records.pop(worker.pid, None)
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=60)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "mpcheck: test_unrecorded.py::test_pool_workers_without_records left 2 processes "
            "behind (2 leaked)",
            "    ended by:   terminate() of its multiprocessing Pool (called by mpcheck)",
        ]
    )


ASKED_AS_THEY_EXIT = """
import multiprocessing
import os
import time

from pytest_mpcheck._os.stackfile import STACK_SIGNAL
from pytest_mpcheck._os.stacks import is_prepared


def fail(leaving):
    leaving.set()
    raise RuntimeError("no database")


def succeed(leaving):
    leaving.set()
    return 7


def ask_as_it_leaves(process, leaving):
    # The plugin asks a child for its stacks whenever it looks at it (a pool's worker at the
    # pool's end, a process that outlived its test), once the child catches the signal. Here
    # every millisecond from the end of its target until it is gone: some request lands while it
    # exits. (Not before: a child asked that often from its start would do little else.)
    assert leaving.wait(60)
    deadline = time.monotonic() + 30
    while process.exitcode is None and time.monotonic() < deadline:
        if is_prepared(process.pid):
            try:
                os.kill(process.pid, STACK_SIGNAL)
            except ProcessLookupError:
                pass
        time.sleep(0.001)
        process.join(0)


def test_plain_spawn_children():
    context = multiprocessing.get_context("spawn")
    for _ in range(4):
        leaving = context.Event()
        process = context.Process(target=fail, args=(leaving,))
        process.start()
        ask_as_it_leaves(process, leaving)
        assert process.exitcode == 1


def test_mp_spawn_children(mp_spawn):
    for _ in range(4):
        leaving = multiprocessing.get_context("spawn").Event()
        process = mp_spawn(succeed, (leaving,))
        ask_as_it_leaves(process, leaving)
        assert process.result == 7
        assert process.exitcode == 0
"""


def test_children_asked_for_stacks_as_they_exit_exit_as_they_would(
    pytester: pytest.Pytester,
) -> None:
    # A spawned child tears its interpreter down as it exits: the stack signal then used to kill
    # it (the signal's default action, once Python reset its handlers) or crash it (faulthandler
    # walking freed thread states): an exit code of -37 or -11 for a child that ended well.
    pytester.makepyfile(test_exiting=ASKED_AS_THEY_EXIT)
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-start-methods=spawn", timeout=120)
    result.assert_outcomes(passed=2)
