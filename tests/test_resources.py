"""Named resources (shared memory, semaphores) that a test leaves to the resource tracker."""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.conftest import FAST_ARGS
from tests.sections import section

#: What the resource tracker prints when it frees leftovers as the session ends.
TRACKER_WARNING = "resource_tracker: There appear to be"


def _segments(text: str) -> list[str]:
    return re.findall(r"leaked shared memory segment '/?([^']+)'", text)


def _report(result: pytest.RunResult) -> str:
    """The output before the short summary (which repeats whole messages when CI is set)."""
    return result.stdout.str().split("short test summary info")[0]


def test_shared_memory_never_unlinked_fails_and_is_freed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_shm="""
        import os
        from multiprocessing import shared_memory

        def test_forgets_unlink():
            segment = shared_memory.SharedMemory(create=True, size=4096)
            open("name", "w").write(segment.name)
            segment.close()

        def test_freed_before_the_next_test():
            name = open("name").read()
            assert not os.path.exists("/dev/shm/" + name)

        CACHE_NAME = f"mpcheck_cache_{os.getpid()}"
        CACHE = []

        def cached():
            if not CACHE:
                CACHE.append(shared_memory.SharedMemory(create=True, size=16, name=CACHE_NAME))
            return CACHE[0]

        def test_caches_a_segment():
            cached().buf[:5] = b"hello"
            open("cache-name", "w").write(CACHE_NAME)

        def test_attaches_to_the_cached_segment():
            other = shared_memory.SharedMemory(name=CACHE_NAME)  # as a worker would
            try:
                assert bytes(other.buf[:5]) == b"hello"
            finally:
                other.close()
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=60)
    result.assert_outcomes(passed=4, errors=2)
    name = (pytester.path / "name").read_text()
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgets_unlink*",
            "mpcheck: test_shm.py::test_forgets_unlink left 1 named resource behind "
            "(multiprocessing's resource tracker would free it later with a warning naming no "
            "test)",
            "",
            f"leaked shared memory segment '/{name}': never unlinked",
            "    made at:    test_shm.py:5 by the test process",
            "    freed by:   mpcheck (unlinked, and taken off the tracker's list)",
            "",
            "How to fix: Call unlink() on a SharedMemory once no process needs it any more*",
        ]
    )
    # A segment that a live object still refers to is not unlinked under the later tests that
    # attach to it by name: it is handed to the session, which frees it at its end.
    cache = (pytester.path / "cache-name").read_text()
    section(result, "ERROR at teardown of test_caches_a_segment").fnmatch_lines(
        [
            "mpcheck: test_shm.py::test_caches_a_segment left 1 named resource behind *",
            "",
            f"leaked shared memory segment '/{cache}': never unlinked",
            "    made at:    test_shm.py:18 by the test process",
            "    kept:       still held by a global of module test_shm, which later tests may "
            "use; handed to the session, and freed when it ends",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            # (not the resource tracker that the segment started: a session helper)
            "mpcheck: 0 processes started by tests, 0 leaked, 0 unreaped, 0 hung, "
            "0 ended by mpcheck",
            "mpcheck: 2 named resources (shared memory, semaphores) left behind",
            "mpcheck: 1 named resource that tests left behind was still there at the end of the "
            "session:",
            f"    shared memory segment '/{cache}' of test_shm.py::test_caches_a_segment: "
            "freed by mpcheck (unlinked, and taken off the tracker's list)",
        ]
    )
    assert not os.path.exists(f"/dev/shm/{cache}")
    # Freed and taken off the tracker's list: the tracker has nothing to warn about at exit.
    assert TRACKER_WARNING not in result.stderr.str()


CLEAN = """
import multiprocessing
from multiprocessing import shared_memory

CONTEXT = multiprocessing.get_context({method!r})
KEPT = CONTEXT.Lock()

def attach_and_write(name):
    segment = shared_memory.SharedMemory(name=name)
    segment.buf[0] = 7
    segment.close()

def make_locks():
    for _ in range(3):
        with CONTEXT.Lock():
            pass

def test_segment_shared_then_unlinked():
    segment = shared_memory.SharedMemory(create=True, size=16)
    try:
        p = CONTEXT.Process(target=attach_and_write, args=(segment.name,))
        p.start()
        p.join()
        assert segment.buf[0] == 7
    finally:
        segment.close()
        segment.unlink()

def test_locks_in_a_child_and_in_a_global():
    global KEPT
    KEPT = CONTEXT.Lock()
    p = CONTEXT.Process(target=make_locks)
    p.start()
    p.join()
    assert p.exitcode == 0
"""


def test_clean_shared_memory_and_locks_pass(pytester: pytest.Pytester) -> None:
    # A segment the children attach to and the test unlinks, a lock that lives in a global (its
    # object frees it when collected or at exit), locks made and collected in a child: one
    # module per start method, in one inner run.
    methods = ("fork", "spawn", "forkserver")
    pytester.makepyfile(**{f"test_clean_{m}": CLEAN.format(method=m) for m in methods})
    result = pytester.runpytest_subprocess(*FAST_ARGS, "-W", "error", timeout=90)
    result.assert_outcomes(passed=2 * len(methods))
    assert "named resource" not in result.stdout.str()
    assert TRACKER_WARNING not in result.stderr.str()


def test_semaphore_of_a_child_that_left_through_os_exit(pytester: pytest.Pytester) -> None:
    # The child's lock object is never collected: its finalizer never runs, and the semaphore's
    # name stays. A plain forked child, whose parent ran no resource tracker, started one of its
    # own, which frees it as the child ends; a spawned child uses the session's tracker, and the
    # plugin frees it.
    pytester.makepyfile(
        test_sem="""
        import multiprocessing, os

        def make_lock_and_leave():
            lock = multiprocessing.get_context("spawn").Lock()
            os._exit(0)

        def test_forked_child_leaves_its_lock():
            p = multiprocessing.get_context("fork").Process(target=make_lock_and_leave)
            p.start()
            p.join()
            open("forked", "w").write(str(p.pid))

        def test_spawned_child_leaves_its_lock(mp_spawn):
            child = mp_spawn(make_lock_and_leave, check=False)
            child.join()
            open("spawned", "w").write(str(child.pid))
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, "--mp-start-methods=spawn", timeout=60)
    result.assert_outcomes(passed=2, errors=2)
    forked = (pytester.path / "forked").read_text()
    spawned = (pytester.path / "spawned").read_text()
    result.stdout.fnmatch_lines(
        [
            "mpcheck: test_sem.py::test_forked_child_leaves_its_lock left 1 named resource *",
            "",
            f"leaked named semaphore '/mp-*': process {forked} ended without freeing it",
            f"    made at:    test_sem.py:4 by process {forked}",
            f"    freed by:   the resource tracker process {forked} started for itself, as it "
            "ended (its warning on stderr names no test)",
            "",
            "How to fix: A named semaphore (of a lock, event or semaphore made under spawn*",
            "mpcheck: test_sem.py::test_spawned_child_leaves_its_lock[[]spawn[]] left 1 named *",
            "",
            f"leaked named semaphore '/mp-*': process {spawned} ended without freeing it",
            f"    made at:    test_sem.py:4 by process {spawned}",
            "    freed by:   mpcheck (unlinked, and taken off the tracker's list)",
        ]
    )
    assert "Call unlink()" not in result.stdout.str()


SEGMENT_IN_A_CHILD = """
from multiprocessing import shared_memory

def make_segment():
    segment = shared_memory.SharedMemory(create=True, size=64)
    segment.close()
    return segment.name

def test_child_forgets_unlink(mp_spawn, mp_start_method):
    child = mp_spawn(make_segment, name="maker")
    child.join()
    open(f"name-{mp_start_method}", "w").write(child.result)
    open(f"pid-{mp_start_method}", "w").write(str(child.pid))
"""


#: Run after test_child.py, while the pytest process still has no resource tracker: its pool's
#: forked worker starts one of its own.
SEGMENTS_OF_A_POOL_WORKER = """
import multiprocessing
from multiprocessing import shared_memory

def make_two():
    names = []
    for _ in range(2):
        segment = shared_memory.SharedMemory(create=True, size=8)
        segment.buf[:2] = b"ok"
        segment.close()
        names.append(segment.name)
    return names

def test_worker_makes_test_unlinks_one():
    with multiprocessing.get_context("fork").Pool(1) as pool:
        unlinked, kept = pool.apply(make_two)
    pool.join()
    segment = shared_memory.SharedMemory(name=unlinked)
    assert bytes(segment.buf[:2]) == b"ok"
    segment.close()
    segment.unlink()
    open("pool-names", "w").write(unlinked + " " + kept)
"""


@pytest.mark.parametrize(
    "methods", [("fork",), ("spawn", "forkserver")], ids=["fork", "spawn-forkserver"]
)
def test_segment_made_in_a_fixture_child(
    pytester: pytest.Pytester, methods: tuple[str, ...]
) -> None:
    # Children that mp_spawn starts note their registrations under every start method. Under
    # fork the run must have no tracker of its own yet: fork has an inner run to itself, where
    # a pool's worker also makes two segments, of which the test unlinks one by name: the
    # worker's registration, which the pytest process reads from the log after the test, came
    # before the test's unregistration, which it hears at once.
    pytester.makepyfile(test_child=SEGMENT_IN_A_CHILD)
    pooled = methods == ("fork",)
    if pooled:
        pytester.makepyfile(test_pool=SEGMENTS_OF_A_POOL_WORKER)
    result = pytester.runpytest_subprocess(
        *FAST_ARGS, f"--mp-start-methods={','.join(methods)}", timeout=90
    )
    result.assert_outcomes(passed=len(methods) + pooled, errors=len(methods) + pooled)
    if pooled:
        unlinked, kept = (pytester.path / "pool-names").read_text().split()
        section(result, "ERROR at teardown of test_worker_makes_test_unlinks_one").fnmatch_lines(
            [
                "mpcheck: test_pool.py::test_worker_makes_test_unlinks_one left 1 named "
                "resource behind *",
                "",
                f"leaked shared memory segment '/{kept}': never unlinked",
                "    made at:    test_pool.py:7 by process *",
                "    freed by:   the resource tracker process * started for itself, as it ended *",
            ]
        )
        assert unlinked not in _report(result)
    for method in methods:
        name = (pytester.path / f"name-{method}").read_text()
        pid = (pytester.path / f"pid-{method}").read_text()
        section(result, f"ERROR at teardown of test_child_forgets_unlink[{method}]").fnmatch_lines(
            [
                f"leaked shared memory segment '/{name}': never unlinked",
                f"    made at:    test_child.py:4 by process {pid}",
                # A forked child of a pytest process with no tracker running starts its own.
                "    freed by:   the resource tracker process*"
                if method == "fork"
                else "    freed by:   mpcheck (unlinked, and taken off the tracker's list)",
            ]
        )
    if methods != ("fork",):  # (the child's own tracker warns when it likes)
        assert TRACKER_WARNING not in result.stderr.str()


def test_module_fixture_owns_its_segment(pytester: pytest.Pytester) -> None:
    # A segment a module-scoped fixture makes is checked when the fixture ends, not blamed on
    # the first test that used it; one it unlinks at teardown is no leak.
    pytester.makepyfile(
        test_scope="""
        import pytest
        from multiprocessing import shared_memory

        @pytest.fixture(scope="module")
        def tidy():
            segment = shared_memory.SharedMemory(create=True, size=16)
            yield segment
            segment.close()
            segment.unlink()

        @pytest.fixture(scope="module")
        def careless():
            segment = shared_memory.SharedMemory(create=True, size=16)
            yield segment
            segment.close()

        def test_first(tidy, careless):
            pass

        def test_second(tidy, careless):
            pass
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=60)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_second*",
            "mpcheck: test_scope.py::test_second left 1 named resource behind *",
            "leaked shared memory segment '*': never unlinked",
            "    made at:    test_scope.py:13 by the test process",
            "    owned by:   module-scoped fixture 'careless'",
        ]
    )
    # The resource tracker that the first segment started is the session's, not the fixture's.
    assert "leaked process" not in result.stdout.str()
    assert len(_segments(_report(result))) == 1


def test_warn_and_off_modes(pytester: pytest.Pytester) -> None:
    # Warn mode frees nothing while the session runs: a later test may attach to a segment by
    # its name, even one that no object holds. What is still there at the end is freed then.
    pytester.makepyfile(
        test_modes="""
        import os
        import pytest
        from multiprocessing import shared_memory

        NAME = f"mpcheck_modes_{os.getpid()}"

        def leave_one():
            segment = shared_memory.SharedMemory(create=True, size=16)
            segment.close()
            return segment.name

        @pytest.mark.mp_check("warn")
        def test_warned():
            open("warned", "w").write(leave_one())

        @pytest.mark.mp_check("warn")
        def test_warned_named():
            segment = shared_memory.SharedMemory(create=True, size=16, name=NAME)
            segment.buf[0] = 7
            segment.close()

        def test_attaches_by_name_and_unlinks():
            segment = shared_memory.SharedMemory(name=NAME)
            try:
                assert segment.buf[0] == 7
            finally:
                segment.close()
                segment.unlink()

        @pytest.mark.mp_check("off")
        def test_unchecked():
            leave_one()  # not followed any more: not even reported when the session ends
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=60)
    result.assert_outcomes(passed=4, warnings=2)
    warned = (pytester.path / "warned").read_text()
    kept = (
        "      kept:       nothing is freed in warn mode while the session runs (a later test "
        "may use it); handed to the session, and freed when it ends"
    )
    result.stdout.fnmatch_lines(
        [
            "*MpCheckWarning: mpcheck: test_modes.py::test_warned left 1 named resource behind*",
            f"  leaked shared memory segment '/{warned}': never unlinked",
            "      made at:    test_modes.py:8 by the test process",
            kept,
            "*MpCheckWarning: mpcheck: test_modes.py::test_warned_named left 1 named resource *",
            "  leaked shared memory segment '/mpcheck_modes_*': never unlinked",
            "      made at:    test_modes.py:18 by the test process",
            kept,
            "mpcheck: 2 named resources (shared memory, semaphores) left behind",
            # (the one a later test unlinked is not there any more)
            "mpcheck: 1 named resource that tests left behind was still there at the end of the "
            "session:",
            f"    shared memory segment '/{warned}' of test_modes.py::test_warned: freed by "
            "mpcheck (unlinked, and taken off the tracker's list)",
        ]
    )
    assert len(_segments(_report(result))) == 2
    assert "no test is blamed" not in result.stdout.str()
    assert not os.path.exists(f"/dev/shm/{warned}")


def test_under_xdist_each_worker_reports_its_own(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_workers="""
        import pytest
        from multiprocessing import shared_memory

        @pytest.mark.parametrize("n", range(4))
        def test_leaves_one_every_other(n):
            segment = shared_memory.SharedMemory(create=True, size=16)
            segment.close()
            if n % 2 == 0:
                segment.unlink()
        """
    )
    result = pytester.runpytest_subprocess(
        *FAST_ARGS, "-n", "2", "--mp-report=report.json", timeout=90
    )
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(
        ["mpcheck: 2 named resources (shared memory, semaphores) left behind"]
    )
    document = json.loads((pytester.path / "report.json").read_text())
    assert document["summary"]["resources"] == 2
    assert sorted(f["owner"] for f in document["resource_findings"]) == [
        "test_workers.py::test_leaves_one_every_other[1]",
        "test_workers.py::test_leaves_one_every_other[3]",
    ]


def test_segment_made_at_import_is_freed_at_the_end(pytester: pytest.Pytester) -> None:
    # Made while the module was collected: no test is blamed, the summary names it, and it is
    # freed before pytest exits.
    pytester.makepyfile(
        test_module_level="""
        from multiprocessing import shared_memory

        SEGMENT = shared_memory.SharedMemory(create=True, size=16)
        open("name", "w").write(SEGMENT.name)

        def test_uses_it():
            SEGMENT.buf[0] = 1
        """
    )
    result = pytester.runpytest_subprocess(*FAST_ARGS, timeout=60)
    result.assert_outcomes(passed=1)
    name = (pytester.path / "name").read_text()
    result.stdout.fnmatch_lines(
        [
            "mpcheck: 1 named resource (shared memory, semaphores) left behind",
            "mpcheck: 1 named resource left at the end of the session (no test is blamed):",
            f"leaked shared memory segment '/{name}': never unlinked",
            "    made at:    test_module_level.py:3 by the test process",
            "    freed by:   mpcheck (unlinked, and taken off the tracker's list)",
        ]
    )
    assert TRACKER_WARNING not in result.stderr.str()
