"""``model-fleet watch``: a live terminal view of each fleet's model, VRAM errors, VRAM and alerts.

Two sources per frame: the status (the state file, or a remediator's ``/status``) and live
figures from Prometheus. Either may fail; the frame then says why and shows the other.
:func:`snapshot` gathers, :func:`render` turns a snapshot into text (pure, in
:mod:`remediator.cli.watch_frame`), :func:`run` loops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO

from fleet_contract import metrics
from fleet_contract.labels import HOST_LABEL
from remediator.adapters.prometheus import PrometheusAPI, PrometheusError, Sample
from remediator.cli.watch_frame import Live, Snapshot, StatusUnavailable, ago, render
from remediator.report.queries import ExitCode

__all__ = [
    "ALERTS_QUERY",
    "COUNTED_BY",
    "ERRORS_QUERY",
    "FREE_QUERY",
    "USED_QUERY",
    "Live",
    "Snapshot",
    "StatusUnavailable",
    "Watch",
    "ago",
    "live_queries",
    "read_live",
    "render",
    "run",
    "snapshot",
    "status_fleets",
]

# The exporter's two error gauges, per container: the count since the model server last served
# a request (consecutive) and since it started. Each fleet's figure is its worst container's in
# the count its ``counting`` names, as the downgrade alert reads it.
# max, not sum, for the GPUs: one GPU scraped twice (two exporters, a restart) must not count
# double.
COUNTED_BY: Final = {
    metrics.VRAM_ERRORS_CONSECUTIVE: "consecutive",
    metrics.VRAM_ERRORS_SINCE_START: "since_start",
}


def live_queries(host: str | None = None) -> tuple[str, str, str, str]:
    """The errors, VRAM used, VRAM free and firing alerts queries, limited to ``host``'s series
    (one Prometheus may scrape many GPU hosts, with the same GPU indexes and fleet names);
    None: every host's."""
    on = f'{HOST_LABEL}="{host}"' if host is not None else ""
    selector = f"{{{on}}}" if on else ""
    counts = "|".join(COUNTED_BY)
    errors = f'{{__name__=~"{counts}"{", " + on if on else ""}}}'
    # Alerts of no host too: an absent() alert (ExporterDown with no target left) has none.
    alerts = ""
    if host is not None:
        alerts = ", " + HOST_LABEL + '=~"' + host.replace(".", "\\\\.") + '|"'
    return (
        f"max by (__name__, fleet) ({errors})",
        f"max by (gpu) ({metrics.GPU_MEMORY_USED}{selector})",
        f"max by (gpu) ({metrics.GPU_MEMORY_FREE}{selector})",
        'ALERTS{alertstate="firing"' + alerts + "}",
    )


ERRORS_QUERY, USED_QUERY, FREE_QUERY, ALERTS_QUERY = live_queries()

# Terminal control: hide/show the cursor, go home, clear to the end of the line / screen.
_HIDE, _SHOW, _HOME, _EOL, _EOS = "\x1b[?25l", "\x1b[?25h", "\x1b[H", "\x1b[K", "\x1b[J"


@dataclass(frozen=True)
class Watch:
    """What a view watches: a status reader (raises StatusUnavailable) and a Prometheus."""

    read_status: Callable[[], Any]
    status_from: str  # "state file PATH" or "remediator at URL", for the header
    prometheus: PrometheusAPI
    interval: float = 2.0
    host: str | None = None  # only this GPU host's figures (None: the remediator's is unknown)


def read_live(prometheus: PrometheusAPI, host: str | None = None) -> Live:
    """Query the live figures (of ``host``); the first failure ends the round (one timeout,
    not four)."""

    def by(label: str, samples: list[Sample]) -> dict[str, float]:
        return {s.labels[label]: s.value for s in samples if label in s.labels}

    errors_query, used_query, free_query, alerts_query = live_queries(host)
    errors: dict[str, dict[str, float]] = {counting: {} for counting in COUNTED_BY.values()}
    for sample in prometheus.query(errors_query):
        counting = COUNTED_BY.get(sample.labels.get("__name__", ""))
        if counting is not None and "fleet" in sample.labels:
            errors[counting][sample.labels["fleet"]] = sample.value
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
