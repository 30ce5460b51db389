"""Which line of the user's code a start record names: the frames' files sorted into Python's and
the plugin's (passed over), installed packages' and the user's. No process is started."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from pytest_mpcheck._os import callsite

#: A Python without a virtual environment: its site-packages lies inside its library.
STDLIB = "/py/lib/python3.11/"
PACKAGES = "/py/lib/python3.11/site-packages/"
#: This interpreter's library too: a thread's stack begins in ``threading``.
PATHS = (
    ("<", PACKAGES + "pytest_mpcheck/"),
    (PACKAGES, "/usr/lib/python3/dist-packages/"),
    (STDLIB, os.path.join(os.path.dirname(os.__file__), "")),
)


@pytest.mark.parametrize(
    ("filename", "kind"),
    [
        ("/work/project/tests/test_pool.py", callsite._USERS),
        (PACKAGES + "pebble/pool/process.py", callsite._LIBRARY),
        ("/usr/lib/python3/dist-packages/loky/process_executor.py", callsite._LIBRARY),
        (STDLIB + "multiprocessing/process.py", callsite._PASSED_OVER),
        (PACKAGES + "pytest_mpcheck/watch/origins.py", callsite._PASSED_OVER),
        ("<string>", callsite._PASSED_OVER),
        # A sibling whose name begins like the library's directory is no part of it.
        ("/py/lib/python3.110/x.py", callsite._USERS),
    ],
)
def test_each_file_is_sorted_by_whose_it_is(filename: str, kind: int) -> None:
    assert callsite._kind(filename, PATHS) == kind


def _chain(files: list[str], innermost: Callable[[], None]) -> Callable[[], None]:
    """A function that calls ``innermost`` through one real frame per file of ``files``
    (outermost first), each frame on line 2 of its file."""
    call = innermost
    for filename in reversed(files):
        namespace: dict[str, object] = {"inner": call}
        exec(compile("def level():\n    inner()\n", filename, "exec"), namespace)
        call = namespace["level"]  # type: ignore[assignment]
    return call


def _site_seen_through(files: list[str], in_a_thread: bool) -> str | None:
    found: list[str | None] = []

    def innermost() -> None:
        found.append(callsite.user_site(sys._getframe(1), "/work/project/"))

    outermost = _chain(files, innermost)
    if in_a_thread:  # a thread's stack holds no frame of this test's
        thread = threading.Thread(target=outermost)
        thread.start()
        thread.join()
    else:
        outermost()
    return found[0]


def test_the_user_s_line_is_found_beyond_a_library(monkeypatch: pytest.MonkeyPatch) -> None:
    # A test calls a library (installed in a Python without a virtual environment), which
    # starts a process through multiprocessing: the test's line is the start site.
    monkeypatch.setattr(callsite, "_library_paths", lambda: PATHS)
    files = [
        "/work/project/tests/test_pool.py",
        PACKAGES + "pebble/pool/process.py",
        STDLIB + "multiprocessing/process.py",
    ]
    assert _site_seen_through(files, in_a_thread=False) == "tests/test_pool.py:2"


def test_a_library_s_line_when_no_user_code_led_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A pool's own thread starts a worker: no frame of the user's is on its stack. The library's
    # line is named, though it lies inside Python's library (no virtual environment).
    monkeypatch.setattr(callsite, "_library_paths", lambda: PATHS)
    files = [PACKAGES + "pebble/pool/process.py", STDLIB + "multiprocessing/process.py"]
    assert _site_seen_through(files, in_a_thread=True) == PACKAGES + "pebble/pool/process.py:2"


def test_this_interpreter_s_paths_come_without_sysconfig() -> None:
    own, packages, stdlib = callsite._library_paths()
    assert callsite.PLUGIN_PACKAGE in own
    assert stdlib == (os.path.join(os.path.dirname(os.__file__), ""),)
    assert set(packages) >= {os.path.join(path, "") for path in site.getsitepackages()}
    # sysconfig's build data would be copied into every fork of the pytest process.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pytest_mpcheck._os import callsite; callsite._library_paths(); "
            "print('_sysconfigdata' in ''.join(sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "False"
