"""The hot path of the checked locks, in C and in Python, where a record cannot be written, and
the limit on the number of locks a process can use in a test.

One inner pytest run per hot path: what a user sees, in a process of its own (two tests lower its
address-space limit so that the record file cannot grow).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig

import pytest

PURE_PYTHON = "PYTEST_MPCHECK_PURE_PYTHON"


@pytest.fixture(params=["C", "Python"])
def hot_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The inner run uses the C hot path, or the Python one (the variable reaches it)."""
    if request.param == "C":
        if importlib.util.find_spec("pytest_mpcheck.locks._lockrec") is None:
            pytest.skip("the optional C extension was not built")
        if sysconfig.get_config_var("Py_GIL_DISABLED"):
            pytest.skip("a free-threaded Python never uses the C hot path")
        monkeypatch.delenv(PURE_PYTHON, raising=False)
    else:
        monkeypatch.setenv(PURE_PYTHON, "1")
    return str(request.param)


CANNOT_GROW = """\
import resource

import pytest

from pytest_mpcheck import CheckedLock
from pytest_mpcheck.locks import ACCELERATED
from pytest_mpcheck.locks.checked import close_records


@pytest.fixture(autouse=True)
def hot_path():
    assert ACCELERATED is {accelerated}


def fill(lock, uses):
    # Two records a use: 2048 uses fill the first 64 KiB of the record file.
    for _ in range(uses):
        with lock:
            pass


def without_room(action):
    # Room for no new map: the record file cannot grow, nor an anonymous map replace it.
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size * 1024 + 64 * 1024, hard))
    try:
        action()
    except (OSError, MemoryError) as error:
        return error
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return None


def use(lock):
    with lock:
        pass


def test_acquisition_not_recorded(mp_locks):
    lock = mp_locks.Lock("l")
    fill(lock, 2048)
    assert without_room(lambda: use(lock)) is not None
    # Left taken, this process would now wait for itself.
    assert lock.acquire(timeout=5)
    lock.release()


def test_release_not_recorded(mp_locks):
    lock, other = mp_locks.Lock("l"), mp_locks.Lock("other")
    fill(lock, 2047)
    other.acquire()
    lock.acquire()  # the last record that fits: the release's must grow the file
    assert without_room(lock.release) is not None
    other.release()
    assert lock.acquire(timeout=5)
    lock.release()
"""


TOO_MANY = """\


def test_too_many_locks(mp_context, tmp_path):
    # As many checked locks over one semaphore as records allow. Their records go to a directory
    # of their own, which the checker does not replay at teardown (65535 locks: seconds of it).
    directory = str(tmp_path)
    raw = mp_context.Lock()
    try:
        for number in range(65535):
            with CheckedLock(f"lock {number}", "Lock", directory, raw):
                pass
        late = CheckedLock("one too many", "Lock", directory, raw)
        try:
            late.acquire()
        finally:
            assert raw.acquire(False)  # the limit was checked before the semaphore was taken
            raw.release()
    finally:
        close_records(directory)
"""


def test_records_not_written_leave_the_lock_free_and_the_lock_number_limit_says_what_to_do(
    pytester: pytest.Pytester, hot_path: str
) -> None:
    # One inner run: the record that cannot be written (2 tests), and the limit on the number of
    # locks of a process, whose message a user reads.
    source = CANNOT_GROW.format(accelerated=hot_path == "C") + TOO_MANY
    pytester.makepyfile(test_records=source)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2, failed=1, warnings=2)
    # The warning proves that the write failed where it should: growing the file.
    result.stdout.fnmatch_lines(
        ["*MpCheckInternalWarning: mpcheck: the lock checker's records are incomplete*"]
    )
    result.stdout.fnmatch_lines(
        [
            "E *RuntimeError: mpcheck: <CheckedLock Lock 'one too many'> cannot be used: this "
            "process already used 65535 checked locks in this test, as many as the lock "
            "checker's records can tell apart. Use fewer locks: mp_locks.Lock(name) gives the "
            "same lock for the same name.",
        ]
    )
    result.stdout.fnmatch_lines(["FAILED test_records.py::test_too_many_locks - RuntimeError*"])


@pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="needs a free-threaded Python"
)
def test_a_free_threaded_python_keeps_its_gil_off() -> None:
    # The C hot path relies on the GIL: imported, it would turn the GIL back on, with a
    # RuntimeWarning that -W error makes an ImportError of the plugin.
    code = (
        "import sys; from pytest_mpcheck.locks import ACCELERATED; "
        "print(ACCELERATED, sys._is_gil_enabled())"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
