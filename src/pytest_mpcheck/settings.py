"""Options, ini values and markers: parsing, validation and the resolved settings of a run.

Every ``--mp-*`` option has an ini value of the same name with underscores. The command line wins
over the ini file, the ini file over the default. Bad values raise :class:`pytest.UsageError` with
a message that names the value and what is accepted; markers with bad arguments fail the test that
carries them.
"""

from __future__ import annotations

import fnmatch
import math
import multiprocessing
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

MODES = ("fail", "warn", "off")
DEFAULT_MODE = "fail"
DEFAULT_SETTLE = 0.3
DEFAULT_KILL_GRACE = 1.0
DEFAULT_JOIN_TIMEOUT = 30.0

SUBREAPER_CHOICES = ("auto", "on", "off")
DEFAULT_SUBREAPER = "auto"


def parse_mode(value: str) -> str:
    """Check a ``--mp-check`` mode."""
    mode = value.strip().lower()
    if mode not in MODES:
        raise pytest.UsageError(
            f"{value!r} is not a valid mp-check mode. Valid modes: {', '.join(MODES)}"
        )
    return mode


def parse_subreaper(value: str) -> str:
    """Check ``--mp-subreaper``."""
    choice = value.strip().lower()
    if choice not in SUBREAPER_CHOICES:
        raise pytest.UsageError(
            f"{value!r} is not a valid mp-subreaper value. "
            f"Valid values: {', '.join(SUBREAPER_CHOICES)}"
        )
    return choice


def _accepted_seconds(zero: bool) -> str:
    """What a duration accepts, in the words of every message about one."""
    bound = "greater than or equal to 0" if zero else "greater than 0"
    return f"Give a finite number of seconds {bound}, such as 0.5"


def _seconds_problem(seconds: float, zero: bool) -> str | None:
    """What is wrong with a duration (``zero``: whether 0 is accepted), or ``None``."""
    if math.isnan(seconds):
        return "is not a number"
    if math.isinf(seconds):
        return "is infinite"
    if seconds < 0:
        return "is negative"
    if seconds == 0 and not zero:
        return "is not greater than 0"
    return None


def _parse_seconds(name: str, value: str | float, *, zero: bool = True) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(
            f"{name}: {value!r} is not a number of seconds. {_accepted_seconds(zero)}"
        ) from None
    problem = _seconds_problem(seconds, zero)
    if problem is not None:
        raise pytest.UsageError(f"{name}: {value!r} {problem}. {_accepted_seconds(zero)}")
    return seconds


def parse_settle(value: str) -> float:
    """Check ``--mp-settle``: 0 or more seconds."""
    return _parse_seconds("--mp-settle", value)


def parse_kill_grace(value: str) -> float:
    """Check ``--mp-kill-grace``: 0 or more seconds."""
    return _parse_seconds("--mp-kill-grace", value)


def parse_join_timeout(value: str) -> float:
    """Check ``--mp-join-timeout``: more than 0 seconds (a join must be given some time)."""
    return _parse_seconds("--mp-join-timeout", value, zero=False)


def available_start_methods() -> list[str]:
    """The start methods this platform offers, in multiprocessing's order."""
    return list(multiprocessing.get_all_start_methods())


def check_start_methods(methods: Sequence[str], where: str) -> tuple[str, ...]:
    """Check names of start methods against what the platform offers."""
    available = available_start_methods()
    cleaned = [m.strip() for m in methods if m.strip()]
    if not cleaned:
        raise pytest.UsageError(
            f"{where}: no start method given. Available on this platform: {', '.join(available)}"
        )
    for method in cleaned:
        if method not in available:
            raise pytest.UsageError(
                f"{where}: {method!r} is not a start method of this platform. "
                f"Available: {', '.join(available)}"
            )
    return tuple(dict.fromkeys(cleaned))


def parse_start_methods(value: str) -> tuple[str, ...]:
    """Check ``--mp-start-methods=fork,spawn``."""
    return check_start_methods(re.split(r"[,\s]+", value), "--mp-start-methods")


def check_report_path(value: str, where: str = "--mp-report") -> str:
    """Check a ``--mp-report`` path when the run starts, not when the report is due.

    It must name a file (existing and writable, or to be created in a directory that exists and
    is writable, or whose missing directories can be created there).
    """
    path = os.path.abspath(os.path.expanduser(value))
    accepted = "Give the path of a JSON file in a directory that pytest can write to"
    if os.path.isdir(path):
        raise pytest.UsageError(
            f"{where}: {value!r} is a directory. {accepted}, such as "
            f"{os.path.join(value, 'mpcheck.json')!r}"
        )
    if os.path.lexists(path):
        if not os.access(path, os.W_OK):
            raise pytest.UsageError(f"{where}: {value!r} is not writable. {accepted}")
        return value
    parent = os.path.dirname(path)
    existing = parent
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise pytest.UsageError(
            f"{where}: {value!r} cannot be created: {existing!r} is not a directory. {accepted}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        missing = "" if existing == parent else f" (to create {parent!r} in it)"
        raise pytest.UsageError(
            f"{where}: {value!r} cannot be created: the directory {existing!r} is not "
            f"writable{missing}. {accepted}"
        )
    if existing == parent:
        # Permissions do not tell everything (root may write anywhere, but not make a file in
        # /proc or /sys): the file is made, and removed again.
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            pass  # made meanwhile (another xdist worker's check): it can be made
        except OSError as error:
            raise pytest.UsageError(
                f"{where}: {value!r} cannot be created: {error.strerror}. {accepted}"
            ) from None
        else:
            os.unlink(path)
    return value


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one run."""

    mode: str = DEFAULT_MODE
    settle: float = DEFAULT_SETTLE
    kill_grace: float = DEFAULT_KILL_GRACE
    join_timeout: float = DEFAULT_JOIN_TIMEOUT
    start_methods: tuple[str, ...] = ()
    ignore: tuple[str, ...] = field(default=())
    """The ``mp_ignore`` patterns (the helpers of multiprocessing are known without them)."""
    report_path: str | None = None
    subreaper: str = DEFAULT_SUBREAPER

    def is_ignored(self, cmdline: str) -> bool:
        """Whether a command line matches an ``mp_ignore`` pattern."""
        return any(fnmatch.fnmatchcase(cmdline, pattern) for pattern in self.ignore)

    @property
    def use_subreaper(self) -> bool:
        """Whether the pytest process becomes a child subreaper.

        ``auto`` makes it one in mode ``fail`` only: in ``warn`` and ``off`` the plugin only
        observes, and an orphan then reparents as it would without the plugin.
        """
        return self.subreaper == "on" or (self.subreaper == "auto" and self.mode == "fail")


def add_options(parser: pytest.Parser) -> None:
    """Register the ``--mp-*`` options and their ini values."""
    group = parser.getgroup("mpcheck", "multiprocessing checks (pytest-mpcheck)")
    group.addoption(
        "--mp-check",
        dest="mp_check",
        type=parse_mode,
        default=None,
        help="What to do when a test leaves a process behind: fail (default), warn or off",
    )
    group.addoption(
        "--mp-start-methods",
        dest="mp_start_methods",
        type=parse_start_methods,
        default=None,
        help="Comma-separated start methods to run every mp_* fixture test under, "
        "e.g. fork,spawn,forkserver (default: the platform's default)",
    )
    group.addoption(
        "--mp-join-timeout",
        dest="mp_join_timeout",
        type=parse_join_timeout,
        default=None,
        help="Upper bound in seconds on every join the fixtures make "
        f"(default {DEFAULT_JOIN_TIMEOUT:g})",
    )
    group.addoption(
        "--mp-settle",
        dest="mp_settle",
        type=parse_settle,
        default=None,
        help="Seconds to let exiting processes finish before calling them leaked "
        f"(default {DEFAULT_SETTLE:g})",
    )
    group.addoption(
        "--mp-kill-grace",
        dest="mp_kill_grace",
        type=parse_kill_grace,
        default=None,
        help="Seconds between SIGTERM and SIGKILL when ending leftovers "
        f"(default {DEFAULT_KILL_GRACE:g})",
    )
    group.addoption(
        "--mp-report",
        dest="mp_report",
        metavar="PATH",
        default=None,
        help="Write every finding and the session figures as JSON to PATH",
    )
    group.addoption(
        "--mp-subreaper",
        dest="mp_subreaper",
        type=parse_subreaper,
        default=None,
        help="Make pytest the child subreaper, so orphaned grandchildren are found: "
        "auto (default: in mode fail only), on or off",
    )
    parser.addini("mp_check", "Default for --mp-check (fail, warn or off)", default=None)
    parser.addini("mp_subreaper", "Default for --mp-subreaper (auto, on or off)", default=None)
    # A list in TOML (["fork", "spawn"]), or text split as a command line is ("fork,spawn").
    parser.addini("mp_start_methods", "Default for --mp-start-methods", type="args", default=None)
    for name in ("mp_join_timeout", "mp_settle", "mp_kill_grace"):
        _add_seconds_ini(parser, name, f"Default for --{name.replace('_', '-')}")
    parser.addini("mp_report", "Default for --mp-report", default=None)
    parser.addini(
        "mp_ignore",
        "Command-line patterns (fnmatch, one a line) of processes that are not leaks",
        type="linelist",
        default=[],
    )


def _add_seconds_ini(parser: pytest.Parser, name: str, help: str) -> None:
    """An ini value of seconds: a number in TOML (``mp_settle = 0.5``), or text. pytest 9
    refuses a number where an ini value is untyped text (and warns of it under
    ``[tool.pytest.ini_options]``); pytest 8 knows no such type, and gives every value as text."""
    try:
        parser.addini(name, help, type=float | str, default=None)
    except (ValueError, TypeError):  # pytest before typed ini values
        parser.addini(name, help, default=None)


def _ini_text(config: pytest.Config, name: str) -> str | None:
    value = config.getini(name)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):  # mp_start_methods: "fork, spawn" splits into two
        value = ",".join(part for item in value if (part := str(item).strip(", ")))
    text = str(value).strip()
    return text or None


def resolve_settings(config: pytest.Config) -> Settings:
    """Settings from the command line, then the ini file, then the defaults."""

    def pick(name: str, parse: object) -> object:
        given = config.getoption(name)
        if given is not None:
            return given
        text = _ini_text(config, name)
        if text is None:
            return None
        assert callable(parse)
        try:
            return parse(text)
        except pytest.UsageError as error:
            raise pytest.UsageError(f"ini value {name}: {error}") from None

    mode = pick("mp_check", parse_mode)
    settle = pick("mp_settle", parse_settle)
    grace = pick("mp_kill_grace", parse_kill_grace)
    join_timeout = pick("mp_join_timeout", parse_join_timeout)
    methods = pick("mp_start_methods", parse_start_methods)
    subreaper = pick("mp_subreaper", parse_subreaper)
    report = config.getoption("mp_report")
    if report:
        check_report_path(str(report))
    else:
        report = _ini_text(config, "mp_report")
        if report:
            check_report_path(report, "ini value mp_report")
    user_ignore = tuple(str(p).strip() for p in config.getini("mp_ignore") if str(p).strip())
    return Settings(
        mode=str(mode) if mode is not None else DEFAULT_MODE,
        settle=float(settle) if isinstance(settle, float) else DEFAULT_SETTLE,
        kill_grace=float(grace) if isinstance(grace, float) else DEFAULT_KILL_GRACE,
        join_timeout=float(join_timeout)
        if isinstance(join_timeout, float)
        else DEFAULT_JOIN_TIMEOUT,
        start_methods=tuple(methods) if isinstance(methods, tuple) else (),
        ignore=user_ignore,
        report_path=str(report) if report else None,
        subreaper=str(subreaper) if subreaper is not None else DEFAULT_SUBREAPER,
    )


MARKERS = (
    'mp_check(mode): "warn" or "off" for this test only: what to do when it leaves a process '
    "or a named resource behind, or the lock checker finds a problem (the run's --mp-check "
    "otherwise)",
    "mp_start_methods(*methods): start methods to run this test's mp_* fixtures under, "
    'e.g. mp_start_methods("spawn", "forkserver")',
    "mp_join_timeout(seconds): upper bound on every join the mp_* fixtures make in this test",
)


def marker_mode(item: pytest.Item, default: str) -> str:
    """The mode for one test: its ``mp_check`` marker, or the run's mode."""
    marker = item.get_closest_marker("mp_check")
    if marker is None:
        return default
    # As registered, mp_check(mode): the mode may be given by name, as mp_join_timeout(seconds=).
    args = list(marker.args) + ([marker.kwargs["mode"]] if "mode" in marker.kwargs else [])
    extra = set(marker.kwargs) - {"mode"}
    if len(args) != 1 or extra or not isinstance(args[0], str):
        pytest.fail(
            f"{item.nodeid}: @pytest.mark.mp_check takes one mode, "
            f'"fail", "warn" or "off"; got args={marker.args!r} kwargs={marker.kwargs!r}',
            pytrace=False,
        )
    mode = args[0].strip().lower()
    if mode not in MODES:
        pytest.fail(
            f"{item.nodeid}: @pytest.mark.mp_check: {args[0]!r} is not a valid "
            f"mp-check mode. Valid modes: {', '.join(MODES)}",
            pytrace=False,
        )
    return mode


def marker_join_timeout(item: pytest.Item, default: float) -> float:
    """The join timeout for one test: its ``mp_join_timeout`` marker, or the run's."""
    marker = item.get_closest_marker("mp_join_timeout")
    if marker is None:
        return default
    args = list(marker.args) + ([marker.kwargs["seconds"]] if "seconds" in marker.kwargs else [])
    extra = set(marker.kwargs) - {"seconds"}
    if len(args) != 1 or extra or isinstance(args[0], bool) or not isinstance(args[0], int | float):
        pytest.fail(
            f"{item.nodeid}: @pytest.mark.mp_join_timeout takes one finite number of seconds "
            f"greater than 0; got args={marker.args!r} kwargs={marker.kwargs!r}",
            pytrace=False,
        )
    seconds = float(args[0])
    problem = _seconds_problem(seconds, zero=False)
    if problem is not None:
        pytest.fail(
            f"{item.nodeid}: @pytest.mark.mp_join_timeout: {args[0]!r} {problem}. "
            f"{_accepted_seconds(zero=False)}",
            pytrace=False,
        )
    return seconds
