"""Off-peak step up: the windows' syntax and their arithmetic in a zone (DST included).

What the windows change (decisions, status, check-config, the service) is in
test_windows_decisions.py."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from remediator.config import (
    ConfigError,
    config_warnings,
    effective_config,
    parse_config,
)
from remediator.config.windows import CronWindow, DailyWindow, parse_window, window_state

BERLIN = "Europe/Berlin"


def at(zone: str, *fields: int) -> float:
    """Epoch seconds of a wall-clock time in ``zone``."""
    return datetime(*fields, tzinfo=ZoneInfo(zone)).timestamp()  # type: ignore[misc]


def state_of(windows: list[str], zone: str | None, now: float) -> tuple[bool, Any, Any]:
    ws = window_state(tuple(parse_window(w) for w in windows), zone, now)
    return ws.open, ws.closes_at, ws.opens_at


# --- the syntax ------------------------------------------------------------------------------


def test_the_forms_a_window_takes() -> None:
    w = parse_window("Mon-Fri 22:00-06:00")
    assert isinstance(w, DailyWindow)
    assert (w.days, w.start, w.end) == (frozenset(range(5)), 22 * 60, 6 * 60)
    assert parse_window("Sat,Sun 00:00-24:00").days == {5, 6}
    assert parse_window("Fri-Mon 10:00-11:00").days == {4, 5, 6, 0}  # wraps over the weekend
    assert parse_window("wed 9:30-10:00").days == {2}
    assert parse_window("22:00-06:00").days == frozenset(range(7))  # no days: every day
    spaced = parse_window("  mon - fri ,  sun   22:00 - 06:00 ")
    assert (spaced.text, spaced.days) == ("mon-fri,sun 22:00-06:00", {0, 1, 2, 3, 4, 6})
    cron = parse_window("*/15 1-3,22 * * Mon-Fri")
    assert isinstance(cron, CronWindow)
    assert cron.minutes == {0, 15, 30, 45} and cron.hours == {1, 2, 3, 22}
    assert cron.dows == frozenset(range(5)) and cron.dow_any is False
    assert parse_window("0 0 * jan,dec 0,7").dows == {6}  # 0 and 7 are Sunday
    assert parse_window("0 0 * Jan-Mar *").months == {1, 2, 3}


def test_windows_and_timezone_in_the_config_and_back() -> None:
    config = parse_config(
        {
            "fleets": {
                "a": {
                    "auto_upgrade": {
                        "enabled": True,
                        "windows": ["Mon-Fri 22:00-06:00", "* 1-3 * * Sat"],
                        "timezone": BERLIN,
                    }
                },
                "b": {"auto_upgrade": {"windows": "Sat,Sun 00:00-24:00"}},
            }
        }
    )
    a = config.fleets["a"].auto_upgrade
    assert [w.text for w in a.windows] == ["Mon-Fri 22:00-06:00", "* 1-3 * * Sat"]
    assert a.timezone == BERLIN
    assert config.fleets["b"].auto_upgrade.timezone is None
    eff = effective_config(config)
    assert eff["fleets"]["a"]["auto_upgrade"]["windows"] == ["Mon-Fri 22:00-06:00", "* 1-3 * * Sat"]
    assert eff["fleets"]["a"]["auto_upgrade"]["timezone"] == BERLIN
    again = parse_config({k: v for k, v in eff.items() if k != "source"}, "again")
    assert effective_config(again)["fleets"] == eff["fleets"]
    assert (
        "fleet b: auto_upgrade.windows are set but auto_upgrade.enabled is false: there is no "
        "automatic step up to schedule"
    ) in config_warnings(config)
    default = parse_config({"fleets": {"a": {}}}).fleets["a"].auto_upgrade
    assert (default.windows, default.timezone) == ((), None)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "windows[1]",
            ["Sat 00:00-24:00", "Mon-Fry 22:00-06:00"],
            "'Mon-Fry 22:00-06:00': unknown day 'Fry' (days: Mon, Tue, Wed, Thu, Fri, Sat, Sun)",
        ),
        (
            "windows[0]",
            ["Mon-Fri 25:00-06:00"],
            "'Mon-Fri 25:00-06:00': '25:00' is no time of day for a start (00:00 to 23:59)",
        ),
        (
            "windows[0]",
            ["24:00-06:00"],
            "'24:00-06:00': '24:00' is no time of day for a start (00:00 to 23:59)",
        ),
        (
            "windows[0]",
            ["10:00-24:30"],
            "'10:00-24:30': '24:30' is no time of day for an end (00:00 to 24:00)",
        ),
        (
            "windows[0]",
            ["Mon-Fri 22:00"],
            "'Mon-Fri 22:00': '22:00' is not a time span HH:MM-HH:MM",
        ),
        ("windows[0]", ["10h-11h"], "'10h-11h': '10h' is not a time HH:MM"),
        (
            "windows[0]",
            ["Mon 10:00-10:00"],
            "'Mon 10:00-10:00': '10:00-10:00' starts where "
            "it ends: use 00:00-24:00 for a whole day",
        ),
        (
            "windows[0]",
            ["Mon Tue 10:00-11:00"],
            "'Mon Tue 10:00-11:00': must be "
            "'[DAYS ]HH:MM-HH:MM' (e.g. 'Mon-Fri 22:00-06:00') or a 5-field cron expression "
            "(e.g. '* 22-23 * * Mon-Fri')",
        ),
        ("windows[0]", [""], "'': must be a non-empty string such as 'Mon-Fri 22:00-06:00'"),
        ("windows[0]", [22], "22: must be a non-empty string such as 'Mon-Fri 22:00-06:00'"),
        ("windows", {"Mon": "22:00-06:00"}, "must be a list of windows, got dict"),
        ("windows[0]", ["* 24 * * *"], "'* 24 * * *': hour '24' is not a number from 0 to 23"),
        ("windows[0]", ["* 5-1 * * *"], "'* 5-1 * * *': hour range '5-1' runs backwards"),
        ("windows[0]", ["*/0 * * * *"], "'*/0 * * * *': minute step '0' must be a number >= 1"),
        (
            "windows[0]",
            ["* * * * Fry"],
            "'* * * * Fry': day of week 'Fry' is not a number from 0 to 7",
        ),
        (
            "windows[0]",
            ["* * 31 2,4 *"],
            "'* * 31 2,4 *': day of month '31' never falls in month '2,4'",
        ),
        (
            "timezone",
            "Mars/Olympus",
            "unknown time zone 'Mars/Olympus' (an IANA name such as 'Europe/Berlin')",
        ),
        ("timezone", 5, "unknown time zone '5' (an IANA name such as 'Europe/Berlin')"),
        ("timezone", "", "must be a non-empty string, got ''"),
    ],
)
def test_each_invalid_window_is_named_with_its_file_key_and_entry(
    key: str, value: object, message: str
) -> None:
    field = "timezone" if key == "timezone" else "windows"
    with pytest.raises(ConfigError) as err:
        parse_config({"fleets": {"gpu0": {"auto_upgrade": {field: value}}}}, "fleet.yaml")
    assert str(err.value) == f"fleet.yaml: fleets.gpu0.auto_upgrade.{key}: {message}"


# --- the arithmetic --------------------------------------------------------------------------


def test_a_window_that_crosses_midnight_belongs_to_the_day_it_starts() -> None:
    nights = ["Mon-Fri 22:00-06:00"]
    # Friday 2026-11-27, 23:00: Friday's night runs into Saturday morning.
    assert state_of(nights, BERLIN, at(BERLIN, 2026, 11, 27, 23)) == (
        True,
        at(BERLIN, 2026, 11, 28, 6),
        at(BERLIN, 2026, 11, 30, 22),
    )
    assert state_of(nights, BERLIN, at(BERLIN, 2026, 11, 28, 5, 59))[0] is True
    # Monday 03:00 would be Sunday's night: Sunday has none.
    assert state_of(nights, BERLIN, at(BERLIN, 2026, 11, 30, 3)) == (
        False,
        None,
        at(BERLIN, 2026, 11, 30, 22),
    )
    # The end is outside, the start inside.
    assert state_of(nights, BERLIN, at(BERLIN, 2026, 11, 28, 6))[0] is False
    assert state_of(nights, BERLIN, at(BERLIN, 2026, 11, 30, 22))[0] is True


def test_weekday_ranges_lists_and_windows_that_touch_are_one_stretch() -> None:
    week = ["Mon-Fri 22:00-06:00", "Sat,Sun 00:00-24:00"]
    # Friday night runs into the weekend, which runs until Monday 00:00.
    assert state_of(week, BERLIN, at(BERLIN, 2026, 11, 27, 23)) == (
        True,
        at(BERLIN, 2026, 11, 30, 0),
        at(BERLIN, 2026, 11, 30, 22),
    )
    assert state_of(week, BERLIN, at(BERLIN, 2026, 11, 27, 12)) == (
        False,
        None,
        at(BERLIN, 2026, 11, 27, 22),
    )
    wrap = ["Fri-Mon 12:00-13:00"]
    assert state_of(wrap, "UTC", at("UTC", 2026, 11, 24, 12, 30)) == (  # a Tuesday
        False,
        None,
        at("UTC", 2026, 11, 27, 12),
    )
    assert state_of(wrap, "UTC", at("UTC", 2026, 11, 30, 12, 30))[0] is True  # Monday
    assert state_of(["00:00-24:00"], BERLIN, at(BERLIN, 2026, 11, 27, 12)) == (True, None, None)
    assert window_state((), None, 0.0).open is True  # no windows: always allowed


def test_a_window_keeps_its_wall_clock_times_on_the_days_the_clocks_change() -> None:
    early = ["Sun 01:00-05:00"]
    # 2026-03-29: Berlin springs forward 02:00 -> 03:00, so the window lasts 3 hours.
    opened = at(BERLIN, 2026, 3, 29, 1)
    is_open, closes, _ = state_of(early, BERLIN, opened + 60)
    assert is_open and closes - opened == 3 * 3600
    assert closes == datetime(2026, 3, 29, 3, tzinfo=UTC).timestamp()
    # 2026-10-25: back 03:00 -> 02:00, 5 hours.
    opened = at(BERLIN, 2026, 10, 25, 1)
    _, closes, _ = state_of(early, BERLIN, opened + 60)
    assert closes - opened == 5 * 3600
    # A start inside the spring-forward gap begins once the clocks have jumped: 03:30 CEST.
    gap = state_of(["Sun 02:30-04:00"], BERLIN, at(BERLIN, 2026, 3, 28, 12))
    assert gap[2] == datetime(2026, 3, 29, 1, 30, tzinfo=UTC).timestamp()
    # The same wall-clock window in two zones is two different instants.
    assert (
        state_of(early, "America/New_York", opened - 86400)[2]
        != state_of(early, BERLIN, opened - 86400)[2]
    )


def test_cron_windows_are_the_minutes_they_match() -> None:
    evenings = ["* 22-23 * * Mon-Fri"]
    assert state_of(evenings, "UTC", at("UTC", 2026, 11, 27, 22, 30)) == (
        True,
        at("UTC", 2026, 11, 28, 0),
        at("UTC", 2026, 11, 30, 22),
    )
    # A matching minute is a window of one minute.
    assert state_of(["0 12 * * *"], "UTC", at("UTC", 2026, 11, 27, 12, 0, 30)) == (
        True,
        at("UTC", 2026, 11, 27, 12, 1),
        at("UTC", 2026, 11, 28, 12),
    )
    # Day of month and day of week both restricted: either matches (as in cron).
    either = ["* 12 1 * Mon"]
    assert state_of(either, "UTC", at("UTC", 2026, 11, 27))[2] == at("UTC", 2026, 11, 30, 12)
    assert state_of(either, "UTC", at("UTC", 2026, 11, 30, 13))[2] == at("UTC", 2026, 12, 1, 12)
    # 29 February: the next one is two years away.
    assert state_of(["0 0 29 2 *"], "UTC", at("UTC", 2026, 3, 1))[2] == at("UTC", 2028, 2, 29)


@pytest.fixture
def new_york_local_time() -> Iterator[None]:
    """The host's local time is New York's for the test."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("new_york_local_time")
def test_without_a_timezone_the_windows_are_in_the_hosts_local_time() -> None:
    ny = "America/New_York"
    assert state_of(["Fri 22:00-23:00"], None, at(ny, 2026, 11, 27, 12)) == (
        False,
        None,
        at(ny, 2026, 11, 27, 22),
    )
