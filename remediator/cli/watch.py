"""``model-fleet watch``: a live terminal view of each fleet's model, VRAM errors, VRAM and alerts.

Two sources per frame: the status (the state file, or a remediator's ``/status``) and live
figures from Prometheus. Either may fail; the frame then says why and shows the other.
:func:`snapshot` gathers, :func:`render` turns a snapshot into text (pure), :func:`run` loops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TextIO

from fleet_contract import metrics
from fleet_contract.labels import HOST_LABEL
from remediator.adapters.prometheus import PrometheusAPI, PrometheusError, Sample
from remediator.report.queries import ExitCode

# The exporter's gauge counts matches since the container last started, per container: the
# fleet's figure is the worst container, as the downgrade alert reads it.
# max, not sum, for the GPUs: one GPU scraped twice (two exporters, a restart) must not count
# double.


def live_queries(host: str | None = None) -> tuple[str, str, str, str]:
    """The errors, VRAM used, VRAM free and firing alerts queries, limited to ``host``'s series
    (one Prometheus may scrape many GPU hosts, with the same GPU indexes and fleet names);
    None: every host's."""
    on = f'{HOST_LABEL}="{host}"' if host is not None else ""
    selector = f"{{{on}}}" if on else ""
    # Alerts of no host too: an absent() alert (ExporterDown with no target left) has none.
    alerts = ""
    if host is not None:
        alerts = ", " + HOST_LABEL + '=~"' + host.replace(".", "\\\\.") + '|"'
    return (
        f"max by (fleet) ({metrics.VRAM_ERRORS_SINCE_START}{selector})",
        f"max by (gpu) ({metrics.GPU_MEMORY_USED}{selector})",
        f"max by (gpu) ({metrics.GPU_MEMORY_FREE}{selector})",
        'ALERTS{alertstate="firing"' + alerts + "}",
    )


ERRORS_QUERY, USED_QUERY, FREE_QUERY, ALERTS_QUERY = live_queries()

# Labels every ALERTS series has, or that the frame already shows by placing the alert.
_ALERT_NOISE: Final = frozenset({"__name__", "alertname", "alertstate", "fleet"})

# Terminal control: hide/show the cursor, go home, clear to the end of the line / screen.
_HIDE, _SHOW, _HOME, _EOL, _EOS = "\x1b[?25l", "\x1b[?25h", "\x1b[H", "\x1b[K", "\x1b[J"


class StatusUnavailable(RuntimeError):
    """The status could not be read; carries the exit code a one-frame watch ends with."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Watch:
    """What a view watches: a status reader (raises StatusUnavailable) and a Prometheus."""

    read_status: Callable[[], Any]
    status_from: str  # "state file PATH" or "remediator at URL", for the header
    prometheus: PrometheusAPI
    interval: float = 2.0
    host: str | None = None  # only this GPU host's figures (None: the remediator's is unknown)


@dataclass(frozen=True)
class Live:
    """Prometheus' figures at one moment."""

    errors: dict[str, float]  # fleet -> VRAM errors since its model server started
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


def read_live(prometheus: PrometheusAPI, host: str | None = None) -> Live:
    """Query the live figures (of ``host``); the first failure ends the round (one timeout,
    not four)."""

    def by(label: str, samples: list[Sample]) -> dict[str, float]:
        return {s.labels[label]: s.value for s in samples if label in s.labels}

    errors_query, used_query, free_query, alerts_query = live_queries(host)
    errors = by("fleet", prometheus.query(errors_query))
    used = by("gpu", prometheus.query(used_query))
    free = by("gpu", prometheus.query(free_query))
    alerts = [s.labels for s in prometheus.query(alerts_query)]
    return Live(errors, used, free, alerts)


def status_fleets(status: Any) -> list[dict[str, Any]]:
    """The fleet objects of a status answer: ``{"fleets": {...}}`` or one fleet's object."""
    if isinstance(status, dict) and isinstance(status.get("fleets"), dict):
        fleets = [f for f in status["fleets"].values() if isinstance(f, dict)]
    elif isinstance(status, dict) and "current_model" in status:
        fleets = [status]
    else:
        raise StatusUnavailable(f"unexpected status answer: {status!r:.200}", ExitCode.FAILED)
    return fleets


def snapshot(watch: Watch, now: float, *, once: bool = False) -> Snapshot:
    """Read the status and the live figures now; a failure of either is kept, not raised."""
    fleets: list[dict[str, Any]] = []
    notices: list[dict[str, Any]] = []
    status_error = None
    try:
        status = watch.read_status()
        fleets = status_fleets(status)
        notices = [n for n in status.get("notices") or [] if isinstance(n, dict)]
    except StatusUnavailable as exc:
        status_error = exc
    live, prometheus_error = None, None
    try:
        live = read_live(watch.prometheus, watch.host)
    except PrometheusError as exc:
        prometheus_error = str(exc)
    return Snapshot(
        taken_at=now,
        status_from=watch.status_from,
        prometheus_url=watch.prometheus.url,
        fleets=fleets,
        notices=notices,
        live=live,
        status_error=status_error,
        prometheus_error=prometheus_error,
        refresh=None if once else watch.interval,
    )


# --- rendering ------------------------------------------------------------------------------


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
    value = snap.live.errors.get(str(fleet.get("fleet")))
    if value is None:
        return "no data: Prometheus has no error series for this fleet"
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


def run(watch: Watch, out: TextIO, *, once: bool = False) -> ExitCode:
    """Draw frames until Ctrl-C (exit 0); with ``once``, one frame and the status' exit code.

    On a terminal each frame overwrites the last in place (home, then clear what is left of
    each line and below: no flicker); elsewhere frames follow each other as plain text.
    """
    tty = not once and out.isatty()
    try:
        if tty:
            out.write(_HIDE + _HOME + _EOS)
        while True:
            snap = snapshot(watch, time.time(), once=once)
            frame = render(snap, time.time())
            if tty:
                out.write(_HOME + frame.replace("\n", _EOL + "\n") + _EOS)
            else:
                out.write(frame + "\n")
            out.flush()
            if once:
                return ExitCode.OK if snap.status_error is None else snap.status_error.exit_code
            time.sleep(watch.interval)
    except KeyboardInterrupt:
        return ExitCode.OK
    finally:
        if tty:
            out.write(_SHOW)
            out.flush()
