"""Carrying out a decided switch as one transaction: its journal entry, the actions, then the
commit, or the failure recorded (and the rollback the actions did).

The caller holds the fleet's switch lock from the decision on (:mod:`remediator.switch.engine`
for a person's request). An alert's switch runs after the webhook's answer, as the work its
delivery leaves (:class:`HeldSwitch`, or :class:`QueuedAlerts` when the fleet was switching):
the background thread starts here, so that the path from the delivery to the commit enters
each module once (docs/architecture.md, "Remediator: layers").
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from remediator.config import FleetConfig
from remediator.domain.decisions import Decision
from remediator.domain.loggers import INTAKE
from remediator.domain.loggers import SWITCHING as log
from remediator.domain.records import Failure, SwitchJournal
from remediator.store.locks import StateError
from remediator.switch import recovery
from remediator.switch.journal import MOVE_PLANNED, Journal, crash_point, planned_steps
from remediator.switch.plan import (
    Actions,
    Outcome,
    StepRecorder,
    SwitchFailed,
    SwitchPlan,
    switch_wait,
)
from remediator.switch.tools import SwitchTools

__all__ = ["HeldSwitch", "QueuedAlerts", "carry_out", "intent"]


def carry_out(
    tools: SwitchTools,
    fleet: FleetConfig,
    direction: str,
    decision: Decision,
    plan: SwitchPlan | None,
    dry_run: bool,
    started: float,
) -> Outcome:
    """Perform a decided switch and commit it, or record its failure.

    The caller holds the fleet's switch lock from the decision on: nothing can have
    changed the fleet since. ``started`` is the decision's ``time.monotonic()``.
    """
    dry_run = dry_run or fleet.dry_run
    outcome = Outcome(fleet.name, direction, decision, dry_run=dry_run)
    if plan is None:
        log.info(
            "fleet %s: no %s switch (%s): %s",
            fleet.name,
            direction,
            decision.reason,
            decision.detail,
        )
        return outcome
    assert decision.target is not None  # a plan comes from a decision to switch
    _announce(plan, decision, dry_run)
    actions = tools.actions(fleet)
    record: StepRecorder | None = None
    if not dry_run:
        # The intent first: a StateError here means nothing was done (the caller's error).
        journal = Journal(tools.store, fleet.name, clock=tools.clock, on_step=tools.on_step)
        journal.open(intent(tools, plan, decision.target))
        record = journal.record
    try:
        outcome.steps = actions.execute(plan, dry_run, record)
    except SwitchFailed as exc:
        outcome.failure = exc
        outcome.duration_seconds = time.monotonic() - started
        log.error("fleet %s: %s", fleet.name, exc, extra={"fleet": fleet.name, "step": exc.step})
        tools.observer.failed(fleet.name, exc.step)
        if not dry_run:
            _record_failure(tools, fleet, plan, exc)
        return outcome
    if dry_run:
        outcome.duration_seconds = time.monotonic() - started
        log.info("fleet %s: dry run, nothing changed: %s", fleet.name, "; ".join(outcome.steps))
        return outcome
    return _commit(tools, plan, decision.target, actions, outcome, started)


def _announce(plan: SwitchPlan, decision: Decision, dry_run: bool) -> None:
    """Log the switch about to start, with its fields for a JSON log, and the decision's
    detail: an alert's decision (why it moved, or why it did not) is shown nowhere else but in
    the webhook's answer to Alertmanager."""
    fleet, direction = plan.fleet, plan.direction
    log.info(
        "fleet %s: switching %s -> %s (direction=%s trigger=%s reason=%s%s): %s",
        fleet.name,
        plan.from_rung.name,
        plan.to_rung.name,
        direction,
        plan.trigger,
        decision.reason,
        ", dry run" if dry_run else "",
        decision.detail,
        extra={
            "fleet": fleet.name,
            "from_model": plan.from_rung.name,
            "to_model": plan.to_rung.name,
            "direction": direction,
            "trigger": plan.trigger,
            "reason": decision.reason,
            "detail": decision.detail,
        },
    )


def _commit(
    tools: SwitchTools,
    plan: SwitchPlan,
    target: int,
    actions: Actions,
    outcome: Outcome,
    started: float,
) -> Outcome:
    """Commit the switch carried out, or roll it back when its state cannot be saved."""
    fleet, direction = plan.fleet, plan.direction
    try:
        outcome.record = recovery.commit(tools, fleet, plan, target)
    except StateError as exc:
        problems = recovery.undo_uncommitted(tools, fleet, plan, actions, exc)
        cause = f"switched, but the state could not be saved ({exc}); " + (
            "rolled back" if not problems else "the rollback left the journal entry open"
        )
        outcome.failure = SwitchFailed("state", cause, problems)
        log.error("fleet %s: %s", fleet.name, outcome.failure)
        outcome.duration_seconds = time.monotonic() - started
        tools.observer.failed(fleet.name, "state")
        return outcome
    crash_point("committed")
    outcome.switched = True
    outcome.duration_seconds = time.monotonic() - started
    tools.observer.switched(fleet.name, direction, plan.trigger)
    log.info(
        "fleet %s: now on %s (%.2f s)",
        fleet.name,
        plan.to_rung.name,
        outcome.duration_seconds,
        extra={"fleet": fleet.name, "model": plan.to_rung.name, "direction": direction},
    )
    return outcome


def intent(tools: SwitchTools, plan: SwitchPlan, target: int) -> SwitchJournal:
    """The journal entry of a switch about to start."""
    return SwitchJournal(
        started_at=tools.now(),
        from_model=plan.from_rung.name,
        to_model=plan.to_rung.name,
        target=target,
        direction=plan.direction,
        trigger=plan.trigger,
        reason=plan.reason,
        alert_key=plan.alert_key,
        planned=(
            planned_steps(plan.to_rung.create is not None)
            if plan.to_gpu is None
            else list(MOVE_PLANNED)
        ),
        from_gpu=plan.from_gpu,
        to_gpu=plan.to_gpu,
    )


def _record_failure(
    tools: SwitchTools, fleet: FleetConfig, plan: SwitchPlan, exc: SwitchFailed
) -> None:
    """Record a failed switch; its journal entry closes unless the rollback left something
    undone, which the next start or switch then resolves."""
    with tools.store.transaction() as state:
        fs = state.fleets[fleet.name]
        now = tools.now()
        if not exc.rollback_errors:
            fs.journal = None
        failure = Failure(now, exc.step, str(exc), plan.from_rung.name, plan.to_rung.name)
        fs.fail(failure, plan.alert_key)


@dataclass
class HeldSwitch:
    """A switch an alert chose under the fleet's lock, carried out while that lock is still
    held, after the webhook's answer."""

    tools: SwitchTools
    plan: SwitchPlan
    decision: Decision
    lock: contextlib.ExitStack
    started: float  # the decision's time.monotonic()
    waits = False

    def run(self) -> None:
        """Switch, commit or roll back, then let go of the lock."""
        tools, plan = self.tools, self.plan
        try:
            with self.lock:
                carry_out(
                    tools, plan.fleet, plan.direction, self.decision, plan, False, self.started
                )
        except Exception:  # a background thread has no caller to tell: log it whole
            INTAKE.exception(
                "fleet %s: switch for alert %s crashed", plan.fleet.name, plan.alert_key
            )

    def release(self) -> None:
        """Let go of the lock without switching."""
        self.lock.close()


@dataclass
class QueuedAlerts:
    """Alerts that came while their fleet was switching: once its lock is free, ``choose``
    judges them (:mod:`remediator.switch.intake`) and the switch chosen is carried out."""

    tools: SwitchTools
    fleet: FleetConfig
    keys: list[str]
    choose: Callable[[], tuple[SwitchPlan, Decision] | None]
    waits = True

    def run(self) -> None:
        """Wait for the fleet's lock, then judge and switch as a delivery does."""
        fleet, tools, keys = self.fleet, self.tools, self.keys
        try:
            with tools.store.switch_lock(fleet.name, switch_wait(fleet), handling=keys):
                started = time.monotonic()
                chosen = self.choose()
                if chosen is not None:
                    plan, decision = chosen
                    carry_out(tools, fleet, plan.direction, decision, plan, False, started)
        except Exception:  # a background thread has no caller to tell: log it whole
            INTAKE.exception("fleet %s: queued alerts %s crashed", fleet.name, ", ".join(keys))

    def release(self) -> None:
        """Nothing is held."""
