"""What the state file ``model_fleet_state.json`` holds, and its JSON form.

Plain dataclasses with ``to_dict``/``from_dict``; ``from_dict`` raises ValueError, KeyError or
TypeError on a malformed entry so that :class:`remediator.store.state.StateStore` can keep the bad
file aside. Reading, locking and writing the file is the store's job, not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from remediator.config import FleetConfig
from remediator.domain.kinds import Direction

SCHEMA_VERSION: Final = 1
MAX_NOTICES: Final = 20
MAX_NOTIFICATIONS: Final = 50
# Deferred alerts kept per fleet: Alertmanager sends one per start of the model server, so a
# handful at most; the bound only stops a flood of distinct alerts from growing the file.
MAX_DEFERRED: Final = 20


@dataclass
class SwitchRecord:
    """One model switch in a fleet's history."""

    time: float
    fleet: str
    from_model: str
    to_model: str
    direction: str  # down | up | reset
    trigger: str  # alert | manual | auto
    reason: str
    alert_key: str | None = None
    # Set when a start-up or a later switch resolved this switch from its journal entry:
    # ``rolled_forward`` (it counts as a switch) or ``rolled_back`` (it never took effect).
    recovery: str | None = None
    # A move (remediator.domain.moves) keeps the model and changes the GPU: ``action: move`` with
    # ``from_gpu``/``to_gpu``; a switch of model writes no action (files before moves had none).
    action: str = "switch"
    from_gpu: str | None = None
    to_gpu: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``from``/``to`` as in the history endpoint)."""
        d: dict[str, Any] = {
            "time": self.time,
            "fleet": self.fleet,
            "from": self.from_model,
            "to": self.to_model,
            "direction": self.direction,
            "trigger": self.trigger,
            "reason": self.reason,
            "alert_key": self.alert_key,
        }
        if self.recovery is not None:
            d["recovery"] = self.recovery
        if self.action != "switch":
            d.update(action=self.action, from_gpu=self.from_gpu, to_gpu=self.to_gpu)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SwitchRecord:
        """Parse the JSON form; raise ValueError/KeyError/TypeError when malformed."""
        alert_key = d.get("alert_key")
        record = cls(
            time=_num(d["time"]),
            fleet=_str(d["fleet"]),
            from_model=_str(d["from"]),
            to_model=_str(d["to"]),
            direction=_str(d["direction"]),
            trigger=_str(d["trigger"]),
            reason=str(d.get("reason", "")),
            alert_key=None if alert_key is None else _str(alert_key),
            recovery=None if d.get("recovery") is None else _str(d["recovery"]),
            action=_str(d.get("action", "switch")),
            from_gpu=None if d.get("from_gpu") is None else _str(d["from_gpu"]),
            to_gpu=None if d.get("to_gpu") is None else _str(d["to_gpu"]),
        )
        return record


@dataclass
class SwitchJournal:
    """A switch under way: written before its first side effect, closed by its commit.

    ``done`` lists the steps completed, in order (``restarted_app app-1``: step, then what).
    An entry found open by a process that holds the fleet's switch lock belongs to a switch
    that died: :mod:`remediator.switch.recovery` rolls it forward or back.
    """

    started_at: float
    from_model: str
    to_model: str
    target: int
    direction: str
    trigger: str
    reason: str
    alert_key: str | None = None
    planned: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    recovery_attempts: int = 0
    # A move (same model, another GPU); entries of switches have neither.
    from_gpu: str | None = None
    to_gpu: str | None = None

    def has(self, step: str) -> bool:
        """Whether ``step`` (a step name, without what it was done to) was recorded."""
        return any(d.split(" ", 1)[0] == step for d in self.done)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "started_at": self.started_at,
            "from": self.from_model,
            "to": self.to_model,
            "target": self.target,
            "direction": self.direction,
            "trigger": self.trigger,
            "reason": self.reason,
            "alert_key": self.alert_key,
            "planned": list(self.planned),
            "done": list(self.done),
            "recovery_attempts": self.recovery_attempts,
            **({"from_gpu": self.from_gpu, "to_gpu": self.to_gpu} if self.to_gpu else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SwitchJournal:
        """Parse the JSON form; raise ValueError/KeyError/TypeError when malformed."""
        if not isinstance(d, dict):
            raise TypeError("journal entry is not an object")
        target, attempts = d["target"], d.get("recovery_attempts", 0)
        for v in (target, attempts):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"expected a non-negative integer, got {v!r}")
        alert_key = d.get("alert_key")
        return cls(
            started_at=_num(d["started_at"]),
            from_model=_str(d["from"]),
            to_model=_str(d["to"]),
            target=target,
            direction=_str(d["direction"]),
            trigger=_str(d["trigger"]),
            reason=str(d.get("reason", "")),
            alert_key=None if alert_key is None else _str(alert_key),
            planned=[_str(s) for s in d.get("planned", [])],
            done=[_str(s) for s in d.get("done", [])],
            recovery_attempts=attempts,
            from_gpu=None if d.get("from_gpu") is None else _str(d["from_gpu"]),
            to_gpu=None if d.get("to_gpu") is None else _str(d["to_gpu"]),
        )


@dataclass
class DeferredAlert:
    """An alert refused for a reason that passes (the cooldown, the hourly cap, ...), kept to be
    judged again at ``acts_at`` if it still fires then (:mod:`remediator.switch.deferrals`).

    Kept in the state file, not in memory: a remediator restarted meanwhile still acts on it.
    ``labels`` are the alert's own, to ask Prometheus whether it still fires.
    """

    key: str  # fingerprint@startsAt
    direction: str  # down | up
    trigger: str  # alert | auto
    reason: str  # the refusal's reason code: cooldown, rate_limited, ...
    detail: str
    started_at: float  # the alert's startsAt
    deferred_at: float  # first refused
    acts_at: float  # when the reason passes
    labels: dict[str, str] = field(default_factory=dict)
    error_count: int | None = None  # a downgrade alert's ``value``
    # Prometheus generated it (a generatorURL): ``ALERTS`` there tells whether it still fires.
    # One posted to Alertmanager by hand (amtool, curl) only ends with its resolution.
    from_prometheus: bool = False

    @property
    def alertname(self) -> str:
        """The alert's name, from its labels."""
        return self.labels.get("alertname", "")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "key": self.key,
            "direction": self.direction,
            "trigger": self.trigger,
            "reason": self.reason,
            "detail": self.detail,
            "started_at": self.started_at,
            "deferred_at": self.deferred_at,
            "acts_at": self.acts_at,
            "labels": dict(sorted(self.labels.items())),
            "error_count": self.error_count,
            "from_prometheus": self.from_prometheus,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeferredAlert:
        """Parse the JSON form; raise ValueError/KeyError/TypeError when malformed."""
        if not isinstance(d, dict):
            raise TypeError("deferred alert is not an object")
        labels, count = d.get("labels", {}), d.get("error_count")
        if not isinstance(labels, dict):
            raise TypeError("labels must be an object")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise TypeError(f"error_count must be an integer, got {count!r}")
        return cls(
            key=_str(d["key"]),
            direction=_str(d["direction"]),
            trigger=_str(d["trigger"]),
            reason=_str(d["reason"]),
            detail=str(d.get("detail", "")),
            started_at=_num(d["started_at"]),
            deferred_at=_num(d["deferred_at"]),
            acts_at=_num(d["acts_at"]),
            labels={_str(k): _str(v) for k, v in labels.items()},
            error_count=count,
            from_prometheus=bool(d.get("from_prometheus", False)),
        )


@dataclass(frozen=True)
class Failure:
    """Why a fleet's last switch failed, or its recovery rolled it back: the state's
    ``last_failure`` (its JSON form, :meth:`to_dict`, is what status shows)."""

    time: float
    step: str
    message: str
    from_model: str
    to_model: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``time``, ``step``, ``message``, ``from``, ``to``."""
        return {
            "time": self.time,
            "step": self.step,
            "message": self.message,
            "from": self.from_model,
            "to": self.to_model,
        }


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
        self.last_failure = None
        self.history.append(record)
        if alert_key is not None:
            self.processed_alerts[alert_key] = now
        return record

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
        self.last_failure = None
        self.history.append(record)
        if alert_key is not None:
            self.processed_alerts[alert_key] = now
        return record

    def switches_since(self, since: float) -> int:
        """How many switches happened at or after ``since`` (a rolled-back one never did)."""
        return sum(1 for r in self.history if r.time >= since and r.recovery != "rolled_back")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "current_model": self.current_model,
            "index": self.index,
            "vram_error_count": self.vram_error_count,
            "last_switch_at": self.last_switch_at,
            "last_upgrade_at": self.last_upgrade_at,
            "last_upgrade_failed_at": self.last_upgrade_failed_at,
            "last_failure": self.last_failure,
            "history": [r.to_dict() for r in self.history],
            "processed_alerts": dict(sorted(self.processed_alerts.items())),
            "journal": None if self.journal is None else self.journal.to_dict(),
            "deferred": [a.to_dict() for a in sorted(self.deferred.values(), key=_by_time)],
            "gpu": self.gpu,
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
            current_model=_str(d["current_model"]),
            index=index,
            vram_error_count=count,
            last_switch_at=_opt_num(d.get("last_switch_at")),
            last_upgrade_at=_opt_num(d.get("last_upgrade_at")),
            last_upgrade_failed_at=_opt_num(d.get("last_upgrade_failed_at")),
            last_failure=failure,
            history=[SwitchRecord.from_dict(r) for r in history],
            processed_alerts={_str(k): _num(v) for k, v in alerts.items()},
            journal=None if journal is None else SwitchJournal.from_dict(journal),
            deferred={a.key: a for a in map(DeferredAlert.from_dict, deferred)},
            gpu=None if d.get("gpu") is None else _str(d["gpu"]),
        )


def _by_time(alert: DeferredAlert) -> tuple[float, str]:
    return (alert.acts_at, alert.key)


@dataclass
class Notice:
    """A problem found with the state file, shown by ``status`` until cleared by a reset."""

    time: float
    message: str
    kept_as: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"time": self.time, "message": self.message, "kept_as": self.kept_as}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Notice:
        """Parse the JSON form."""
        kept = d.get("kept_as")
        return cls(
            time=_num(d["time"]),
            message=_str(d["message"]),
            kept_as=None if kept is None else _str(kept),
        )


@dataclass
class Notification:
    """One alert Alertmanager delivered to /webhook/notify, and what became of its forwarding.

    ``key`` is the alert's fingerprint@startsAt: a delivery Alertmanager retries (or repeats)
    updates the entry with that key and status instead of adding another.
    """

    time: float
    key: str
    status: str  # firing | resolved
    alertname: str
    fleet: str | None
    severity: str | None
    summary: str
    outcome: str  # forwarded | failed | logged

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "time": self.time,
            "key": self.key,
            "status": self.status,
            "alertname": self.alertname,
            "fleet": self.fleet,
            "severity": self.severity,
            "summary": self.summary,
            "outcome": self.outcome,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Notification:
        """Parse the JSON form."""
        fleet, severity = d.get("fleet"), d.get("severity")
        return cls(
            time=_num(d["time"]),
            key=_str(d["key"]),
            status=_str(d["status"]),
            alertname=_str(d["alertname"]),
            fleet=None if fleet is None else _str(fleet),
            severity=None if severity is None else _str(severity),
            summary=_str(d["summary"]),
            outcome=_str(d["outcome"]),
        )


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


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}")
    return float(v)


def _opt_num(v: Any) -> float | None:
    return None if v is None else _num(v)
