"""A fleet's ``auto_upgrade`` section: the automatic step back up (:class:`~.model.AutoUpgrade`),
its quiet times, and the windows (:mod:`remediator.config.windows`) and time zone it keeps to."""

from __future__ import annotations

from typing import Any, Final

from remediator.config.model import AutoUpgrade
from remediator.config.reader import Reader, key_path, type_name
from remediator.config.windows import Window, parse_window, zone_of

AUTO_UPGRADE_KEYS: Final = frozenset(
    {"enabled", "quiet_seconds", "failed_quiet_seconds", "headroom_mb", "windows", "timezone"}
)


def parse_auto_upgrade(r: Reader, value: Any, where: str) -> AutoUpgrade:
    """The step back up as ``where`` sets it; failed_quiet_seconds no shorter than quiet."""
    m = r.mapping(value, where, AUTO_UPGRADE_KEYS)
    d = AutoUpgrade()
    au = AutoUpgrade(
        enabled=r.boolean(m, "enabled", where, d.enabled),
        quiet_seconds=r.number(m, "quiet_seconds", where, d.quiet_seconds),
        failed_quiet_seconds=r.number(m, "failed_quiet_seconds", where, d.failed_quiet_seconds),
        headroom_mb=r.integer(m, "headroom_mb", where, d.headroom_mb),
        windows=_parse_windows(r, m, where),
        timezone=_parse_timezone(r, m, where),
    )
    if au.failed_quiet_seconds < au.quiet_seconds:
        raise r.fail(
            key_path(where, "failed_quiet_seconds"),
            f"must be at least quiet_seconds ({au.quiet_seconds:g}): after a step up failed "
            "the fleet waits longer, not shorter",
        )
    return au


def _parse_windows(r: Reader, m: dict[str, Any], where: str) -> tuple[Window, ...]:
    here = key_path(where, "windows")
    value = m.get("windows")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise r.fail(here, f"must be a list of windows, got {type_name(value)}")
    windows = []
    for i, item in enumerate(value):
        try:
            windows.append(parse_window(item))
        except ValueError as exc:
            raise r.fail(f"{here}[{i}]", f"{item!r}: {exc}") from None
    return tuple(windows)


def _parse_timezone(r: Reader, m: dict[str, Any], where: str) -> str | None:
    if m.get("timezone") is None:
        return None
    name = r.string(m, "timezone", where, None)
    try:
        zone_of(name)
    except ValueError as exc:
        raise r.fail(key_path(where, "timezone"), str(exc)) from None
    return name
