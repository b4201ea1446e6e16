"""The remediator's metrics (fleet_contract.metrics): state gauges read at scrape time, counters.

Gauges that describe where a fleet stands are computed from the state file when Prometheus
scrapes, so every gunicorn worker reports the same values without sharing memory. Counters
use prometheus_client's multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (``serve``
sets it): each worker writes its own file and ``/metrics`` sums them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet_contract import metrics as m
from fleet_contract.env import PROMETHEUS_MULTIPROC_DIR
from fleet_exposition import BuildInfoCollector, HostRegistry
from remediator.config import Config
from remediator.config.windows import window_state
from remediator.domain.kinds import DeliveryOutcome, Direction, RecoveryOutcome, Trigger
from remediator.domain.loggers import METRICS as log
from remediator.store.locks import StateError
from remediator.store.state import StateStore

DIRECTIONS = tuple(Direction)
TRIGGERS = tuple(Trigger)
STEPS = (
    "pull",
    "create",
    "unload",
    "write_config",
    "find_containers",
    "restart",
    "verify",
    "state",
    "move",
)
WEBHOOK_OUTCOMES = tuple(DeliveryOutcome)
# Why an alert was deferred: the refusals that pass by themselves (remediator/domain/decisions.py).
DEFERRAL_REASONS = ("cooldown", "rate_limited", "quiet_period", "outside_window")
# What became of an Alertmanager delivery to /webhook/notify (remediator/report/notifications.py).
NOTIFICATION_OUTCOMES = ("forwarded", "failed", "logged")
# How an interrupted switch found in the journal ended (remediator/switch/recovery.py).
RECOVERY_OUTCOMES = tuple(RecoveryOutcome)


def _counter(name: str, registry: CollectorRegistry) -> Counter:
    spec = m.spec(name)
    return Counter(spec.name, spec.help, spec.labels, registry=registry)


class FleetStateCollector(Collector):
    """Reads the state file at scrape time and yields the per-fleet gauges."""

    def __init__(self, config: Config, store: StateStore) -> None:
        self.config = config
        self.store = store

    def collect(self) -> Iterable[Metric]:
        """One consistent read of the state, turned into gauges."""
        try:
            state = self.store.snapshot()
        except StateError as exc:
            # A scrape must not fail because of the state file: the gauges go missing and
            # ModelFleetRemediatorDown-style alerts on absent() notice.
            log.error("metrics: cannot read the state: %s", exc)
            return
        # Every gauge of the contract's remediator section, read from the state.
        g = {
            s.name: GaugeMetricFamily(s.name, s.help, labels=s.labels)
            for s in m.of_service("remediator")
            if s.kind == "gauge" and s.service == "remediator"  # build_info: its own collector
        }
        info, index, size, can = (
            g[m.CURRENT_MODEL_INFO],
            g[m.CURRENT_MODEL_INDEX],
            g[m.LADDER_SIZE],
            g[m.CAN_DOWNGRADE],
        )
        rung_bytes, next_larger = g[m.LADDER_MODEL_BYTES], g[m.NEXT_LARGER_MODEL_BYTES]
        last, window = g[m.LAST_SWITCH_TIMESTAMP], g[m.STEP_UP_WINDOW_OPEN]
        tolerance, counting = g[m.OFFLOAD_TOLERANCE], g[m.VRAM_ERROR_COUNTING]
        now = time.time()
        for name, fleet in self.config.fleets.items():
            fs = state.fleets[name]
            ladder = fleet.ladder
            info.add_metric([name, fs.current_model], 1)
            index.add_metric([name], fs.index)
            size.add_metric([name], len(ladder))
            can.add_metric([name], 1 if fs.index < len(ladder) - 1 else 0)
            for i, rung in enumerate(ladder.rungs):
                rung_bytes.add_metric([name, rung.name, str(i)], rung.size_bytes)
            up = ladder[fs.index - 1].size_bytes if fs.index > 0 else 0
            # The GPU now, after any move: the step-up rule joins its free VRAM on this label.
            here = fs.current_gpu(fleet)
            g[m.FLEET_GPU_INFO].add_metric([name, here], 1)
            next_larger.add_metric([name, here], up)
            last.add_metric([name], fs.last_switch_at or 0)
            au = fleet.auto_upgrade
            window.add_metric([name], 1 if window_state(au.windows, au.timezone, now).open else 0)
            tolerance.add_metric([name], fleet.offload_tolerance)
            counting.add_metric([name, fleet.counting], 1)
        yield from g.values()


class RemediatorMetrics:
    """The counters, registered on ``registry`` (a fresh one per app in tests)."""

    def __init__(self, config: Config, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.switches = _counter(m.SWITCHES, registry)
        self.failures = _counter(m.REMEDIATION_FAILURES, registry)
        self.webhooks = _counter(m.WEBHOOK_REQUESTS, registry)
        self.notifications = _counter(m.NOTIFICATIONS, registry)
        self.recoveries = _counter(m.SWITCH_RECOVERIES, registry)
        self.deferrals = _counter(m.ALERTS_DEFERRED, registry)
        # Every label set exists at 0 from the start, so increase() sees the first event.
        for fleet in config.fleets:
            for direction in DIRECTIONS:
                for trigger in TRIGGERS:
                    self.switches.labels(fleet, direction, trigger)
            for step in STEPS:
                self.failures.labels(fleet, step)
            for recovery in RECOVERY_OUTCOMES:
                self.recoveries.labels(fleet, recovery)
            for reason in DEFERRAL_REASONS:
                self.deferrals.labels(fleet, reason)
        for delivery in WEBHOOK_OUTCOMES:
            self.webhooks.labels(delivery)
        for notification in NOTIFICATION_OUTCOMES:
            self.notifications.labels(notification)

    def switched(self, fleet: str, direction: str, trigger: str) -> None:
        """Count a committed switch."""
        self.switches.labels(fleet, direction, trigger).inc()

    def failed(self, fleet: str, step: str) -> None:
        """Count a failed switch."""
        self.failures.labels(fleet, step).inc()

    def recovered(self, fleet: str, outcome: str) -> None:
        """Count an interrupted switch resolved from the journal (or a failed try)."""
        self.recoveries.labels(fleet, outcome).inc()

    def deferred(self, fleet: str, reason: str) -> None:
        """Count an alert deferred (kept to be judged again when ``reason`` has passed)."""
        self.deferrals.labels(fleet, reason).inc()

    def notified(self, outcome: str) -> None:
        """Count a delivery to /webhook/notify by what became of it."""
        self.notifications.labels(outcome).inc()


_BUILD_INFO: Final = BuildInfoCollector()  # the version and revision of this process


def multiprocess_dir() -> str | None:
    """The multiprocess directory when running under ``serve``, else None."""
    return os.environ.get(PROMETHEUS_MULTIPROC_DIR) or None


def render(config: Config, store: StateStore, own_registry: CollectorRegistry) -> bytes:
    """The /metrics body: counters (summed over workers when multiprocess) and state gauges."""
    registry = HostRegistry(config.host)  # every sample gets the `host` label there
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(own_registry))
    registry.register(FleetStateCollector(config, store))
    registry.register(_BUILD_INFO)
    return generate_latest(registry)


class _Forward(Collector):
    def __init__(self, inner: CollectorRegistry) -> None:
        self.inner = inner

    def collect(self) -> Iterable[Metric]:
        return self.inner.collect()
