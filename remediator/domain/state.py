"""What the state file ``model_fleet_state.json`` holds, and its JSON form.

Plain dataclasses with ``to_dict``/``from_dict``; ``from_dict`` raises ValueError, KeyError or
TypeError on a malformed entry so that :class:`remediator.store.state.StateStore` can keep the bad
file aside. Reading, locking and writing the file is the store's job, not this module's.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Final

from remediator.config import FleetConfig
from remediator.domain.kinds import Direction
from remediator.domain.notices import Notice, Notification
from remediator.domain.records import (
    DeferredAlert,
    Failure,
    SwitchJournal,
    SwitchRecord,
    json_form,
    num,
    opt_num,
    text,
)

SCHEMA_VERSION: Final = 1
MAX_NOTICES: Final = 20
MAX_NOTIFICATIONS: Final = 50
# Deferred alerts kept per fleet: Alertmanager sends one per start of the model server, so a
# handful at most; the bound only stops a flood of distinct alerts from growing the file.
MAX_DEFERRED: Final = 20


@dataclass
class FleetState:
    """Where one fleet stands."""

    current_model: str
    index: int
    vram_error_count: int = 0
    last_switch_at: float | None = None
    last_upgrade_at: float | None = None
    last_upgrade_failed_at: float | None = None
    last_failure: dict[str, Any] | None = None
    history: list[SwitchRecord] = field(default_factory=list)
    processed_alerts: dict[str, float] = field(default_factory=dict)
    journal: SwitchJournal | None = None  # the switch under way (or interrupted), if any
    # Alerts refused for a reason that passes, by key: judged again when it has passed.
    deferred: dict[str, DeferredAlert] = field(default_factory=dict)
    # The GPU the model server runs on after a move; None: the configured gpu (never moved,
    # or a state file written before moves existed).
    gpu: str | None = None

    def defer(self, alert: DeferredAlert) -> bool:
        """Keep ``alert`` (replacing an entry of the same key, keeping when it was first
        deferred); True when it is newly deferred or deferred for another reason."""
        old = self.deferred.get(alert.key)
        if old is not None:
            alert.deferred_at = old.deferred_at
        self.deferred[alert.key] = alert
        while len(self.deferred) > MAX_DEFERRED:
            oldest = min(self.deferred.values(), key=lambda a: (a.started_at, a.key))
            del self.deferred[oldest.key]
        return old is None or old.reason != alert.reason

    @classmethod
    def initial(cls, fleet: FleetConfig) -> FleetState:
        """A fleet at the top of its ladder with no history."""
        return cls(current_model=fleet.ladder[0].name, index=0)

    def fail(self, failure: Failure, alert_key: str | None = None) -> None:
        """Record ``failure`` as the fleet's last; the alert that asked for the switch (if
        any) is handled: a failed switch is not tried again for a redelivery of it."""
        self.last_failure = failure.to_dict()
        if alert_key is not None:
            self.processed_alerts[alert_key] = failure.time

    def apply_switch(
        self,
        fleet: FleetConfig,
        target: int,
        *,
        direction: str,
        trigger: str,
        reason: str,
        now: float,
        alert_key: str | None = None,
        upgrade_failed: bool = False,
        recovery: str | None = None,
    ) -> SwitchRecord:
        """Move the fleet to rung ``target``, record it and close the journal entry; returns
        the history record."""
        record = SwitchRecord(
            time=now,
            fleet=fleet.name,
            from_model=self.current_model,
            to_model=fleet.ladder[target].name,
            direction=direction,
            trigger=trigger,
            reason=reason,
            alert_key=alert_key,
            recovery=recovery,
        )
        self.journal = None
        self.current_model = record.to_model
        self.index = target
        self.vram_error_count = 0
        self.last_switch_at = now
        if direction == Direction.UP:
            self.last_upgrade_at = now
        elif direction == Direction.RESET:
            # A person chose the top again: forget earlier failed step ups.
            self.last_upgrade_at = None
            self.last_upgrade_failed_at = None
        if upgrade_failed:
            self.last_upgrade_failed_at = now
        return self._recorded(record, alert_key)

    def current_gpu(self, fleet: FleetConfig) -> str:
        """Where the fleet's model server runs now: the last move's GPU, else ``fleet.gpu``."""
        return self.gpu if self.gpu is not None else fleet.gpu

    def apply_move(
        self,
        fleet: FleetConfig,
        gpu: str,
        *,
        trigger: str,
        reason: str,
        now: float,
        alert_key: str | None = None,
    ) -> SwitchRecord:
        """Put the fleet on ``gpu`` with its model, record the move (``action: move``) and
        close the journal entry; a move counts against cooldown and the hourly cap as a
        switch does, since it restarts the model server too."""
        record = SwitchRecord(
            time=now,
            fleet=fleet.name,
            from_model=self.current_model,
            to_model=self.current_model,
            direction=Direction.DOWN,
            trigger=trigger,
            reason=reason,
            alert_key=alert_key,
            action="move",
            from_gpu=self.current_gpu(fleet),
            to_gpu=gpu,
        )
        self.journal = None
        self.gpu = gpu
        self.vram_error_count = 0
        self.last_switch_at = now
        return self._recorded(record, alert_key)

    def _recorded(self, record: SwitchRecord, alert_key: str | None) -> SwitchRecord:
        """Add ``record`` to the history: no failure stands now, and the alert that asked
        for it (if any) is handled."""
        self.last_failure = None
        self.history.append(record)
        if alert_key is not None:
            self.processed_alerts[alert_key] = record.time
        return record

    def switches_since(self, since: float) -> int:
        """How many switches happened at or after ``since`` (a rolled-back one never did)."""
        return sum(1 for r in self.history if r.time >= since and r.recovery != "rolled_back")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            **json_form(self),
            "processed_alerts": dict(sorted(self.processed_alerts.items())),
            "deferred": [a.to_dict() for a in sorted(self.deferred.values(), key=_by_time)],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FleetState:
        """Parse the JSON form; raise ValueError/KeyError/TypeError when malformed."""
        if not isinstance(d, dict):
            raise TypeError("fleet entry is not an object")
        history = d.get("history", [])
        alerts = d.get("processed_alerts", {})
        failure = d.get("last_failure")
        journal = d.get("journal")
        deferred = d.get("deferred", [])  # absent from files written before it existed
        if not isinstance(history, list) or not isinstance(alerts, dict):
            raise TypeError("history must be a list and processed_alerts an object")
        if not isinstance(deferred, list):
            raise TypeError("deferred must be a list")
        if failure is not None and not isinstance(failure, dict):
            raise TypeError("last_failure must be an object")
        index = d["index"]
        count = d.get("vram_error_count", 0)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"vram_error_count must be a non-negative integer, got {count!r}")
        return cls(
            current_model=text(d["current_model"]),
            index=index,
            vram_error_count=count,
            last_switch_at=opt_num(d.get("last_switch_at")),
            last_upgrade_at=opt_num(d.get("last_upgrade_at")),
            last_upgrade_failed_at=opt_num(d.get("last_upgrade_failed_at")),
            last_failure=failure,
            history=[SwitchRecord.from_dict(r) for r in history],
            processed_alerts={text(k): num(v) for k, v in alerts.items()},
            journal=None if journal is None else SwitchJournal.from_dict(journal),
            deferred={a.key: a for a in map(DeferredAlert.from_dict, deferred)},
            gpu=None if d.get("gpu") is None else text(d["gpu"]),
        )


def _by_time(alert: DeferredAlert) -> tuple[float, str]:
    return (alert.acts_at, alert.key)


@dataclass
class State:
    """All fleets. Fleets found in the file but absent from the config are kept as they were."""

    fleets: dict[str, FleetState]
    notices: list[Notice] = field(default_factory=list)
    unconfigured: dict[str, Any] = field(default_factory=dict)
    # The last MAX_NOTIFICATIONS alerts people were told about (absent from older files).
    notifications: list[Notification] = field(default_factory=list)

    def record_notification(self, notification: Notification) -> None:
        """Append ``notification``, replacing an entry of the same alert and status."""
        same = (notification.key, notification.status)
        self.notifications = [n for n in self.notifications if (n.key, n.status) != same]
        self.notifications.append(notification)

    @classmethod
    def from_dict(cls, d: dict[str, Any], configured: Collection[str]) -> State:
        """Parse the whole file's JSON form: the fleets of ``configured`` parsed, the others
        kept as they are; raise ValueError/KeyError/TypeError/AttributeError when malformed."""
        fleets = d.get("fleets")
        if not isinstance(fleets, dict):
            raise TypeError("'fleets' is not an object")
        parsed = {name: FleetState.from_dict(e) for name, e in fleets.items() if name in configured}
        return cls(
            fleets=parsed,
            notices=[Notice.from_dict(n) for n in d.get("notices", [])],
            unconfigured={name: e for name, e in fleets.items() if name not in configured},
            notifications=[Notification.from_dict(n) for n in d.get("notifications", [])],
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the whole file."""
        fleets: dict[str, Any] = dict(self.unconfigured)
        fleets.update({name: fs.to_dict() for name, fs in self.fleets.items()})
        return {
            "schema_version": SCHEMA_VERSION,
            "fleets": dict(sorted(fleets.items())),
            "notices": [n.to_dict() for n in self.notices],
            "notifications": [n.to_dict() for n in self.notifications],
        }
