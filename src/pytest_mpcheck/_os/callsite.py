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
import threading
from types import FrameType

#: The plugin's own files (this module is one package below the top): never the user's line.
PLUGIN_PACKAGE = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep

#: Per thread: ``running`` is true while the plugin runs a program of its own (py-spy, to read a
#: stack). The process that starts then is the plugin's, whoever's code is running: no test's.
PLUGIN_PROGRAM = threading.local()


#: How :func:`user_site` takes a frame's file: the plugin's own or Python's (passed over), an
#: installed package's (a library: named only when no frame of the user's is further out), the
#: user's.
_PASSED_OVER, _LIBRARY, _USERS = range(3)

_Paths = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]


@functools.cache
def _library_paths() -> _Paths:
    """The beginnings of the file names that :func:`user_site` passes over (``<string>`` and
    the like, this plugin), those of installed packages, and those of Python's own library.

    Read from ``site`` and ``os`` on the first call. Not from ``sysconfig``: it loads a module of
    build data (some 200 kB, which every later fork of the pytest process copies the page
    tables of), and it names only the directory that ``pip`` installs to, not every directory
    that packages are imported from (Debian's ``/usr/lib/python3/dist-packages``, the user's).
    """
    import site

    packages = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        packages.append(site.getusersitepackages())
    stdlib = os.path.dirname(os.__file__)
    return (
        ("<", PLUGIN_PACKAGE),
        tuple(os.path.join(path, "") for path in packages),
        (os.path.join(stdlib, ""),),
    )


def _kind(filename: str, paths: _Paths) -> int:
    """Whose ``filename`` is (see :data:`_USERS`). The installed packages are told apart before
    Python's own library: without a virtual environment, ``site-packages`` lies inside it."""
    own, packages, stdlib = paths
    if filename.startswith(own):
        return _PASSED_OVER
    if filename.startswith(packages):
        return _LIBRARY
    if filename.startswith(stdlib):
        return _PASSED_OVER
    return _USERS


def user_site(frame: FrameType | None, root_prefix: str) -> str | None:
    """``file:line`` of the first frame of user code from ``frame`` outwards; the first frame of
    an installed package when there is none.

    A file under ``root_prefix`` (the rootdir, with a trailing separator) is shown relative to
    it. ``None`` when every frame is Python's or this plugin's.
    """
    paths = _library_paths()
    library_site = None
    while frame is not None:
        filename = frame.f_code.co_filename
        kind = _kind(filename, paths)
        if kind != _PASSED_OVER:
            shown = filename[len(root_prefix) :] if filename.startswith(root_prefix) else filename
            if kind == _USERS:
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
        if _is_test_file(filename) and not filename.startswith(PLUGIN_PACKAGE):
            shown = filename[len(root_prefix) :] if filename.startswith(root_prefix) else filename
            return f"{shown}:{frame.f_lineno}"
        frame = frame.f_back
    return None
