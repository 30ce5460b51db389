"""Which line of the user's code led to the current call: the ``file:line`` a report names.

Shared by the start records of processes (:mod:`pytest_mpcheck.watch.origins`) and the
registrations of named resources (:mod:`pytest_mpcheck.watch.resources`): the first frame outside
Python's own library and this plugin, and, where that frame belongs to an installed package, the
first frame of the user's own code above it if there is one.

When that line is a library's (a pool's code starting its worker, in a project whose rootdir
holds the library too), :func:`test_site` names the line of the test module or ``conftest.py``
that led to it.
"""

from __future__ import annotations

import functools
import os
from types import FrameType

#: The plugin's own files (this module is one package below the top): never the user's line.
_THIS_PACKAGE = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep


@functools.cache
def _library_paths() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The beginnings of the file names that are never the user's line (Python's own
    library, this plugin, ``<string>``), and those of installed packages; ``sysconfig``'s
    paths, read on the first call: it loads a module of build data, which a run that starts
    no process never needs."""
    import sysconfig

    paths = sysconfig.get_paths()
    return (
        ("<", _THIS_PACKAGE, paths["stdlib"], paths["platstdlib"]),
        (paths["purelib"], paths["platlib"]),
    )


def user_site(frame: FrameType | None, root_prefix: str) -> str | None:
    """``file:line`` of the first frame of user code from ``frame`` outwards.

    A file under ``root_prefix`` (the rootdir, with a trailing separator) is shown relative to
    it. ``None`` when every frame is Python's or this plugin's.
    """
    not_users, site_packages = _library_paths()
    library_site = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(not_users):
            shown = filename[len(root_prefix) :] if filename.startswith(root_prefix) else filename
            if not filename.startswith(site_packages):
                return f"{shown}:{frame.f_lineno}"
            if library_site is None:
                library_site = f"{shown}:{frame.f_lineno}"
        frame = frame.f_back
    return library_site


def _is_test_file(filename: str) -> bool:
    """Whether ``filename`` looks like a test module or a ``conftest.py`` (pytest's defaults)."""
    name = os.path.basename(filename)
    return name.endswith(".py") and (
        name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
    )


def test_site(frame: FrameType | None, root_prefix: str) -> str | None:
    """``file:line`` of the innermost frame of a test module or ``conftest.py`` from ``frame``
    outwards; ``None`` when no such frame is on the stack (a pool's own thread)."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if _is_test_file(filename) and not filename.startswith(_THIS_PACKAGE):
            shown = filename[len(root_prefix) :] if filename.startswith(root_prefix) else filename
            return f"{shown}:{frame.f_lineno}"
        frame = frame.f_back
    return None
