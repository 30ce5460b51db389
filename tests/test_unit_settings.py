"""Options and ini values: each parser's answers and messages, and the command line winning over
the ini file over the defaults. Configs are parsed in this process; no session runs."""

from __future__ import annotations

import fnmatch
import multiprocessing
from pathlib import Path

import pytest

from pytest_mpcheck import settings

AVAILABLE = ", ".join(multiprocessing.get_all_start_methods())


def test_modes_and_subreaper_values() -> None:
    assert settings.parse_mode(" Warn ") == "warn"
    assert settings.parse_subreaper("ON") == "on"
    with pytest.raises(pytest.UsageError) as raised:
        settings.parse_mode("loud")
    assert str(raised.value) == "'loud' is not a valid mp-check mode. Valid modes: fail, warn, off"
    with pytest.raises(pytest.UsageError) as raised:
        settings.parse_subreaper("sometimes")
    assert str(raised.value) == (
        "'sometimes' is not a valid mp-subreaper value. Valid values: auto, on, off"
    )


def test_seconds() -> None:
    assert settings.parse_settle("0") == 0.0
    assert settings.parse_kill_grace(" 1.5 ") == 1.5
    assert settings.parse_join_timeout("1e1") == 10.0


#: What each duration accepts: the message says it, whatever was wrong.
AT_LEAST_0 = "Give a finite number of seconds greater than or equal to 0, such as 0.5"
MORE_THAN_0 = "Give a finite number of seconds greater than 0, such as 0.5"


@pytest.mark.parametrize(
    ("parse", "value", "message"),
    [
        (
            settings.parse_kill_grace,
            "abc",
            f"--mp-kill-grace: 'abc' is not a number of seconds. {AT_LEAST_0}",
        ),
        (settings.parse_settle, "-1", f"--mp-settle: '-1' is negative. {AT_LEAST_0}"),
        (settings.parse_settle, "nan", f"--mp-settle: 'nan' is not a number. {AT_LEAST_0}"),
        (settings.parse_kill_grace, "inf", f"--mp-kill-grace: 'inf' is infinite. {AT_LEAST_0}"),
        (
            settings.parse_join_timeout,
            "0",
            f"--mp-join-timeout: '0' is not greater than 0. {MORE_THAN_0}",
        ),
        (settings.parse_join_timeout, "-1", f"--mp-join-timeout: '-1' is negative. {MORE_THAN_0}"),
        (
            settings.parse_join_timeout,
            "nan",
            f"--mp-join-timeout: 'nan' is not a number. {MORE_THAN_0}",
        ),
        (
            settings.parse_join_timeout,
            "inf",
            f"--mp-join-timeout: 'inf' is infinite. {MORE_THAN_0}",
        ),
        (
            settings.parse_join_timeout,
            "soon",
            f"--mp-join-timeout: 'soon' is not a number of seconds. {MORE_THAN_0}",
        ),
    ],
)
def test_bad_seconds(parse: object, value: str, message: str) -> None:
    assert callable(parse)
    with pytest.raises(pytest.UsageError) as raised:
        parse(value)
    assert str(raised.value) == message


def test_start_methods() -> None:
    assert settings.parse_start_methods("spawn") == ("spawn",)
    # Commas or spaces between them; each once, in the order given.
    assert settings.parse_start_methods("spawn, fork  spawn,") == ("spawn", "fork")
    assert settings.check_start_methods([" fork "], "here") == ("fork",)


def test_bad_start_methods() -> None:
    with pytest.raises(pytest.UsageError) as raised:
        settings.parse_start_methods("spawn,vfork")
    assert str(raised.value) == (
        f"--mp-start-methods: 'vfork' is not a start method of this platform. "
        f"Available: {AVAILABLE}"
    )
    with pytest.raises(pytest.UsageError) as raised:
        settings.parse_start_methods(" , ")
    assert str(raised.value) == (
        f"--mp-start-methods: no start method given. Available on this platform: {AVAILABLE}"
    )


def test_report_paths(tmp_path: Path) -> None:
    existing = tmp_path / "report.json"
    existing.write_text("{}")
    assert settings.check_report_path(str(existing)) == str(existing)
    # Missing directories are made when the report is written.
    deeper = str(tmp_path / "new" / "dirs" / "report.json")
    assert settings.check_report_path(deeper) == deeper


def test_bad_report_paths(tmp_path: Path) -> None:
    accepted = "Give the path of a JSON file in a directory that pytest can write to"
    with pytest.raises(pytest.UsageError) as raised:
        settings.check_report_path(str(tmp_path))
    assert str(raised.value) == (
        f"--mp-report: {str(tmp_path)!r} is a directory. {accepted}, such as "
        f"{str(tmp_path / 'mpcheck.json')!r}"
    )
    (tmp_path / "file").write_text("")
    below_a_file = str(tmp_path / "file" / "report.json")
    with pytest.raises(pytest.UsageError) as raised:
        settings.check_report_path(below_a_file, "ini value mp_report")
    assert str(raised.value) == (
        f"ini value mp_report: {below_a_file!r} cannot be created: "
        f"{str(tmp_path / 'file')!r} is not a directory. {accepted}"
    )


def test_defaults(pytester: pytest.Pytester) -> None:
    resolved = settings.resolve_settings(pytester.parseconfig())
    assert resolved == settings.Settings(
        mode="fail",
        settle=settings.DEFAULT_SETTLE,
        kill_grace=settings.DEFAULT_KILL_GRACE,
        join_timeout=settings.DEFAULT_JOIN_TIMEOUT,
        start_methods=(),
        ignore=(),
        report_path=None,
        subreaper="auto",
    )


def test_command_line_wins_over_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        mp_check = warn
        mp_kill_grace = 0.9
        mp_join_timeout = 5
        mp_start_methods = forkserver spawn
        mp_subreaper = on
        mp_report = ini.json
        mp_ignore =
            sleep 6*

            helper --serve
        """
    )
    config = pytester.parseconfig("--mp-kill-grace=0.4", "--mp-report=cli.json", "--mp-check=off")
    resolved = settings.resolve_settings(config)
    assert resolved == settings.Settings(
        mode="off",
        settle=settings.DEFAULT_SETTLE,
        kill_grace=0.4,
        join_timeout=5.0,
        start_methods=("forkserver", "spawn"),
        ignore=("sleep 6*", "helper --serve"),
        report_path="cli.json",
        subreaper="on",
    )


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        (
            "mp_settle = soon",
            f"ini value mp_settle: --mp-settle: 'soon' is not a number of seconds. {AT_LEAST_0}",
        ),
        ("mp_check = loud", "ini value mp_check: 'loud' is not a valid mp-check mode.*"),
        (
            "mp_start_methods = spawn, vfork",
            "ini value mp_start_methods: --mp-start-methods: 'vfork' is not a start method*",
        ),
        ("mp_report = .", "ini value mp_report: '.' is a directory.*"),
    ],
)
def test_bad_ini_values_name_the_ini_value(
    pytester: pytest.Pytester, ini: str, message: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    config = pytester.parseconfig()
    with pytest.raises(pytest.UsageError) as raised:
        settings.resolve_settings(config)
    assert fnmatch.fnmatchcase(str(raised.value), message), str(raised.value)


@pytest.mark.parametrize(
    ("marker", "mode"),
    [("", "fail"), ('mp_check("off")', "off"), ('mp_check(mode=" WARN ")', "warn")],
)
def test_mode_marker_takes_its_mode_by_position_or_name(
    pytester: pytest.Pytester, marker: str, mode: str
) -> None:
    # Registered as mp_check(mode), as mp_join_timeout(seconds) takes seconds= too.
    decorator = f"@pytest.mark.{marker}\n" if marker else ""
    item = pytester.getitem(f"import pytest\n\n{decorator}def test_func():\n    pass\n")
    assert settings.marker_mode(item, "fail") == mode
