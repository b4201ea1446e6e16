"""Log timestamps: RFC 3339 times as container runtimes write them, in nanoseconds."""

from __future__ import annotations

import calendar
from typing import Final

NS: Final = 1_000_000_000


class TimestampError(ValueError):
    """A Docker timestamp could not be parsed."""


def parse_timestamp(text: bytes | str) -> int:
    """Nanoseconds since the epoch for an RFC 3339 time such as Docker's ``...:51.59374Z``."""
    s = text.decode("ascii") if isinstance(text, bytes) else text
    try:
        seconds = calendar.timegm(
            (int(s[0:4]), int(s[5:7]), int(s[8:10]), int(s[11:13]), int(s[14:16]), int(s[17:19]))
        )
        i = 19
        nanos = 0
        if i < len(s) and s[i] == ".":
            j = i + 1
            while j < len(s) and s[j].isdigit():
                j += 1
            digits = s[i + 1 : j]
            nanos = int((digits + "000000000")[:9])
            i = j
        zone = s[i:]
        if zone in ("Z", "z"):
            offset = 0
        elif len(zone) == 6 and zone[0] in "+-" and zone[3] == ":":
            offset = (int(zone[1:3]) * 60 + int(zone[4:6])) * 60
            offset = offset if zone[0] == "+" else -offset
        else:
            raise ValueError(f"unknown zone {zone!r}")
    except (ValueError, IndexError) as exc:
        raise TimestampError(f"not an RFC 3339 timestamp: {s!r}") from exc
    return (seconds - offset) * NS + nanos


def is_zero_time(text: str) -> bool:
    """Docker writes Go's zero time ("0001-01-01T00:00:00Z") for 'never'."""
    return not text or text.startswith("0001-01-01")


def format_since(ns: int) -> str:
    """Docker's ``since`` parameter for a time in nanoseconds, without losing precision."""
    return f"{ns // NS}.{ns % NS:09d}"
