"""What one ``model-fleet watch`` frame shows (:class:`Snapshot`) and its text (:func:`render`,
pure): each fleet's model, VRAM errors, VRAM, last switch and alerts, and why a source failed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from remediator.report.queries import ExitCode

__all__ = ["Live", "Snapshot", "StatusUnavailable", "ago", "render"]

# Labels every ALERTS series has, or that the frame already shows by placing the alert.
_ALERT_NOISE: Final = frozenset({"__name__", "alertname", "alertstate", "fleet"})


class StatusUnavailable(RuntimeError):
    """The status could not be read; carries the exit code a one-frame watch ends with."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Live:
    """Prometheus' figures at one moment."""

    # counting (consecutive, since_start) -> fleet -> VRAM errors of its worst container
    errors: dict[str, dict[str, float]]
    used: dict[str, float]  # gpu (NVML index) -> bytes
    free: dict[str, float]
    alerts: list[dict[str, str]]  # the labels of each firing alert


@dataclass(frozen=True)
class Snapshot:
    """Everything one frame shows; ``live`` is None when Prometheus gave nothing usable."""

    taken_at: float
    status_from: str
    prometheus_url: str
    fleets: list[dict[str, Any]]
    notices: list[dict[str, Any]]
    live: Live | None = None
    status_error: StatusUnavailable | None = None
    prometheus_error: str | None = None
    refresh: float | None = None  # seconds between frames; None for a single frame


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def ago(seconds: float) -> str:
    """A short duration: "45s", "5m 3s", "2h 5m", "3d 4h"."""
    s = int(seconds)
    if s < 0:
        return "0s"  # the other host's clock runs ahead
    for unit, size, sub, subsize in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if s >= size:
            return f"{s // size}{unit} {s % size // subsize}{sub}"
    return f"{s}s"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _alert(labels: Mapping[str, str]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in _ALERT_NOISE)
    name = labels.get("alertname", "?")
    return f"{name} ({extra})" if extra else name


def _model(fleet: Mapping[str, Any]) -> str:
    model = fleet.get("current_model")
    if not isinstance(model, dict):
        return "unknown"
    index, size = _num(model.get("index")), fleet.get("fleet_size", "?")
    rung = f"rung {int(index) + 1} of {size}" if index is not None else "rung ?"
    mb = f", {model['size_mb']} MB" if "size_mb" in model else ""
    text = f"{model.get('name', '?')} ({rung}{mb})"
    return f"{text}: {model['description']}" if model.get("description") else text


def _errors(fleet: Mapping[str, Any], snap: Snapshot) -> str:
    threshold = (
        f" (a downgrade at {fleet['max_vram_errors']})" if "max_vram_errors" in fleet else ""
    )
    if snap.live is None:
        return "unknown: no live figures"
    # The count the fleet's downgrade alert compares (its ``counting``; a status without it
    # comes from a remediator older than the setting, which counted since the start).
    counting = str(fleet.get("counting", "since_start"))
    value = snap.live.errors.get(counting, {}).get(str(fleet.get("fleet")))
    if value is None:
        return "no data: Prometheus has no error series for this fleet"
    if counting == "consecutive":
        return f"{value:g} in a row since the model server last served a request{threshold}"
    return f"{value:g} since the model server started{threshold}"


def _vram(fleet: Mapping[str, Any], snap: Snapshot) -> str:
    gpu = fleet.get("gpu")
    if gpu is None:
        return "unknown: the status names no GPU"
    if snap.live is None:
        return f"GPU {gpu}: unknown, no live figures"
    used, free = snap.live.used.get(str(gpu)), snap.live.free.get(str(gpu))
    if used is None and free is None:
        return f"GPU {gpu}: no data in Prometheus"
    parts = [f"{_gib(used)} used" if used is not None else "used ?"]
    parts.append(f"{_gib(free)} free" if free is not None else "free ?")
    return f"GPU {gpu}: {', '.join(parts)}"


def _switch(last: Any, now: float) -> str:
    if not isinstance(last, dict):
        return "none yet"
    when = _num(last.get("time"))
    at = f" at {_clock(when)}, {ago(now - when)} ago" if when is not None else ""
    how = ", ".join(str(last[k]) for k in ("direction", "trigger") if last.get(k))
    text = f"{last.get('from', '?')} -> {last.get('to', '?')}{f' ({how})' if how else ''}{at}"
    return f"{text}: {last['reason']}" if last.get("reason") else text


def _failure(failure: Mapping[str, Any], now: float) -> str:
    when = _num(failure.get("time"))
    at = f", {ago(now - when)} ago" if when is not None else ""
    return f"step {failure.get('step', '?')}{at}: {failure.get('message', '')}"


def _fleet_lines(fleet: Mapping[str, Any], snap: Snapshot, now: float) -> list[str]:
    name = str(fleet.get("fleet", "?"))
    lines = [f"fleet {name}" + (" (dry run)" if fleet.get("dry_run") else "")]
    rows = [
        ("model", _model(fleet)),
        ("VRAM errors", _errors(fleet, snap)),
        ("VRAM", _vram(fleet, snap)),
        ("last switch", _switch(fleet.get("last_switch"), now)),
    ]
    if isinstance(fleet.get("last_failure"), dict):
        rows.append(("last failure", _failure(fleet["last_failure"], now)))
    if snap.live is not None:
        mine = [_alert(a) for a in snap.live.alerts if a.get("fleet") == name]
        rows.append(("alerts", "; ".join(mine) if mine else "none firing"))
    lines += [f"  {label:<13}{value}" for label, value in rows]
    return lines


def render(snap: Snapshot, now: float) -> str:
    """The frame for ``snap`` as plain text (no terminal control), ``now`` for the ages."""
    refresh = f" - every {snap.refresh:g}s, Ctrl-C to quit" if snap.refresh is not None else ""
    lines = [
        f"model-fleet watch - {_clock(snap.taken_at)}{refresh}",
        f"status: {snap.status_from}; live figures: Prometheus at {snap.prometheus_url}",
    ]
    if snap.status_error is not None:
        lines.append(f"!! status unavailable: {snap.status_error}")
    if snap.prometheus_error is not None:
        lines.append(f"!! {snap.prometheus_error}")
    for fleet in snap.fleets:
        lines += ["", *_fleet_lines(fleet, snap, now)]
    if snap.live is not None:
        others = [_alert(a) for a in snap.live.alerts if "fleet" not in a]
        if others:
            lines += ["", "alerts without a fleet", *(f"  {a}" for a in others)]
    for notice in snap.notices:
        lines += ["", f"notice: {notice.get('message', notice)}"]
    return "\n".join(lines) + "\n"
