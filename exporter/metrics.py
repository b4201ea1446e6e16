"""The log counters and their Prometheus collector (names and labels: fleet_contract.metrics)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.containerlog import Tally
from exporter.timestamps import NS
from fleet_contract import metrics as m

SeriesKey = tuple[str, str]  # (fleet, container name)


@dataclass
class _Series:
    errors: dict[str, int]  # incidents
    error_lines: dict[str, int]
    lines: int = 0
    reconnects: int = 0
    recovered: int = 0
    gaps: int = 0
    since_start: int = 0
    consecutive: int = 0
    up: bool = False
    present: bool = False  # a container backs this name now
    expected: bool = False  # named in the configuration: its stream should be up
    owner: str | None = None  # id of the container whose run since_start describes
    owner_started_ns: int = -1
    started_at: str = ""  # Docker's StartedAt of that run


@dataclass(frozen=True)
class SeriesSnapshot:
    """One (fleet, container) series as the collector exports it."""

    fleet: str
    container: str
    errors: dict[str, int]  # incidents, by the kind of their first line
    lines: int
    reconnects: int
    since_start: int | None  # None: no container has this name now
    up: bool | None  # None: no container has this name now, and none is expected
    started_at: str | None  # Docker's StartedAt of the run since_start counts; None: no run
    error_lines: dict[str, int] = field(default_factory=dict)  # matching lines, by kind
    recovered: int = 0  # lines a re-read found after Docker's follow skipped them
    gaps: int = 0  # times the retained log no longer reached back to where reading resumed
    consecutive: int | None = None  # of since_start: after the run's last served request
    started_ns: int | None = None  # started_at in nanoseconds since the epoch; None: no run


@dataclass
class LogStore:
    """Counters per (fleet, container name); fed by the log followers, read at scrape time.

    A name can be backed by two containers for a moment (a recreated container and its
    predecessor draining its last lines): both add to the counters, but ``since_start`` and
    ``up`` follow the most recently started one. When the container of a name is removed, its
    counters stay (a recreated container continues them) but its gauges go: a stale
    ``since_start`` would keep an alert firing for a container that no longer exists.
    """

    kinds: Sequence[str]
    _series: dict[SeriesKey, _Series] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, fleet: str, container: str, *, expected: bool = False) -> None:
        """Create the series at 0 (every kind), so that increase() sees the first burst."""
        with self._lock:
            series = self._get(fleet, container)
            series.expected = series.expected or expected

    def _get(self, fleet: str, container: str) -> _Series:
        key = (fleet, container)
        series = self._series.get(key)
        if series is None:
            series = _Series(
                errors=dict.fromkeys(self.kinds, 0), error_lines=dict.fromkeys(self.kinds, 0)
            )
            self._series[key] = series
        return series

    def add(self, fleet: str, container: str, tally: Tally) -> None:
        """Add a batch's lines and errors to the counters."""
        if not tally.lines and not tally.gaps and not any(tally.errors.values()):
            return
        with self._lock:
            self._count(self._get(fleet, container), tally)

    @staticmethod
    def _count(series: _Series, tally: Tally) -> None:
        series.lines += tally.lines
        series.recovered += tally.recovered
        series.gaps += tally.gaps
        for kind, n in tally.errors.items():
            series.errors[kind] = series.errors.get(kind, 0) + n
        for kind, n in tally.error_lines.items():
            series.error_lines[kind] = series.error_lines.get(kind, 0) + n

    def update(
        self,
        fleet: str,
        container: str,
        container_id: str,
        started_ns: int,
        tally: Tally,
        *,
        since_start: int,
        up: bool,
        started_at: str = "",
        consecutive: int | None = None,
    ) -> None:
        """Add a batch and report the run of ``container_id`` that started at ``started_ns``
        (its count and state; ``consecutive`` None: every error of the run, none served) at
        once, so a scrape never sees one without the other."""
        with self._lock:
            series = self._get(fleet, container)
            self._count(series, tally)
            self._report(series, container_id, started_ns, since_start, up, started_at, consecutive)

    @staticmethod
    def _report(
        series: _Series,
        container_id: str,
        started_ns: int,
        since_start: int,
        up: bool,
        started_at: str,
        consecutive: int | None,
    ) -> None:
        if series.owner != container_id and started_ns < series.owner_started_ns:
            return  # an older container of the same name: it no longer speaks for the name
        series.owner = container_id
        series.owner_started_ns = started_ns
        series.since_start = since_start
        series.consecutive = since_start if consecutive is None else consecutive
        series.up = up
        series.present = True
        series.started_at = started_at

    def release(self, fleet: str, container: str, container_id: str) -> None:
        """``container_id`` no longer has this name (removed or renamed)."""
        with self._lock:
            series = self._series.get((fleet, container))
            if series is not None and series.owner == container_id:
                series.up = False
                series.present = False
                series.owner = None
                series.owner_started_ns = -1
                series.started_at = ""

    def reconnected(self, fleet: str, container: str) -> None:
        """A stream ended unexpectedly and was attached again."""
        with self._lock:
            self._get(fleet, container).reconnects += 1

    def snapshot(self) -> list[SeriesSnapshot]:
        """A consistent copy of every series."""
        with self._lock:
            return [
                SeriesSnapshot(
                    fleet=fleet,
                    container=name,
                    errors=dict(s.errors),
                    lines=s.lines,
                    reconnects=s.reconnects,
                    since_start=s.since_start if s.present else None,
                    up=s.up if s.present else (False if s.expected else None),
                    started_at=s.started_at if s.present and s.started_at else None,
                    started_ns=s.owner_started_ns if s.present and s.started_at else None,
                    error_lines=dict(s.error_lines),
                    recovered=s.recovered,
                    gaps=s.gaps,
                    consecutive=s.consecutive if s.present else None,
                )
                for (fleet, name), s in sorted(self._series.items())
            ]


class LogCollector(Collector):
    """Exports the log counters of a LogStore."""

    def __init__(self, store: LogStore) -> None:
        self._store = store

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        """The log metrics, one consistent snapshot per scrape."""
        errors = counter(m.VRAM_ERRORS)
        error_lines = counter(m.VRAM_ERROR_LINES)
        since_start = gauge(m.VRAM_ERRORS_SINCE_START)
        consecutive = gauge(m.VRAM_ERRORS_CONSECUTIVE)
        lines = counter(m.LOG_LINES)
        up = gauge(m.LOG_STREAM_UP)
        start_info = gauge(m.CONTAINER_START_INFO)
        start_time = gauge(m.CONTAINER_START_TIME)
        reconnects = counter(m.LOG_STREAM_RECONNECTS)
        recovered = counter(m.LOG_LINES_RECOVERED)
        gaps = counter(m.LOG_GAPS)
        for s in self._store.snapshot():
            for kind, n in s.errors.items():
                errors.add_metric([s.fleet, s.container, kind], n)
            for kind, n in s.error_lines.items():
                error_lines.add_metric([s.fleet, s.container, kind], n)
            if s.since_start is not None:
                since_start.add_metric([s.fleet, s.container], s.since_start)
            if s.consecutive is not None:
                consecutive.add_metric([s.fleet, s.container], s.consecutive)
            lines.add_metric([s.fleet, s.container], s.lines)
            if s.up is not None:
                up.add_metric([s.fleet, s.container], 1 if s.up else 0)
            if s.started_at is not None:
                start_info.add_metric([s.fleet, s.container, s.started_at], 1)
            if s.started_ns is not None:
                # One series per container across its runs (the info starts one per run); a
                # float carries the nanoseconds to within a fraction of a microsecond.
                start_time.add_metric([s.fleet, s.container], s.started_ns / NS)
            reconnects.add_metric([s.fleet, s.container], s.reconnects)
            recovered.add_metric([s.fleet, s.container], s.recovered)
            gaps.add_metric([s.fleet, s.container], s.gaps)
        families: list[CounterMetricFamily | GaugeMetricFamily] = [errors, error_lines]
        families += [since_start, consecutive, start_info, start_time, lines, up, reconnects]
        return [*families, recovered, gaps]


def gauge(name: str) -> GaugeMetricFamily:
    """An empty gauge family for the contract's metric ``name``."""
    spec = m.spec(name)
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def counter(name: str) -> CounterMetricFamily:
    """An empty counter family for the contract's metric ``name``."""
    spec = m.spec(name)
    return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
