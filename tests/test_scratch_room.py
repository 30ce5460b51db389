"""A full ``/dev/shm`` (the plugin's scratch space) never kills pytest nor fails a test.

Each inner run gets a small tmpfs of its own over ``/dev/shm`` (and over the temporary directory)
in a private mount namespace (``unshare -m``): root only; skipped elsewhere.
"""

from __future__ import annotations

import functools
import shlex
import subprocess
import sys
import textwrap

import pytest


@functools.lru_cache(maxsize=1)
def _can_mount() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k mpcheck /dev/shm"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _fill(directory: str, leave: int) -> str:
    """Shell lines that fill the tmpfs of ``directory`` but ``leave`` bytes."""
    filler = shlex.quote(f"{directory}/filler")
    return f"dd if=/dev/zero of={filler} bs=4k 2>/dev/null || true\ntruncate -s -{leave} {filler}\n"


def run_in_small_shm(
    pytester: pytest.Pytester, size: str, *args: str, leave: int | None = None, tmp: str = ""
) -> pytest.RunResult:
    """Run pytest with a tmpfs of ``size`` as ``/dev/shm``, filled but ``leave`` bytes;
    ``tmp``: the size of a nearly full tmpfs that is the temporary directory, too."""
    if not _can_mount():
        pytest.skip("needs root and unshare -m to mount a small tmpfs over /dev/shm")
    lines = ["set -e", f"mount -t tmpfs -o size={size} mpcheck /dev/shm"]
    if leave is not None:
        lines.append(_fill("/dev/shm", leave))
    if tmp:
        lines += [
            "mkdir -p small-tmp",
            f"mount -t tmpfs -o size={tmp} mpcheck small-tmp",
            _fill("small-tmp", 4096),
            'export TMPDIR="$PWD/small-tmp"',
        ]
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    lines.append("exec " + shlex.join(command))
    return pytester.run("unshare", "-m", "sh", "-c", "\n".join(lines), timeout=120)


USES_LOCKS_AND_SPAWN = textwrap.dedent(
    """
    def worker(lock):
        for _ in range(3000):
            with lock:
                pass
        return "done"

    def test_locks(mp_locks, mp_spawn):
        lock = mp_locks.Lock("a")
        for _ in range(5000):
            with lock:
                pass
        child = mp_spawn(worker, args=(lock,))
        assert child.result == "done"
        assert mp_locks.stats("a").acquisitions == 8000

    def test_spawn(mp_spawn):
        assert mp_spawn(sum, args=([1, 2],)).result == 3
    """
)


def test_one_free_page_in_dev_shm(pytester: pytest.Pytester) -> None:
    # The lock records were a sparse memory-mapped file: the first write past the one free page
    # was a SIGBUS, and the whole run was lost. A /dev/shm without room is passed over.
    pytester.makepyfile(USES_LOCKS_AND_SPAWN)
    result = run_in_small_shm(pytester, "1m", "-p", "no:randomly", leave=4096)
    result.assert_outcomes(passed=2)
    assert result.ret == 0


FILLS_DEV_SHM = textwrap.dedent(
    """
    import os

    def fill_dev_shm():
        # What a test that uses much shared memory does: /dev/shm is full but a page.
        fd = os.open("/dev/shm/test-data", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, bytes(1 << 16))
        except OSError:
            pass
        os.ftruncate(fd, os.fstat(fd).st_size - 4096)
        os.close(fd)

    def worker(lock, hold):
        for _ in range(3000):
            with lock:
                pass
        if hold:
            lock.acquire()
            os._exit(0)
        return "done"

    def test_filled_during_the_test(mp_locks, mp_spawn):
        lock = mp_locks.Lock("a")
        with lock:
            pass
        fill_dev_shm()
        for _ in range(5000):
            with lock:
                pass
        child = mp_spawn(worker, args=(lock, False))
        assert child.result == "done"
        assert mp_locks.stats("a").acquisitions == 8001

    def test_finding_after_the_room_ran_out(mp_locks, mp_spawn):
        lock = mp_locks.Lock("b")
        fill_dev_shm()
        mp_spawn(worker, args=(lock, True)).join()
    """
)


def test_dev_shm_filled_during_a_test(pytester: pytest.Pytester) -> None:
    # Records and results that find no room in /dev/shm move to the temporary directory: the
    # figures are whole and a real finding is still found.
    pytester.makepyfile(FILLS_DEV_SHM)
    result = run_in_small_shm(pytester, "16m", "-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)  # the second passes, and errors at teardown
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_finding_after_the_room_ran_out*",
            "*held at exit*",
        ]
    )
    result.stdout.no_fnmatch_line("*Bus error*")
    result.stdout.no_fnmatch_line("*No space left on device*")


def test_no_room_anywhere(pytester: pytest.Pytester) -> None:
    # Neither /dev/shm nor the temporary directory has room: the lock checker says it could not
    # check, and the test keeps its outcome.
    pytester.makepyfile(
        """
        def test_locks(mp_locks):
            lock = mp_locks.Lock("a")
            for _ in range(10):
                with lock:
                    pass
        """
    )
    result = run_in_small_shm(pytester, "1m", "-p", "no:randomly", leave=4096, tmp="1m")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*MpCheckInternalWarning: mpcheck: the lock checker's records are incomplete: "
            "process * found no room for them in * nor in the temporary directory, so this "
            "test's locks were not checked.*",
        ]
    )
