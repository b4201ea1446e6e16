"""The fuzzer's parts (tests/test_fuzz_webhook.py): the recording actions, the tracked
background, the reference model of a fleet and Alertmanager's payload spellings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from remediator.config import FleetConfig
from remediator.switch.background import PendingWork
from remediator.switch.plan import SwitchPlan

T0 = 1_800_000_000  # the fake clock's start (2027), whole seconds


class FakeClock:
    """The service's clock: whole seconds that move only between steps."""

    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


class RecordingActions:
    """The actions' stand-in: records each executed (not dry-run) plan, in order."""

    def __init__(self) -> None:
        self.plans: list[SwitchPlan] = []
        self.lock = threading.Lock()

    def for_fleet(self, fleet: FleetConfig) -> RecordingActions:
        return self

    def execute(self, plan: SwitchPlan, dry_run: bool, record: object = None) -> list[str]:
        if not dry_run:
            with self.lock:
                self.plans.append(plan)
        return [f"switched to {plan.to_rung.name}"]


class Tracked:
    """Wraps a delivery's pending work so that the test can wait until it has run."""

    def __init__(self, work: PendingWork) -> None:
        self.work, self.waits, self.done = work, work.waits, threading.Event()

    def run(self) -> None:
        try:
            self.work.run()
        finally:
            self.done.set()

    def release(self) -> None:
        self.work.release()
        self.done.set()


class TrackingBackground:
    """The service's real Background, with each started work tracked (see ``settle``)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.started = inner, list[Tracked]()

    def start(self, works: list[PendingWork]) -> None:
        tracked = [Tracked(w) for w in works]
        self.started += tracked
        self.inner.start(tracked)

    def settle(self) -> None:
        for work in self.started:
            assert work.done.wait(30), "a background switch did not finish"
        self.started.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class FleetModel:
    """The reference model of one fleet: where it stands and what it switched."""

    config: FleetConfig
    index: int = 0
    last_switch_at: float | None = None
    keys: set[str] = field(default_factory=set)  # alert keys that switched the fleet
    switches: list[tuple[str, str, str, str, str | None]] = field(default_factory=list)

    def apply(self, target: int, direction: str, trigger: str, key: str | None, now: float) -> None:
        names = self.config.ladder.names
        self.switches.append((names[self.index], names[target], direction, trigger, key))
        self.index, self.last_switch_at = target, now
        if key is not None:
            self.keys.add(key)

    def judge_alert(self, direction: str, key: str, started: float, now: float) -> int | None:
        """The rung an alert moves the fleet to, or None (the rules of decisions.py, next)."""
        cfg, last = self.config, self.last_switch_at
        if direction == "up" and (not cfg.auto_upgrade.enabled or self.index == 0):
            return None
        if key in self.keys or (last is not None and started < last):
            return None  # duplicate, stale
        if last is not None and now - last < cfg.cooldown_seconds:
            return None
        if direction == "down":
            return self.index + 1 if self.index < len(cfg.ladder) - 1 else None
        if now - (last or 0.0) < cfg.auto_upgrade.quiet_seconds:
            return None
        return self.index - 1

    def judge_manual(self, direction: str) -> int | None:
        top = len(self.config.ladder) - 1
        if direction == "down":
            return self.index + 1 if self.index < top else None
        if direction == "up":
            return self.index - 1 if self.index > 0 else None
        return 0 if self.index > 0 else None


def stamp(whole: int, ns: int, style: int) -> str:
    """Alertmanager's RFC 3339 in three spellings: nanoseconds Z, +00:00, a +02:00 offset."""
    if style == 0:
        base = datetime.fromtimestamp(whole, UTC)
        return f"{base:%Y-%m-%dT%H:%M:%S}.{ns:09d}Z"
    zone = UTC if style == 1 else timezone(timedelta(hours=2))
    return datetime.fromtimestamp(whole, zone).replace(microsecond=ns // 1000).isoformat()


def body_of(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """An Alertmanager v4 delivery around ``alerts``."""
    common = dict(alerts[0]["labels"])
    for alert in alerts[1:]:
        common = {k: v for k, v in common.items() if alert["labels"].get(k) == v}
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "version": "4",
        "groupKey": '{}:{alertname="ModelFleetVRAMErrors"}',
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "model-fleet-remediator",
        "groupLabels": {"alertname": "ModelFleetVRAMErrors"},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    }


def parse(text: str) -> float:
    """startsAt -> epoch seconds, to microseconds, independently of remediator.domain.alerts."""
    main, _, zone = text.replace("Z", "+00:00").rpartition("+")
    if "." in main:
        head, frac = main.split(".")
        main = f"{head}.{(frac + '000000')[:6]}"
    return datetime.fromisoformat(f"{main}+{zone}").timestamp()
