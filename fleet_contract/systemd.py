"""What the exporter and the remediator both read from systemd: ``systemctl show`` and unit names.

Both ask ``systemctl show UNIT -p ... --timestamp=us+utc`` (systemd 247 and later) about the
model server's unit: timestamps then come to the microsecond, in UTC, for example
``Sat 2026-12-05 09:00:00.123456 UTC``; an unset one is empty (``n/a`` in some versions).
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Final

SHOW_TIMESTAMPS: Final = "--timestamp=us+utc"
NS_PER_US: Final = 1000

# A unit name as systemd accepts it (systemd.unit(5)): a name and a type suffix; the model
# server and the application are services.
_UNIT_NAME: Final = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|scope|socket|target)$")
_TIMESTAMP: Final = re.compile(
    r"^(?:\w{3} )?(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))? UTC$"
)


def parse_show(text: str) -> dict[str, str]:
    """``KEY=value`` lines of ``systemctl show`` as a mapping (a value may hold ``=``)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


def timestamp_ns(value: str) -> int | None:
    """A ``--timestamp=us+utc`` timestamp in nanoseconds; None when unset.

    Raises ValueError for anything else (another ``--timestamp`` format, a local time zone).
    """
    value = value.strip()
    if value in ("", "n/a", "0"):
        return None
    match = _TIMESTAMP.match(value)
    if match is None:
        raise ValueError(f"not a systemd UTC timestamp with microseconds: {value!r}")
    year, month, day, hour, minute, second, micros = match.groups()
    seconds = calendar.timegm(
        (int(year), int(month), int(day), int(hour), int(minute), int(second))
    )
    return seconds * 1_000_000_000 + int((micros or "0").ljust(6, "0")) * NS_PER_US


def rfc3339(ns: int) -> str:
    """``ns`` as an RFC 3339 UTC time with nanoseconds, as container runtimes write it."""
    seconds, frac = divmod(ns, 1_000_000_000)
    year, month, day, hour, minute, second = time.gmtime(seconds)[:6]
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{frac:09d}Z"


def unit_problem(name: str) -> str | None:
    """Why ``name`` is not a unit systemd would accept, or None when it is one."""
    if not _UNIT_NAME.match(name):
        return (
            f"{name!r} is not a systemd unit name (a name with its type, such as "
            "ollama.service: letters, digits and :_.\\@- only)"
        )
    return None
