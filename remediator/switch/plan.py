"""What a switch is, for every part that plans, performs or reports one: the plan, its failure,
its outcome, the protocols of the actions that carry it out and of the observer told about it.

The bottom of :mod:`remediator.switch`: it imports nothing of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from remediator.config import FleetConfig, Rung
from remediator.domain.decisions import Decision
from remediator.domain.kinds import Direction, Trigger
from remediator.domain.records import SwitchRecord

__all__ = [
    "DIRECTIONS",
    "Actions",
    "Done",
    "NullObserver",
    "Outcome",
    "StepRecorder",
    "SwitchFailed",
    "SwitchObserver",
    "SwitchPlan",
    "switch_wait",
]

DIRECTIONS = tuple(Direction)


@dataclass(frozen=True)
class SwitchPlan:
    """What a switch will do: the fleet, the two rungs and why."""

    fleet: FleetConfig
    from_rung: Rung
    to_rung: Rung
    direction: Direction
    trigger: Trigger
    reason: str
    alert_key: str | None = None
    # A move (remediator.domain.moves): the same rung, the model server recreated on ``to_gpu``.
    from_gpu: str | None = None
    to_gpu: str | None = None


class SwitchFailed(RuntimeError):
    """A step of a switch failed; everything done before it was rolled back."""

    def __init__(self, step: str, cause: str, rollback_errors: list[str] | None = None) -> None:
        self.step = step
        self.cause = cause
        self.rollback_errors = rollback_errors or []
        extra = f"; rollback problems: {'; '.join(self.rollback_errors)}" if rollback_errors else ""
        super().__init__(f"switch failed at step '{step}': {cause}{extra}")


class StepRecorder(Protocol):
    """Told each completed step of a switch: ``(step, what it was done to)``."""

    def __call__(self, step: str, detail: str = "") -> None: ...


@dataclass(frozen=True)
class Done:
    """A step of a switch just completed, as a step module yields it: the caller journals it
    (``step`` and ``detail``, told to the :class:`StepRecorder`) before the next step begins.
    ``said`` is what the switch's list of steps shows of it."""

    step: str
    detail: str = ""
    said: tuple[str, ...] = ()


class Actions(Protocol):
    """Carries out a planned switch in the outside world, or raises SwitchFailed after rollback."""

    def execute(
        self, plan: SwitchPlan, dry_run: bool, record: StepRecorder | None = None
    ) -> list[str]:
        """Perform the plan; return the steps taken (or that would be taken, in a dry run).

        ``record`` (when given) is told each completed step, for the switch journal."""
        ...


@dataclass
class Outcome:
    """The result of one switch request."""

    fleet: str
    direction: str
    decision: Decision
    switched: bool = False
    dry_run: bool = False
    record: SwitchRecord | None = None
    failure: SwitchFailed | None = None
    steps: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True unless the switch was attempted and failed."""
        return self.failure is None

    def to_dict(self) -> dict[str, object]:
        """The JSON form returned by the HTTP API and printed by the CLI."""
        return {
            "fleet": self.fleet,
            "direction": self.direction,
            "switched": self.switched,
            "dry_run": self.dry_run,
            "reason": self.decision.reason,
            "detail": self.decision.detail,
            "from": self.record.from_model if self.record else None,
            "to": self.record.to_model if self.record else None,
            "steps": self.steps,
            "error": str(self.failure) if self.failure else None,
            "failed_step": self.failure.step if self.failure else None,
            "duration_seconds": round(self.duration_seconds, 3),
        }


class SwitchObserver(Protocol):
    """Told about switches and failures (the service counts them as metrics)."""

    def switched(self, fleet: str, direction: str, trigger: str) -> None:
        """A switch was committed."""
        ...

    def failed(self, fleet: str, step: str) -> None:
        """A switch failed at ``step``."""
        ...

    def recovered(self, fleet: str, outcome: str) -> None:
        """An interrupted switch was resolved (``rolled_forward``, ``rolled_back``) or not
        (``failed``)."""
        ...

    def deferred(self, fleet: str, reason: str) -> None:
        """An alert was deferred: refused for ``reason``, to be judged again once it passed."""
        ...


class NullObserver:
    """Told about switches, and tells no one."""

    def switched(self, fleet: str, direction: str, trigger: str) -> None:
        pass

    def failed(self, fleet: str, step: str) -> None:
        pass

    def recovered(self, fleet: str, outcome: str) -> None:
        pass

    def deferred(self, fleet: str, reason: str) -> None:
        pass


def switch_wait(fleet: FleetConfig) -> float:
    """How long a queued alert waits for the fleet's lock: as long as a switch may take."""
    return fleet.pull_timeout_seconds + 2 * fleet.containers.ready_timeout_seconds + 60
