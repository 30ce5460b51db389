"""The lock checker, as users meet it: inner pytest runs with real children and real locks.

One inner run per hot path of the locks (C, what users get, and pure Python) holds every test, to
keep the suite fast: problems that must be found and correct uses that must pass clean. The start
method matters where a checked lock or a module-level object reaches a child (inherited under fork,
pickled or made again by a re-import under spawn and forkserver): those tests run under the three
methods, with the C hot path. Everything else (the record and its replay, the checks, contention,
atomic output) is the same under any method and runs under fork only, the cheapest.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import shutil
import subprocess
import sys
import sysconfig
from typing import Any

import pytest

from pytest_mpcheck import CheckedLock, LockChecker
from tests.sections import section

PURE_PYTHON = "PYTEST_MPCHECK_PURE_PYTHON"


def _no_compiler() -> bool:
    """Whether the optional C extension could not have been built here: no C compiler."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(compiler) is None


def _skip_without_extension() -> None:
    if importlib.util.find_spec("pytest_mpcheck.locks._lockrec") is None and _no_compiler():
        pytest.skip(
            "no C compiler, so the optional extension pytest_mpcheck.locks._lockrec was not built"
        )


@pytest.fixture(params=["C", "Python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make the inner runs use the C hot path or the pure-Python one; the base class to expect.

    The variable reaches the inner pytest process, and through it every child it starts.
    """
    if request.param == "C":
        _skip_without_extension()
        monkeypatch.delenv(PURE_PYTHON, raising=False)
        return "LockCore"
    monkeypatch.setenv(PURE_PYTHON, "1")
    return "_PyLockCore"


#: The start methods of the modules of an inner run that take the run's methods (the others say
#: theirs with a marker), per hot path. Which path a process uses does not depend on the start
#: method, and the findings are made by the same Python code from the same records: the C path
#: (what users get) runs under every method, the pure-Python one under forkserver, where each child
#: chooses its hot path afresh (as under spawn, unlike fork's inherited choice).
IMPLEMENTATION_METHODS = {
    "LockCore": ("fork", "spawn", "forkserver"),  # C
    "_PyLockCore": ("forkserver",),  # pure Python
}


# Added to each inner run, under the run's methods: proves which hot path the test process and its
# children used. Like REIMPORT it imports no pytest, which would cost each child that imports it
# again (spawn, forkserver) a tenth of a second or more.
IMPLEMENTATION = """\
from pytest_mpcheck import CheckedLock


def check_base(lock, base):
    assert type(lock).__mro__[1].__name__ == base
    with lock:
        pass


def test_implementation(mp_locks, mp_spawn):
    assert CheckedLock.__mro__[1].__name__ == "BASE"
    child = mp_spawn(check_base, args=(mp_locks.Lock("implementation"), "BASE"), name="base")
    child.join()
    assert child.exitcode == 0
    mp_locks.assert_acquisitions("implementation", 1)
"""


def site(source: str, marker: str) -> str:
    """``file:line`` of the line of an inner test file that carries ``# marker``."""
    lines = source.splitlines()
    numbers = [n for n, text in enumerate(lines, 1) if text.endswith(f"# {marker}")]
    assert len(numbers) == 1, marker
    return f"test_problems.py:{numbers[0]}"


PROBLEMS = """\
import signal
import time

import pytest

# What is found does not depend on how the children were started: fork, the cheapest.
pytestmark = pytest.mark.mp_start_methods("fork")


def hold_until(lock, acquired, go):
    lock.acquire()  # first-acquires
    acquired.set()
    go.wait(20)
    try:
        lock.release()
    except ValueError:
        pass  # the semaphore was released behind the checked lock's back


def take(lock):
    with lock:  # take
        pass


def take_and_wait(lock, acquired):
    lock.acquire()  # victim-acquires
    acquired.set()
    time.sleep(60)


def release(lock):
    lock.release()  # foreign-release


def nested(first, second):
    with first:  # outer
        with second:  # inner
            pass


def test_two_holders(mp_locks, mp_spawn, mp_context):
    lock = mp_locks.Lock("x")
    acquired, go = mp_context.Event(), mp_context.Event()
    first = mp_spawn(hold_until, args=(lock, acquired, go), name="first")
    assert acquired.wait(20)
    lock._lock.release()  # an uninstrumented release of the raw semaphore
    second = mp_spawn(take, args=(lock,), name="second")
    second.join()
    go.set()
    first.join()


def test_killed_holding(mp_locks, mp_spawn, mp_context):
    acquired = mp_context.Event()
    child = mp_spawn(take_and_wait, args=(mp_locks.Lock("k"), acquired), name="victim")
    assert acquired.wait(20)
    child.kill()
    child.join()
    assert child.exitcode == -signal.SIGKILL


def test_release_not_held(mp_locks, mp_spawn):
    lock = mp_locks.Lock("r")
    lock.acquire()  # test-acquires
    mp_spawn(release, args=(lock,), name="releaser").join()


def test_inversion(mp_locks, mp_spawn):
    a, b = mp_locks.Lock("a"), mp_locks.Lock("b")
    mp_spawn(nested, args=(a, b), name="ab").join()
    mp_spawn(nested, args=(b, a), name="ba").join()


def hold_then_take(first, second, mine, theirs):
    with first:
        mine.set()
        theirs.wait(20)
        # The other process holds `second` and waits for `first`: a deadlock, cut short here.
        if second.acquire(timeout=0.3):  # deadlock-wait
            second.release()


def test_deadlock_cut_short(mp_locks, mp_spawn, mp_context):
    a, b = mp_locks.Lock("a"), mp_locks.Lock("b")
    a_held, b_held = mp_context.Event(), mp_context.Event()
    first = mp_spawn(hold_then_take, args=(a, b, a_held, b_held), name="holds-a")
    second = mp_spawn(hold_then_take, args=(b, a, b_held, a_held), name="holds-b")
    first.join()
    second.join()


def test_inversion_asserted_on_demand(mp_locks, mp_spawn):
    a, b = mp_locks.Lock("a"), mp_locks.Lock("b")
    mp_spawn(nested, args=(a, b), name="ab").join()
    mp_locks.check()  # one order only, so far
    mp_spawn(nested, args=(b, a), name="ba").join()
    with pytest.raises(AssertionError) as raised:
        mp_locks.check()
    # Seen by the test: not reported again at teardown.
    lines = str(raised.value).splitlines()
    assert lines[0].startswith("mpcheck: test_problems.py::test_inversion_asserted_on_demand[")
    assert lines[0].endswith("]: 1 lock problem")
    assert lines[2].startswith("lock-order inversion: locks 'a', 'b' are taken in opposite")
    with pytest.raises(AssertionError, match="lock-order inversion"):
        mp_locks.assert_ordered()


def block_with_gap(lock, printed, go):
    with lock:  # block
        print("A1")
        printed.set()
        go.wait(20)
        print("A2")


def intrude(printed, go):
    printed.wait(20)
    print("B1")
    go.set()


def unprotected_then_locked(lock):
    print("before 1")
    print("before 2")
    with lock:
        print("inside")


def test_atomic_intrusion(mp_locks, mp_spawn, mp_output, mp_context):
    lock = mp_locks.Lock("out")
    printed, go = mp_context.Event(), mp_context.Event()
    holder = mp_spawn(block_with_gap, args=(lock, printed, go), name="holder")
    intruder = mp_spawn(intrude, args=(printed, go), name="intruder")
    holder.join()
    intruder.join()
    mp_output.assert_atomic(lock)


def test_atomic_unprotected(mp_locks, mp_spawn, mp_output):
    lock = mp_locks.Lock("out")
    mp_spawn(unprotected_then_locked, args=(lock,), name="writer").join()
    mp_output.assert_atomic(lock)
"""


# The tests where the start method matters, under the run's three methods (C hot path only): a
# checked lock that reaches a child or a pool's workers (inherited under fork, pickled under spawn
# and forkserver), and module-level objects that a re-import of this module (spawn, forkserver)
# makes again. No pytest import: each child under spawn and forkserver imports this module again.
REIMPORT = """\
import multiprocessing

MODULE_LOCK = multiprocessing.Lock()
COUNTER = multiprocessing.Value("i", 0)


def take(lock):
    with lock:
        pass


def own_lock(checker):
    with checker.Lock("shared"):
        pass


def test_child_makes_own_lock(mp_locks, mp_spawn):
    mp_spawn(take, args=(mp_locks.Lock("shared"),), name="passed").join()
    mp_spawn(own_lock, args=(mp_locks,), name="own").join()


def use_module_lock(n):
    with MODULE_LOCK:
        print("line", n)


def test_module_level_lock(mp_spawn):
    children = [mp_spawn(use_module_lock, args=(n,), name=f"child-{n}") for n in range(2)]
    for child in children:
        child.join()


def count():
    with COUNTER.get_lock():
        COUNTER.value += 1


def test_module_level_value(mp_spawn):
    mp_spawn(count, name="counter").join()


def pool_init(lock):
    global POOL_LOCK
    POOL_LOCK = lock  # the lock passed to each worker, kept for its tasks


def pool_task(n):
    with POOL_LOCK:
        return n * n


def test_pool_with_a_checked_lock(mp_locks, mp_pool):
    lock = mp_locks.Lock("pool")
    pool = mp_pool(2, initializer=pool_init, initargs=(lock,))
    assert pool.map(pool_task, range(6)) == [n * n for n in range(6)]
    mp_locks.assert_acquisitions("pool", 6)
    mp_locks.assert_exclusive("pool")
"""


CLEAN = """\
import multiprocessing
import time

import pytest

from pytest_mpcheck.locks.records import _INITIAL_SIZE, RECORD_SIZE

# The record and the checks do not depend on how the children were started: fork, the cheapest.
pytestmark = pytest.mark.mp_start_methods("fork")


def print_block(lock, item):
    with lock:  # print-block
        for _ in range(5):
            print(item)


def reentrant(rlock):
    with rlock:
        with rlock:
            print("inside twice")


def ordered(a, b):
    with a:
        with b:
            pass


def contend(lock):
    with lock:
        pass


def test_shared_lock(mp_locks, mp_spawn, mp_output):
    lock = mp_locks.Lock("out")
    items = ("Hi", "Hello", "Bye")
    children = [mp_spawn(print_block, args=(lock, item), name=item) for item in items]
    for child in children:
        child.join()
    mp_output.assert_atomic(lock)
    mp_output.assert_grouped()
    mp_locks.assert_exclusive("out")
    mp_locks.assert_released("out")
    stats = mp_locks.stats("out")
    assert stats.acquisitions == 3
    assert sorted(stats.by_process) == sorted(f"{c.name} (pid {c.pid})" for c in children)
    assert list(stats.by_site) == ["PRINT_SITE"]
    assert [len(lines) for lines in mp_output.by_process().values()] == [5, 5, 5]


def test_rlock_taken_twice(mp_locks, mp_spawn):
    rlock = mp_locks.RLock("r")
    mp_spawn(reentrant, args=(rlock,)).join()
    with rlock:
        with rlock:
            pass
    mp_locks.assert_acquisitions("r", 2)
    mp_locks.assert_released()
    mp_locks.check()


def test_nested_in_one_order(mp_locks, mp_spawn):
    a, b = mp_locks.Lock("a"), mp_locks.Lock("b")
    for _ in range(2):
        mp_spawn(ordered, args=(a, b)).join()
    ordered(a, b)
    mp_locks.assert_ordered()


def try_in_reverse(a, b):
    with b:
        if a.acquire(False):  # a non-blocking try cannot deadlock: no lock-order edge
            a.release()


def test_trylock_in_reverse_and_a_condition(mp_locks, mp_spawn, mp_context):
    a, b = mp_locks.Lock("a"), mp_locks.Lock("b")
    mp_spawn(ordered, args=(a, b)).join()
    mp_spawn(try_in_reverse, args=(a, b)).join()
    mp_locks.assert_ordered()
    condition = mp_context.Condition(mp_locks.RLock("c"))
    with condition:
        assert not condition.wait(0.01)  # condition-wait: releases the lock, then takes it again
    mp_locks.assert_acquisitions("c", 2)
    # The acquisition inside Condition.wait is named by the line in the test that called it.
    assert list(mp_locks.stats("c").by_site) == ["WITH_SITE", "WAIT_SITE"]


def test_contention(mp_locks, mp_spawn):
    lock = mp_locks.Lock("busy")
    with lock:
        child = mp_spawn(contend, args=(lock,), name="waiter")
        deadline = time.monotonic() + 30
        while not mp_locks.waiting("busy") and time.monotonic() < deadline:
            time.sleep(0.002)
        assert [p.name for p in mp_locks.waiting("busy")] == ["waiter"]
        assert [p.name for p in mp_locks.holders("busy")] == ["MainProcess"]
    child.join()
    mp_locks.assert_contended("busy")
    stats = mp_locks.stats("busy")
    assert (stats.acquisitions, stats.contended) == (2, 1)
    assert stats.max_wait > 0 and stats.by_process[f"waiter (pid {child.pid})"].contended == 1
    with pytest.raises(AssertionError, match=r"1 of 2 acquisitions waited"):
        mp_locks.assert_no_contention("busy")


def many_threads(lock, threads, pairs):
    import threading

    def work():
        for _ in range(pairs):
            with lock:
                pass

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)


THREADS, PAIRS = 4, 2500


def test_threads_of_one_process(mp_locks):
    import threading

    rlock, lock = mp_locks.RLock("owned"), mp_locks.Lock("handed-over")
    refused = []

    def not_the_owner():
        try:
            rlock.release()  # an RLock is its owner thread's: multiprocessing refuses, nothing done
        except AssertionError as error:
            refused.append(error)
        lock.release()  # a Lock is any thread's to release

    with rlock:
        lock.acquire()
        thread = threading.Thread(target=not_the_owner)
        thread.start()
        thread.join()
        assert refused
        assert [p.name for p in mp_locks.holders("owned")] == ["MainProcess"]
        assert mp_locks.holders("handed-over") == []
    assert mp_locks.holders("owned") == []
    mp_locks.check()


def test_threads_of_children_and_a_growing_record(mp_locks, mp_spawn):
    # 4 threads x 2500 pairs: 20000 records (two a pair), over four times what the first mapping
    # of the record file holds (4096), so that it grows three times, written by threads that
    # take record slots at the same time. The teardown checks the record read back.
    assert 2 * THREADS * PAIRS > 4 * (_INITIAL_SIZE // RECORD_SIZE)
    lock = mp_locks.Lock("threads")
    mp_spawn(many_threads, args=(lock, THREADS, PAIRS)).join()
    mp_locks.assert_acquisitions("threads", THREADS * PAIRS)


@pytest.mark.mp_start_methods("spawn")
def test_uncontended_and_bad_input(mp_locks, mp_output):
    lock = mp_locks.Lock("calm")
    for _ in range(3):
        with lock:
            pass
    mp_locks.assert_no_contention("calm")
    mp_locks.assert_acquisitions("calm", 3)
    assert mp_locks.Lock("calm") is lock
    with pytest.raises(pytest.fail.Exception) as failed:
        mp_locks.stats("nope")
    assert str(failed.value) == (
        "mp_locks.stats('nope'): no lock named 'nope' in this test. Known locks: 'calm'"
    )
    with pytest.raises(pytest.fail.Exception) as failed:
        mp_locks.Lock(3)
    assert str(failed.value) == (
        "mp_locks.Lock(name): the lock name must be a non-empty str without NUL characters, "
        "got 3 (int)"
    )
    with pytest.raises(pytest.fail.Exception) as failed:
        mp_locks.assert_contended("calm", at_least="2")
    assert str(failed.value) == (
        "mp_locks.assert_contended('calm', at_least='2'): at_least must be an int >= 1, got '2'"
    )
    with pytest.raises(pytest.fail.Exception) as failed:
        mp_locks.RLock("calm")
    assert "the name is already used by a Lock" in str(failed.value)
    with pytest.raises(pytest.fail.Exception) as failed:
        mp_output.assert_atomic(multiprocessing.Lock())
    assert "is not a checked lock; pass a lock made by mp_locks.Lock(name)" in str(failed.value)
"""

#: The tests of REIMPORT.
REIMPORT_TESTS = (
    "test_child_makes_own_lock",
    "test_module_level_lock",
    "test_module_level_value",
    "test_pool_with_a_checked_lock",
)

#: The tests of CLEAN; each must pass, with no lock problem.
CLEAN_TESTS = (
    "test_shared_lock[fork]",
    "test_rlock_taken_twice[fork]",
    "test_nested_in_one_order[fork]",
    "test_trylock_in_reverse_and_a_condition[fork]",
    "test_contention[fork]",
    "test_threads_of_children_and_a_growing_record[fork]",
    "test_threads_of_one_process[fork]",
    "test_uncontended_and_bad_input[spawn]",
)


def _clean_site(marker: str) -> str:
    numbers = [n for n, text in enumerate(CLEAN.splitlines(), 1) if marker in text]
    assert len(numbers) == 1, marker
    return f"test_clean.py:{numbers[0]}"


def test_problems_found_and_clean_uses_pass(pytester: pytest.Pytester, implementation: str) -> None:
    """Every finding, under each start method where it applies, with the lines a user reads; and
    correct uses of locks that pass with no finding. With the C hot path of the locks (every
    module) and with the pure-Python one (all but REIMPORT, whose findings the hot path plays no
    part in): one inner run each."""
    clean = CLEAN.replace("WITH_SITE", _clean_site("    with condition:"))
    clean = clean.replace("WAIT_SITE", _clean_site("# condition-wait"))
    files = {
        "test_problems": PROBLEMS,
        "test_clean": clean.replace("PRINT_SITE", _clean_site("# print-block")),
        "test_implementation": IMPLEMENTATION.replace("BASE", implementation),
    }
    accelerated = implementation == "LockCore"
    if accelerated:
        files["test_reimport"] = REIMPORT
    pytester.makepyfile(**files)
    methods = IMPLEMENTATION_METHODS[implementation]
    result = pytester.runpytest_subprocess(
        f"--mp-start-methods={','.join(methods)}", "-rA", timeout=120
    )
    # Calls pass and the checker fails the teardown; the two assert_atomic tests fail in the call.
    # test_problems (fork): 6 passed, 2 failed, 5 errors. test_clean: 8 passed. test_implementation
    # (the run's methods): 1 passed each. test_reimport (C only, the run's three methods): 4 passed
    # each, and under spawn and forkserver 3 errors each: the lock a child made, and the lock and
    # the Value made again by a re-import.
    reimporting = ("spawn", "forkserver") if accelerated else ()
    result.assert_outcomes(
        passed=6 + 8 + len(methods) + (4 * len(methods) if accelerated else 0),
        failed=2,
        errors=5 + 3 * len(reimporting),
    )
    inner, outer = site(PROBLEMS, "inner"), site(PROBLEMS, "outer")
    deadlock = site(PROBLEMS, "deadlock-wait")
    first, take = site(PROBLEMS, "first-acquires"), site(PROBLEMS, "take")
    victim, block = site(PROBLEMS, "victim-acquires"), site(PROBLEMS, "block")
    foreign, test_acquires = site(PROBLEMS, "foreign-release"), site(PROBLEMS, "test-acquires")
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_two_holders[[]fork[]]*",
            "mpcheck: test_problems.py::test_two_holders[[]fork[]]: 1 lock problem",
            "",
            "two holders at once: lock 'x' was held by first (pid *) and second (pid *) at "
            "the same time",
            f"    first (pid *) acquired at {first} at +*s and still held it",
            f"    when second (pid *) acquired at {take} at +*s",
            "  How to fix: every acquire and release must go through the checked lock*",
            "*ERROR at teardown of test_killed_holding[[]fork[]]*",
            "mpcheck: test_problems.py::test_killed_holding[[]fork[]]: 1 lock problem",
            "",
            "held at exit: victim (pid *) ended holding lock 'k' (acquired at "
            f"{victim} at +*s); any other process that takes it waits forever; it was ended by "
            "SIGKILL (kill(), or the kernel's OOM killer) while it held the lock: a process ended "
            "from outside never releases what it holds, so the lock can no longer be trusted",
            "  How to fix: release the lock in a `finally:` block*",
            "*ERROR at teardown of test_release_not_held[[]fork[]]*",
            "release of a lock not held: releaser (pid *) released lock 'r' at "
            f"{foreign} at +*s, but it did not hold it: MainProcess (pid *) held it "
            f"(acquired at {test_acquires} at +*s)",
            "  How to fix: release a lock only in the process that acquired it*",
            "*ERROR at teardown of test_inversion[[]fork[]]*",
            "lock-order inversion: locks 'a', 'b' are taken in opposite orders (a deadlock "
            "waiting to happen, whether or not this run deadlocked)",
            f"    ab (pid *) took 'b' at {inner} while holding 'a' (taken at {outer})",
            f"    ba (pid *) took 'a' at {inner} while holding 'b' (taken at {outer})",
            "  How to fix: take these locks in one global order everywhere.*",
            "*ERROR at teardown of test_deadlock_cut_short[[]fork[]]*",
            "lock-order inversion: locks 'a', 'b' are taken in opposite orders*",
            # "waited for" (the other held it), or "took" when a very slow machine made
            # the other give up first: the inversion is found either way.
            f"    holds-a (pid *) * 'b' at {deadlock} while holding 'a' (taken at *)",
            f"    holds-b (pid *) * 'a' at {deadlock} while holding 'b' (taken at *)",
        ]
    )
    for method in reimporting:
        result.stdout.fnmatch_lines(
            [
                f"*ERROR at teardown of test_child_makes_own_lock[[]{method}[]]*",
                "lock not shared: lock 'shared' is not shared: 2 processes use a lock of this "
                "name, but they hold 2 different semaphores, so none of them excludes another",
                "    semaphore 1 (made by the test in MainProcess (pid *), /mp-*): used by "
                "passed (pid *)",
                "    semaphore 2 (made in a child, /mp-*): used by own (pid *)",
                "  How to fix: create the lock once, in the test, and pass it to each child as an "
                "argument*",
                f"*ERROR at teardown of test_module_level_lock[[]{method}[]]*",
                "'child-0' (pid *):",
                "    lock not shared: the module-level Lock 'MODULE_LOCK' of test_reimport.py is "
                f"not the test's lock in this child: under the '{method}' start method the child "
                "imported 'test_reimport' again, which made a new Lock*; it excludes "
                "neither the test process nor the other children, so their critical sections can "
                "run at the same time.",
                "    How to fix: create the lock in the test and pass it to each child as an "
                "argument, e.g. mp_spawn(target, args=(MODULE_LOCK, ...)) (or "
                "mp_locks.Lock('MODULE_LOCK') to have it checked); for a Pool, pass it with "
                "initializer=..., initargs=(MODULE_LOCK,).",
                f"*ERROR at teardown of test_module_level_value[[]{method}[]]*",
                "    Value not shared: the module-level Value 'COUNTER' of test_reimport.py is not "
                f"the test's Value in this child: under the '{method}' start method the child "
                "imported 'test_reimport' again, which made a new Value; what one process puts "
                "in it, the others never see.",
                "    How to fix: create the Value in the test and pass it to each child as an "
                "argument, e.g. mp_spawn(target, args=(COUNTER, ...)); for a Pool, pass it with "
                "initializer=..., initargs=(COUNTER,).",
            ]
        )
    result.stdout.no_fnmatch_line("*ERROR at teardown of test_inversion_asserted_on_demand*")
    if accelerated:
        # Under fork the module-level lock and Value are inherited, so they are shared, and the
        # child's mp_locks.Lock("shared") is the test's own: no finding. A checked lock reaches
        # a pool's workers under every method.
        result.stdout.fnmatch_lines_random(
            [
                f"PASSED test_reimport.py::{test}[[]{m}[]]"
                for test in REIMPORT_TESTS
                for m in methods
            ]
        )
        for test in REIMPORT_TESTS:
            result.stdout.no_fnmatch_line(f"*ERROR*{test}[[]fork[]]*")
        result.stdout.no_fnmatch_line("*ERROR*test_pool_with_a_checked_lock*")
    # The two failures of assert_atomic.
    result.stdout.fnmatch_lines(
        [
            "*_ test_atomic_intrusion[[]fork[]] _*",
            "E*AssertionError: mp_output.assert_atomic('out'): the output is not atomic under "
            "the lock",
            "E*line 2 was written by intruder (pid *) while holder (pid *) held lock 'out' "
            f"({block}): another process wrote into its critical section",
            "E*the lines written by holder (pid *) during one hold of lock 'out' "
            f"({block}) are not contiguous: line 3 comes after line 2 of intruder (pid *)",
            "E*1  holder (*)*hold  1  out| A1",
            "E*>>    2  intruder (*)*-  out| B1   <-- written while holder (pid *) held 'out'",
            "E*>>    3  holder (*)*hold  1  out| A2   <-- block broken: this hold of 'out' wrote "
            "before line 2 (intruder)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_atomic_unprotected[[]fork[]] _*",
            "E*line 1 was written by writer (pid *) while it did not hold lock 'out': this "
            "output is not protected by the lock",
            "E*line 2 was written by writer (pid *) while it did not hold lock 'out'*",
            "E*>>    1  writer (*)*-  out| before 1   <-- not under 'out'",
            "E*>>    2  writer (*)*-  out| before 2   <-- not under 'out'",
            "E*3  writer (*)*hold  1  out| inside",
        ]
    )
    # The clean uses: each passed, and none had a lock problem.
    result.stdout.fnmatch_lines_random([f"PASSED test_clean.py::{test}" for test in CLEAN_TESTS])
    result.stdout.no_fnmatch_line("*test_clean.py::*lock problem*")
    result.stdout.no_fnmatch_line("ERROR test_clean.py::*")
    # The terminal summary names the most contended locks of the session (which ones depends on
    # the timing of the threads and pool workers; test_locks_xdist.py checks the exact lines).
    result.stdout.fnmatch_lines(
        [
            "mpcheck: most contended locks:",
            "  '*' in test_clean.py::test_*[[]*[]]: * of * acquisitions waited, "
            "wait total * ms max * ms",
        ]
    )


def _use_lock(lock: CheckedLock) -> None:
    with lock:
        pass


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_lock_outlives_its_record(method: str) -> None:
    """A child that uses a checked lock after the test's record is gone still gets a lock."""
    context: Any = multiprocessing.get_context(method)
    checker = LockChecker(context)
    lock = checker.Lock("late")
    _use_lock(lock)
    checker.finish()  # the end of the test: the record directory is removed
    shutil.rmtree(checker.directory, ignore_errors=True)
    child = context.Process(target=_use_lock, args=(lock,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    _use_lock(lock)  # and in this process, whose record was closed


def _active_implementation(pure_python: str | None) -> list[str]:
    """``ACCELERATED`` and the base of ``CheckedLock`` in a new interpreter."""
    env = {k: v for k, v in os.environ.items() if k != PURE_PYTHON}
    if pure_python is not None:
        env[PURE_PYTHON] = pure_python
    code = (
        "from pytest_mpcheck import CheckedLock, locks; base = CheckedLock.__mro__[1]; "
        "print(locks.ACCELERATED, base.__module__, base.__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_accelerator_is_active() -> None:
    """The dev install built the C hot path and uses it, unless told to use the Python one."""
    _skip_without_extension()
    assert _active_implementation(None) == ["True", "pytest_mpcheck.locks._lockrec", "LockCore"]
    assert _active_implementation("0") == ["True", "pytest_mpcheck.locks._lockrec", "LockCore"]
    assert _active_implementation("1") == ["False", "pytest_mpcheck.locks.checked", "_PyLockCore"]


def test_marker_relaxes_lock_findings_and_the_hook_sees_them(pytester: pytest.Pytester) -> None:
    # The test's mode (marker or --mp-check) applies to what the lock checker finds as it does to
    # leaked processes, and to a module-level lock that an mp_spawn child made again, whatever
    # its check=; other plugins see every lock finding through their own hook.
    pytester.makeconftest(
        """
        def pytest_mpcheck_lock_finding(config, item, finding):
            with open("seen", "a") as seen:
                seen.write(f"{item.name} {finding.kind} {finding.lock}\\n")
        """
    )
    pytester.makepyfile(
        test_modes="""
        import multiprocessing

        import pytest

        lck = multiprocessing.Lock()  # made again in each spawn child: shared with nobody

        def release(lock):
            lock.release()

        def print_locked(item):
            with lck:
                print(item)

        def release_anothers(mp_locks, mp_spawn):
            lock = mp_locks.Lock("r")
            lock.acquire()
            mp_spawn(release, args=(lock,), name="releaser").join()

        def test_fails(mp_locks, mp_spawn):
            release_anothers(mp_locks, mp_spawn)

        @pytest.mark.mp_check("warn")
        def test_warns(mp_locks, mp_spawn):
            release_anothers(mp_locks, mp_spawn)

        @pytest.mark.mp_check("off")
        def test_quiet(mp_locks, mp_spawn):
            release_anothers(mp_locks, mp_spawn)

        @pytest.mark.mp_start_methods("spawn")
        def test_module_lock_fails(mp_spawn):
            mp_spawn(print_locked, args=("Hi",), check=False).join()

        @pytest.mark.mp_start_methods("spawn")
        @pytest.mark.mp_check("warn")
        def test_module_lock_warns(mp_spawn):
            mp_spawn(print_locked, args=("Hi",)).join()

        @pytest.mark.mp_start_methods("spawn")
        @pytest.mark.mp_check("off")
        def test_module_lock_quiet(mp_spawn):
            mp_spawn(print_locked, args=("Hi",), check=False).join()
        """
    )
    result = pytester.runpytest_subprocess("--mp-start-methods=fork", timeout=120)
    result.assert_outcomes(passed=6, errors=2, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_fails[[]fork[]]*",
            "release of a lock not held: releaser (pid *) released lock 'r' at test_modes.py:8*",
            "*test_modes.py:22: MpCheckWarning: mpcheck: test_modes.py::test_warns[[]fork[]]: "
            "1 lock problem",
            "  release of a lock not held: releaser (pid *) released lock 'r' at test_modes.py:8*",
        ]
    )
    assert "test_quiet" not in result.stdout.str()
    # The child exited 0: no "child process failed", and no check=False advice, which would not
    # help; warned once (not also as a plain child), and nothing in mode off.
    not_shared = (
        "lock not shared: the module-level Lock 'lck' of test_modes.py is not the test's lock in "
        "this child: under the 'spawn' start method the child imported 'test_modes' again, "
        "which made a new Lock; it excludes neither the test process nor the other children, so "
        "their critical sections can run at the same time."
    )
    fix = (
        "How to fix: create the lock in the test and pass it to each child as an argument, e.g. "
        "mp_spawn(target, args=(lck, ...)) (or mp_locks.Lock('lck') to have it checked); for a "
        "Pool, pass it with initializer=..., initargs=(lck,)."
    )
    failed = section(result, "ERROR at teardown of test_module_lock_fails[spawn]")
    failed.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_module_lock_fails[[]spawn[]] _*",
            "mpcheck: test_modes.py::test_module_lock_fails[[]spawn[]]: found in a child before "
            "its target ran",
            "",
            "'Process-1' (pid *):",
            f"    {not_shared}",
            f"    {fix}",
        ],
        consecutive=True,
    )
    failed.no_fnmatch_line("*child process failed*")
    failed.no_fnmatch_line("*check=False*")
    result.stdout.fnmatch_lines(
        [
            "*test_modes.py:*: MpCheckWarning: mpcheck: test_modes.py::test_module_lock_warns"
            "[[]spawn[]]: found in a child before its target ran",
            "  ",
            "  'Process-1' (pid *):",
            f"      {not_shared}",
            f"      {fix}",
        ],
        consecutive=True,
    )
    assert "test_module_lock_quiet" not in result.stdout.str()
    seen = (pytester.path / "seen").read_text().splitlines()
    assert sorted(seen) == [
        f"{name}[fork] release of a lock not held r"
        for name in ("test_fails", "test_quiet", "test_warns")
    ]
