"""What the test modules share: the options of a fast inner run, bounded waits, and inner runs
with py-spy and without."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
import time
import venv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_mpcheck._os.stacks import pyspy_path

pytest_plugins = ["pytester"]

# Bytecode is written, as on a user's machine: with PYTHONDONTWRITEBYTECODE (set in some CI
# images) each of the suite's ~170 inner pytest runs, and each spawned child, would compile the
# plugin's modules again (some 0.1 s of CPU per inner run).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

#: Options for an inner ``runpytest_subprocess``: no cache files in the inner project, and a
#: short grace between SIGTERM and SIGKILL (a child that dies at SIGTERM is not slowed by it).
FAST_ARGS = ("-p", "no:cacheprovider", "--mp-kill-grace=0.5")

#: As :data:`FAST_ARGS`, with every warning of the inner run an error, but one of CPython's own:
#: on 3.12 and 3.13 before 3.13.7, a semaphore that the garbage collector finalizes while the
#: resource tracker's lock is held warns "ResourceTracker called reentrantly", now and then,
#: whatever the test does (python/cpython#131788); as an error, it fails a random inner test.
STRICT_ARGS = (
    *FAST_ARGS,
    "-W",
    "error",
    "-W",
    "ignore:ResourceTracker called reentrantly:UserWarning",
)


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    interval: float = 0.02,
    message: str | None = None,
) -> bool:
    """Call ``predicate`` every ``interval`` seconds until it is true, for at most ``timeout``.

    Returns ``True`` once it held. When it never did: returns ``False`` if no ``message`` was
    given (the caller asserts something that says more), else raises ``AssertionError`` with
    ``message`` and how long it waited.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if message is None:
        return False
    raise AssertionError(f"{message} (waited {timeout:g}s)")


#: Held by each test that asks the kernel for a given pid through ``ns_last_pid``: two such tests
#: at once, in two xdist workers (or two runs of the suite), would each write their own wish
#: between the other's write and fork, and skip after losing 50 times in a row.
PID_CHOICE_LOCK = os.path.join(tempfile.gettempdir(), "pytest-mpcheck-tests-ns_last_pid.lock")


@pytest.fixture
def choosing_pids() -> Iterator[None]:
    """One test at a time asks the kernel for given pids (see :data:`PID_CHOICE_LOCK`). Waits at
    most 300 s (each holder's inner run is bounded) and then goes on unserialized."""
    with open(PID_CHOICE_LOCK, "a") as lock:
        wait_until(lambda: _try_lock(lock.fileno()), timeout=300, interval=0.05)
        yield  # closing the file releases the lock


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def process_gone(pid: int, created: float) -> bool:
    """Whether the process that had ``pid`` and ``created`` (its create time) is gone: the pid
    may be another process's already (pid_max is 32768 on this machine, and the suite and its
    inner runs start thousands of processes, so a pid comes round again within minutes)."""
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() - created) > 0.01
    except psutil.NoSuchProcess:
        return True


def _python_without_pyspy(root: Path) -> str:
    """An interpreter with this one's packages, beside which there is no py-spy.

    ``stacks.pyspy_path`` looks on ``PATH`` and beside ``sys.executable`` (a virtual environment's
    ``bin``): a second environment whose ``lib`` is this one's has every package but not the
    ``py-spy`` program.
    """
    if sys.prefix == sys.base_prefix:
        venv.create(root, system_site_packages=True, symlinks=True)
    else:
        (root / "bin").mkdir()
        shutil.copy(Path(sys.prefix, "pyvenv.cfg"), root)
        (root / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
        (root / "lib").symlink_to(Path(sys.prefix, "lib"))
    return str(root / "bin" / "python")


@dataclass(frozen=True)
class InnerRun:
    """Runs the inner session of a test, with py-spy to be found or not."""

    pytester: pytest.Pytester
    pyspy: bool
    """Whether the inner session finds py-spy."""
    python: str

    def __call__(self, *args: str, timeout: float) -> pytest.RunResult:
        """As ``pytester.runpytest_subprocess``, under :attr:`python`."""
        basetemp = tempfile.mkdtemp(prefix="runpytest-", dir=self.pytester.path)
        return self.pytester.run(
            self.python, "-mpytest", f"--basetemp={basetemp}", *args, timeout=timeout
        )


#: Values for the ``inner`` fixture (``indirect=True``): py-spy found by the inner session, and not.
WITH_PYSPY = "with-py-spy"
WITHOUT_PYSPY = "without-py-spy"


@pytest.fixture
def inner(
    request: pytest.FixtureRequest,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> InnerRun:
    """The inner run of a test whose report differs with py-spy: parametrize it indirectly with
    :data:`WITH_PYSPY` (skipped where py-spy is not installed) and :data:`WITHOUT_PYSPY`."""
    if request.param == WITH_PYSPY:
        if pyspy_path() is None:
            pytest.skip("py-spy is not installed (pip install py-spy): its branch cannot run")
        return InnerRun(pytester, pyspy=True, python=sys.executable)
    assert request.param == WITHOUT_PYSPY, request.param
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep) if not _has_pyspy(d)]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    python = _python_without_pyspy(tmp_path_factory.mktemp("without-py-spy"))
    return InnerRun(pytester, pyspy=False, python=python)


def _has_pyspy(directory: str) -> bool:
    return os.access(os.path.join(directory or ".", "py-spy"), os.X_OK)
