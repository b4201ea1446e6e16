"""``status`` and ``history`` as short tables, for a person at a terminal. Pure.

The CLI prints these on a terminal and JSON when its output is piped or with ``--json``; the
original system's ``model-fleet --status`` prints its status JSON always (scripts read it).
A table shows what a person checks first and leaves the rest to the JSON.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

MIB: Final = 1024 * 1024
REASON_WIDTH: Final = 40


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def status_table(status: Mapping[str, Any], now: float | None = None) -> str:
    """One line per fleet: its model, errors, VRAM, last switch and what waits; then notices."""
    fleets = status.get("fleets") or {status.get("fleet", "default"): status}
    now = time.time() if now is None else now
    rows = [_fleet_row(name, fs, now) for name, fs in fleets.items()]
    header = ["FLEET", "MODEL", "RUNG", "ERRORS", "FREE VRAM", "LAST SWITCH", "WAITING"]
    text = table(header, rows)
    notices = [
        str(n.get("message", n)) if isinstance(n, dict) else str(n) for n in _notices(status)
    ]
    return text + "".join(f"\nnotice: {n}" for n in notices)


def history_table(entries: Sequence[Mapping[str, Any]]) -> str:
    """One line per switch, oldest first."""
    if not entries:
        return "no switches yet"
    rows = [
        [
            _utc(e.get("time")),
            str(e.get("fleet", "")),
            f"{e.get('from', '?')} -> {e.get('to', '?')}",
            str(e.get("direction", "")),
            str(e.get("trigger", "")),
            _short(str(e.get("reason", ""))),
        ]
        for e in entries
    ]
    return table(["TIME (UTC)", "FLEET", "SWITCH", "DIRECTION", "TRIGGER", "REASON"], rows)


def _fleet_row(name: str, fs: Mapping[str, Any], now: float) -> list[str]:
    model = fs.get("current_model") or {}
    size = fs.get("fleet_size") or len(fs.get("available_models") or ()) or "?"
    free = fs.get("free_vram_bytes")
    last = fs.get("last_switch")
    return [
        name,
        str(model.get("name", "?")),
        f"{int(model.get('index', 0)) + 1}/{size}",
        f"{fs.get('vram_error_count', 0)}/{fs.get('max_vram_errors', '?')}",
        "-" if free is None else f"{free / MIB:.0f} MiB",
        "-" if not last else f"{_ago(now - float(last.get('time', now)))} ({last.get('to', '?')})",
        _waiting(fs),
    ]


def _waiting(fs: Mapping[str, Any]) -> str:
    """What is under way or deferred: a switch in progress, deferred alerts, a failure."""
    parts = []
    if fs.get("switch_in_progress"):
        journal = fs["switch_in_progress"]
        parts.append(f"switching to {journal.get('to', '?')}")
    deferred = fs.get("deferred_alerts") or []
    if deferred:
        first = deferred[0]
        reason, acts = first.get("reason", "?"), first.get("acts_at", "?")
        parts.append(f"{len(deferred)} deferred ({reason}, acts {acts})")
    failure = fs.get("last_failure")
    if failure and not parts:
        parts.append(f"last failure at step {failure.get('step', '?')}")
    return "; ".join(parts) or "-"


def _notices(status: Mapping[str, Any]) -> list[Any]:
    notices = list(status.get("notices") or [])
    for fs in (status.get("fleets") or {}).values():
        notices += list(fs.get("notices") or [])
    return notices


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _utc(value: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(value)))
    except (TypeError, ValueError):
        return "?"


def _short(text: str) -> str:
    return text if len(text) <= REASON_WIDTH else text[: REASON_WIDTH - 3] + "..."
