"""Time windows for the automatic step up: parsing and arithmetic, pure (no I/O but tzdata).

A window is one of two forms (docs/operations.md, "Off-peak step up"):

- ``[DAYS ]HH:MM-HH:MM``: ``DAYS`` is a comma list of days (``Mon``..``Sun``) and day ranges
  (``Mon-Fri``; ``Fri-Mon`` wraps over the weekend); no days means every day. The end may be
  ``24:00``; an end at or before the start crosses midnight, and such a window belongs to the
  day it starts on (``Fri 22:00-06:00`` runs into Saturday morning).
- a 5-field cron expression ``MIN HOUR DOM MONTH DOW``: the window is every minute it matches.
  Fields take ``*``, ``N``, ``A-B``, ``*/S``, ``A-B/S`` and comma lists; DOW is 0-7 (0 and 7
  are Sunday) or ``Mon``..``Sun``, MONTH 1-12 or ``Jan``..``Dec``. As in cron, when DOM and DOW
  are both restricted (neither starts with ``*``), a day matching either of them counts.

Times are wall-clock times in a zone: an IANA name read with :mod:`zoneinfo`, or, with no
zone, the host's local time. On a day the clocks change a window keeps its wall-clock times,
so it is an hour shorter or longer; a start that does not exist that day (in a gap of a
spring-forward) begins when the clocks have jumped.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES: Final = tuple(calendar.month_abbr[1:])  # Jan..Dec
_DAY: Final = 1440  # minutes
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


@dataclass(frozen=True)
class DailyWindow:
    """``[DAYS ]HH:MM-HH:MM``: from ``start`` to ``end`` minutes after midnight on ``days``."""

    text: str
    days: frozenset[int]  # Monday is 0
    start: int
    end: int  # may be <= start: the window crosses midnight

    def spans(self, day: date) -> list[tuple[int, int]]:
        """The minutes of the window that starts on ``day`` (the end may pass midnight)."""
        if day.weekday() not in self.days:
            return []
        return [(self.start, self.end if self.end > self.start else self.end + _DAY)]


@dataclass(frozen=True)
class CronWindow:
    """A 5-field cron expression: every minute it matches is inside the window."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]  # Monday is 0
    dom_any: bool
    dow_any: bool
    runs: tuple[tuple[int, int], ...]  # the matching minutes of a matching day, as runs

    def matches(self, day: date) -> bool:
        """True when the day fields match ``day``."""
        if day.month not in self.months:
            return False
        dom, dow = day.day in self.doms, day.weekday() in self.dows
        if self.dom_any or self.dow_any:
            return dom and dow
        return dom or dow

    def spans(self, day: date) -> list[tuple[int, int]]:
        """The runs of matching minutes on ``day``."""
        return list(self.runs) if self.matches(day) else []


def _runs(minutes: set[int], hours: set[int]) -> tuple[tuple[int, int], ...]:
    runs: list[tuple[int, int]] = []
    for minute in sorted(h * 60 + m for h in hours for m in minutes):
        if runs and runs[-1][1] == minute:
            runs[-1] = (runs[-1][0], minute + 1)
        else:
            runs.append((minute, minute + 1))
    return tuple(runs)


Window = DailyWindow | CronWindow


@dataclass(frozen=True)
class WindowState:
    """Where ``now`` stands: inside a window or not, when that ends, when the next one opens.

    ``closes_at`` None while open: never closes; ``opens_at`` None: no later opening found.
    """

    open: bool
    closes_at: float | None
    opens_at: float | None


def parse_window(text: str) -> Window:
    """One window from its text; ValueError says what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("must be a non-empty string such as 'Mon-Fri 22:00-06:00'")
    fields = text.split()
    if len(fields) == 5:
        return _parse_cron(" ".join(fields))
    tight = re.sub(r"\s*([,-])\s*", r"\1", " ".join(fields))
    parts = tight.split(" ")
    if len(parts) > 2:
        raise ValueError(
            "must be '[DAYS ]HH:MM-HH:MM' (e.g. 'Mon-Fri 22:00-06:00') or a 5-field cron "
            "expression (e.g. '* 22-23 * * Mon-Fri')"
        )
    days = _parse_days(parts[0]) if len(parts) == 2 else frozenset(range(7))
    span = parts[-1].split("-")
    if len(span) != 2:
        raise ValueError(f"{parts[-1]!r} is not a time span HH:MM-HH:MM")
    start, end = _minute_of_day(span[0], False), _minute_of_day(span[1], True)
    if start == end:
        raise ValueError(f"{parts[-1]!r} starts where it ends: use 00:00-24:00 for a whole day")
    return DailyWindow(tight, days, start, end)


def _minute_of_day(text: str, is_end: bool) -> int:
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a time HH:MM")
    hour, minute = int(match.group(1)), int(match.group(2))
    if minute > 59 or hour > 24 or (hour == 24 and (minute or not is_end)):
        what = "an end" if is_end else "a start"
        top = "24:00" if is_end else "23:59"
        raise ValueError(f"{text!r} is no time of day for {what} (00:00 to {top})")
    return hour * 60 + minute


def _day(name: str) -> int:
    for i, day in enumerate(DAY_NAMES):
        if name.lower() == day.lower():
            return i
    raise ValueError(f"unknown day {name!r} (days: {', '.join(DAY_NAMES)})")


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for item in text.split(","):
        first, sep, last = item.partition("-")
        a = _day(first)
        b = _day(last) if sep else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def _cron_field(text: str, name: str, lo: int, hi: int, names: tuple[str, ...] = ()) -> set[int]:
    def value(token: str) -> int:
        for i, label in enumerate(names):
            if token.lower() == label.lower():
                return i + 1  # Jan is 1, and Mon is 1 in cron
        if not token.isdigit() or not lo <= int(token) <= hi:
            raise ValueError(f"{name} {token!r} is not a number from {lo} to {hi}")
        return int(token)

    out: set[int] = set()
    for item in text.split(","):
        spec, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{name} step {step_text!r} must be a number >= 1")
            step = int(step_text)
        if spec == "*":
            first, last = lo, hi
        else:
            a, dash, b = spec.partition("-")
            first = value(a)
            last = value(b) if dash else (hi if slash else first)
            if last < first:
                raise ValueError(f"{name} range {spec!r} runs backwards")
        out.update(range(first, last + 1, step))
    return out


def _parse_cron(text: str) -> CronWindow:
    minute, hour, dom, month, dow = text.split(" ")
    months = _cron_field(month, "month", 1, 12, _MONTH_NAMES)
    doms = _cron_field(dom, "day of month", 1, 31)
    dows = {(d - 1) % 7 for d in _cron_field(dow, "day of week", 0, 7, DAY_NAMES)}
    minutes, hours = _cron_field(minute, "minute", 0, 59), _cron_field(hour, "hour", 0, 23)
    window = CronWindow(
        text=text,
        minutes=frozenset(minutes),
        hours=frozenset(hours),
        doms=frozenset(doms),
        months=frozenset(months),
        dows=frozenset(dows),
        dom_any=dom.startswith("*"),
        dow_any=dow.startswith("*"),
        runs=_runs(minutes, hours),
    )
    longest = {m: calendar.monthrange(2024, m)[1] for m in months}  # 2024: with 29 February
    if window.dow_any and not any(d <= longest[m] for m in months for d in doms):
        raise ValueError(f"day of month {dom!r} never falls in month {month!r}")
    return window


def zone_of(name: str | None) -> tzinfo | None:
    """The zone called ``name`` (IANA), or None for the host's local time; ValueError if unknown."""
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name such as 'Europe/Berlin')"
        ) from None


def _local(day: date, minute: int, zone: tzinfo | None) -> float:
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)
    return wall.replace(tzinfo=zone).timestamp()  # naive: the host's local time


def _stretches(
    windows: tuple[Window, ...], zone: tzinfo | None, first: date, days: int
) -> list[tuple[float, float]]:
    """The windows starting on ``days`` days from ``first``, as merged (start, end) instants."""
    spans = sorted(
        (_local(day, a, zone), _local(day, b, zone))
        for day in (first + timedelta(days=i) for i in range(days))
        for window in windows
        for a, b in window.spans(day)
    )
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        elif end > start:
            merged.append((start, end))
    return merged


def window_state(windows: tuple[Window, ...], timezone: str | None, now: float) -> WindowState:
    """Where ``now`` stands against ``windows``; no windows at all means always open."""
    if not windows:
        return WindowState(True, None, None)
    zone = zone_of(timezone)
    first = datetime.fromtimestamp(now, zone).date() - timedelta(days=1)
    daily = all(isinstance(w, DailyWindow) for w in windows)
    # A daily pattern repeats every week; cron's day fields can take years (29 February).
    spans = (9, 16) if daily else (9, 64, 512, 8 * 366 + 2)
    for i, days in enumerate(spans):
        last = i == len(spans) - 1
        horizon = _local(first + timedelta(days=days), 0, zone)  # nothing later starts before
        stretches = _stretches(windows, zone, first, days)
        current = next(((s, e) for s, e in stretches if s <= now < e), None)
        upcoming = next((s for s, _ in stretches if s > now), None)
        if current is not None and current[1] >= horizon:
            if not last:
                continue
            return WindowState(True, None, None)
        if upcoming is None and not last:
            continue
        return WindowState(current is not None, current[1] if current else None, upcoming)
    raise AssertionError("unreachable")  # pragma: no cover


def describe(instant: float, timezone: str | None) -> str:
    """``Mon 2026-11-30 22:00 CET``: an instant in the windows' zone, for people."""
    when = datetime.fromtimestamp(instant, zone_of(timezone))
    if when.tzinfo is None:
        when = when.astimezone()
    return when.strftime("%a %Y-%m-%d %H:%M %Z").strip()


def iso(instant: float, timezone: str | None) -> str:
    """An instant as ISO 8601 with its offset, in the windows' zone."""
    when = datetime.fromtimestamp(instant, zone_of(timezone))
    return (when if when.tzinfo else when.astimezone()).isoformat(timespec="seconds")
