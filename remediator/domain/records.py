"""The records the state file keeps for a fleet: its switches (history), the switch under way
(the journal), the alerts deferred to be judged again, and its last failure.

Plain dataclasses with ``to_dict``/``from_dict``; ``from_dict`` raises ValueError, KeyError or
TypeError on a malformed entry (:mod:`remediator.domain.state` holds what they make up).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Final

__all__ = [
    "DeferredAlert",
    "Failure",
    "SwitchJournal",
    "SwitchRecord",
    "json_form",
    "num",
    "opt_num",
    "text",
]

# Fields whose JSON name is not their own: a record's models are ``from``/``to`` everywhere
# (the history endpoint, the journal entry, ``last_failure``).
JSON_NAMES: Final = {"from_model": "from", "to_model": "to"}


def json_form(record: Any) -> dict[str, Any]:
    """A record's JSON form: each field of the dataclass ``record`` in order, under its JSON
    name (:data:`JSON_NAMES`); a nested record by its own ``to_dict``, a list or dict copied."""
    return {
        JSON_NAMES.get(f.name, f.name): _json_value(getattr(record, f.name)) for f in fields(record)
    }


def _json_value(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


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
        """The JSON form (``from``/``to`` as in the history endpoint): ``recovery`` only when
        set, and a move's ``action``, ``from_gpu`` and ``to_gpu`` only on a move."""
        d = json_form(self)
        if self.recovery is None:
            del d["recovery"]
        if self.action == "switch":
            del d["action"], d["from_gpu"], d["to_gpu"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SwitchRecord:
        """Parse the JSON form; raise ValueError/KeyError/TypeError when malformed."""
        alert_key = d.get("alert_key")
        record = cls(
            time=num(d["time"]),
            fleet=text(d["fleet"]),
            from_model=text(d["from"]),
            to_model=text(d["to"]),
            direction=text(d["direction"]),
            trigger=text(d["trigger"]),
            reason=str(d.get("reason", "")),
            alert_key=None if alert_key is None else text(alert_key),
            recovery=None if d.get("recovery") is None else text(d["recovery"]),
            action=text(d.get("action", "switch")),
            from_gpu=None if d.get("from_gpu") is None else text(d["from_gpu"]),
            to_gpu=None if d.get("to_gpu") is None else text(d["to_gpu"]),
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
        """The JSON form; a move's ``from_gpu`` and ``to_gpu`` only on a move."""
        d = json_form(self)
        if not self.to_gpu:
            del d["from_gpu"], d["to_gpu"]
        return d

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
            started_at=num(d["started_at"]),
            from_model=text(d["from"]),
            to_model=text(d["to"]),
            target=target,
            direction=text(d["direction"]),
            trigger=text(d["trigger"]),
            reason=str(d.get("reason", "")),
            alert_key=None if alert_key is None else text(alert_key),
            planned=[text(s) for s in d.get("planned", [])],
            done=[text(s) for s in d.get("done", [])],
            recovery_attempts=attempts,
            from_gpu=None if d.get("from_gpu") is None else text(d["from_gpu"]),
            to_gpu=None if d.get("to_gpu") is None else text(d["to_gpu"]),
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
        """The JSON form, its labels sorted."""
        return {**json_form(self), "labels": dict(sorted(self.labels.items()))}

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
            key=text(d["key"]),
            direction=text(d["direction"]),
            trigger=text(d["trigger"]),
            reason=text(d["reason"]),
            detail=str(d.get("detail", "")),
            started_at=num(d["started_at"]),
            deferred_at=num(d["deferred_at"]),
            acts_at=num(d["acts_at"]),
            labels={text(k): text(v) for k, v in labels.items()},
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
        return json_form(self)


def text(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}")
    return float(v)


def opt_num(v: Any) -> float | None:
    return None if v is None else num(v)
