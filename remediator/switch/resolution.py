"""What resolving an interrupted switch or move is made of, shared by
:mod:`remediator.switch.recovery` (switches, and the commit of a finished one) and
:mod:`remediator.switch.recovery_moves` (moves): the outcomes, the failure, and the state
changes of a switch rolled forward or back."""

from __future__ import annotations

from typing import Final, NoReturn, Protocol, runtime_checkable

from remediator.config import FleetConfig
from remediator.domain import decisions
from remediator.domain.kinds import Direction, RecoveryOutcome
from remediator.domain.loggers import RECOVERY as log
from remediator.domain.notices import Notice
from remediator.domain.records import Failure, SwitchJournal, SwitchRecord
from remediator.domain.state import FleetState
from remediator.store.locks import StateError
from remediator.switch.plan import SwitchPlan
from remediator.switch.tools import SwitchTools

__all__ = [
    "FAILED",
    "ROLLED_BACK",
    "ROLLED_FORWARD",
    "RecoveryFailed",
    "Resolver",
    "apply_move",
    "apply_switch",
    "close_rolled_back",
    "fail",
]


ROLLED_FORWARD: Final = RecoveryOutcome.ROLLED_FORWARD
ROLLED_BACK: Final = RecoveryOutcome.ROLLED_BACK
FAILED: Final = RecoveryOutcome.FAILED


class RecoveryFailed(StateError):
    """An interrupted switch could not be resolved; its journal entry stays open."""


@runtime_checkable
class Resolver(Protocol):
    """What recovery asks of a fleet's actions (FleetActions has both)."""

    def inspect(self, model: str) -> list[str]:
        """Why the fleet does not run ``model`` now; empty when it does."""
        ...

    def restore(self, old: str, new: str, *, restart: bool) -> list[str]:
        """Put the fleet back on ``old``; return what could not be done."""
        ...


def apply_switch(
    tools: SwitchTools,
    fleet: FleetConfig,
    fs: FleetState,
    entry: SwitchJournal | SwitchPlan,
    target: int,
    *,
    reason: str,
    recovery: str | None = None,
) -> SwitchRecord:
    now = tools.now()
    failed_up = entry.direction == Direction.DOWN and decisions.upgrade_failed(fleet, fs, now)
    return fs.apply_switch(
        fleet,
        target,
        direction=entry.direction,
        trigger=entry.trigger,
        reason=reason,
        now=now,
        alert_key=entry.alert_key,
        upgrade_failed=failed_up,
        recovery=recovery,
    )


def apply_move(
    tools: SwitchTools,
    fleet: FleetConfig,
    fs: FleetState,
    entry: SwitchJournal | SwitchPlan,
    gpu: str,
    reason: str,
) -> SwitchRecord:
    return fs.apply_move(
        fleet,
        gpu,
        trigger=entry.trigger,
        reason=reason,
        now=tools.now(),
        alert_key=entry.alert_key,
    )


def close_rolled_back(
    tools: SwitchTools, fleet: FleetConfig, fs: FleetState, entry: SwitchJournal, what: str
) -> None:
    now = tools.now()
    fs.journal = None
    fs.history.append(
        SwitchRecord(
            time=now,
            fleet=fleet.name,
            from_model=entry.from_model,
            to_model=entry.to_model,
            direction=entry.direction,
            trigger=entry.trigger,
            reason=f"recovery: rolled back ({entry.reason})",
            alert_key=entry.alert_key,
            recovery=ROLLED_BACK,
        )
    )
    message = f"{what}; rolled back to {entry.from_model}"
    fs.fail(Failure(now, "recovery", message, entry.from_model, entry.to_model), entry.alert_key)


def fail(
    tools: SwitchTools, fleet: FleetConfig, entry: SwitchJournal, problems: list[str]
) -> NoReturn:
    message = (
        f"fleet {fleet.name}: could not resolve the interrupted switch {entry.from_model} -> "
        f"{entry.to_model} ({'; '.join(problems)}); its journal entry stays open and is tried "
        "again at the next start or switch"
    )
    log.error("%s", message)
    try:
        with tools.store.transaction() as state:
            state.notices.append(Notice(tools.now(), message))
    except StateError as exc:
        log.error("fleet %s: could not add the notice: %s", fleet.name, exc)
    tools.observer.recovered(fleet.name, FAILED)
    raise RecoveryFailed(message)
