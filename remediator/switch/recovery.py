"""Resolving an interrupted switch, and committing a finished one.

A fleet's journal entry (:mod:`remediator.switch.journal`) found open by a process that holds the
fleet's switch lock belongs to a switch that died (SIGKILL, a power cut, a full disk). It is
resolved at service start-up, in the CLI before a switch and before any new switch of the
fleet (:meth:`Remediator.request`, :func:`remediator.switch.intake.judge`):

- **rolled forward** when the journal shows the switch reached ``verified_app`` and the fleet
  runs the new model now: the app configs name it, the model server lists it, every container
  of the fleet runs and the app's health probe (``containers.app_health_url``) names it. The
  state then moves to the new rung exactly as the switch's own commit would, with the history
  entry marked ``recovery: rolled_forward``.
- **rolled back** otherwise: the old model is written into the app configs, the new one is
  unloaded and, when the journal shows the configs were written, every container of the fleet
  is restarted and found ready on the old model. The entry closes with a history entry marked
  ``recovery: rolled_back`` (not counted as a switch) and ``last_failure`` step ``recovery``.

Each resolution adds a notice to ``status``, is logged and counted
(``model_fleet_switch_recoveries_total{fleet,outcome}``). Nothing closes the entry before the
fleet is in its final state, so a recovery killed half-way is resolved again by the next one;
both paths are idempotent. When the fleet cannot be put right (Docker gone, a config file
unwritable) the entry stays open, the outcome ``failed`` is counted and RecoveryFailed raised.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final, NoReturn, Protocol, runtime_checkable

from remediator.config import FleetConfig
from remediator.domain import decisions
from remediator.domain.kinds import Direction, RecoveryOutcome
from remediator.domain.notices import Notice
from remediator.domain.records import Failure, SwitchJournal, SwitchRecord
from remediator.domain.state import FleetState
from remediator.store.locks import StateError
from remediator.switch.journal import COMMIT_RETRY_PAUSES, crash_point
from remediator.switch.plan import Actions, SwitchPlan, switch_wait
from remediator.switch.tools import SwitchTools

log = logging.getLogger(__name__)

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


def _apply(
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


def _apply_move(
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


def commit(tools: SwitchTools, fleet: FleetConfig, plan: SwitchPlan, target: int) -> SwitchRecord:
    """Commit a finished switch (closing its journal entry); a failed write is tried again
    after each of COMMIT_RETRY_PAUSES, then its StateError raised."""
    for pause in (*COMMIT_RETRY_PAUSES, None):
        try:
            with tools.store.transaction() as state:
                fs = state.fleets[fleet.name]
                if plan.to_gpu is not None:
                    return _apply_move(tools, fleet, fs, plan, plan.to_gpu, plan.reason)
                return _apply(tools, fleet, fs, plan, target, reason=plan.reason)
        except StateError as exc:
            if pause is None:
                raise
            log.warning(
                "fleet %s: commit failed (%s); trying again in %g s", fleet.name, exc, pause
            )
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def undo_uncommitted(
    tools: SwitchTools,
    fleet: FleetConfig,
    plan: SwitchPlan,
    actions: Actions,
    cause: StateError,
) -> list[str]:
    """A switch was carried out but its commit could not be written: roll it back, then close
    its entry. Returns what could not be undone (the entry then stays open). When only the
    closing write fails, the entry stays open too and the next resolution rolls back again,
    which finds nothing to change: configs, containers and state all name the old model."""
    old, new = plan.from_rung.name, plan.to_rung.name
    log.error(
        "fleet %s: switched %s -> %s but could not save the state (%s); rolling back",
        fleet.name,
        old,
        new,
        cause,
    )
    if not isinstance(actions, Resolver):
        return [f"cannot roll back: {type(actions).__name__} cannot restore a fleet"]
    problems = actions.restore(old, new, restart=True)
    if problems:
        log.error(
            "fleet %s: could not roll back (%s); the journal entry stays open",
            fleet.name,
            "; ".join(problems),
        )
        return problems
    try:
        with tools.store.transaction() as state:
            fs = state.fleets[fleet.name]
            now = tools.now()
            fs.journal = None
            message = f"the state could not be saved ({cause}); rolled back to {old}"
            fs.fail(Failure(now, "state", message, old, new), plan.alert_key)
    except StateError as exc:
        log.error(
            "fleet %s: rolled back to %s, but the journal entry could not be closed (%s): the "
            "next start or switch resolves it",
            fleet.name,
            old,
            exc,
        )
    return []


def resolve(tools: SwitchTools, fleet: FleetConfig) -> str | None:
    """Resolve ``fleet``'s open journal entry, if any; the caller holds its switch lock.

    Returns ``rolled_forward``, ``rolled_back`` or None (nothing open); raises RecoveryFailed
    (the entry stays open) or StateError (the state could not be read or written).
    """
    store = tools.store
    if store.snapshot().fleets[fleet.name].journal is None:  # the common case, read lock-free
        return None
    with store.transaction() as state:
        found = state.fleets[fleet.name].journal
        if found is None:
            return None
        found.recovery_attempts += 1
        entry = SwitchJournal.from_dict(found.to_dict())
    started = time.monotonic()
    last = entry.done[-1] if entry.done else "intent"
    log.warning(
        "fleet %s: found an interrupted switch %s -> %s (last step recorded: %s; attempt %d)",
        fleet.name,
        entry.from_model,
        entry.to_model,
        last,
        entry.recovery_attempts,
    )
    crash_point("recovery_started")
    actions = tools.actions(fleet)
    if not isinstance(actions, Resolver):
        _fail(tools, fleet, entry, [f"{type(actions).__name__} cannot check or restore"])
    if entry.to_gpu is not None:
        return _resolve_move(tools, fleet, entry, actions, started)
    if entry.has("verified_app"):
        why_not = actions.inspect(entry.to_model)
    else:
        why_not = [f"the switch stopped after '{last}', before its containers were verified"]
    what = f"the switch {entry.from_model} -> {entry.to_model} was interrupted after '{last}'"
    if not why_not:
        with store.transaction() as state:
            fs = state.fleets[fleet.name]
            reason = f"recovery: rolled forward ({entry.reason})"
            _apply(tools, fleet, fs, entry, entry.target, reason=reason, recovery=ROLLED_FORWARD)
            message = f"fleet {fleet.name}: {what}; rolled forward: the fleet runs {entry.to_model}"
            state.notices.append(Notice(tools.now(), message))
        tools.observer.switched(fleet.name, entry.direction, entry.trigger)
        outcome = ROLLED_FORWARD
    else:
        log.info("fleet %s: rolling back: %s", fleet.name, "; ".join(why_not))
        problems = actions.restore(
            entry.from_model, entry.to_model, restart=entry.has("config_written")
        )
        if problems:
            _fail(tools, fleet, entry, problems)
        crash_point("recovery_restored")
        with store.transaction() as state:
            fs = state.fleets[fleet.name]
            _close_rolled_back(tools, fleet, fs, entry, what)
            message = f"fleet {fleet.name}: {what}; rolled back: the fleet runs {entry.from_model}"
            state.notices.append(Notice(tools.now(), message))
        outcome = ROLLED_BACK
    tools.observer.recovered(fleet.name, outcome)
    log.warning(
        "fleet %s: interrupted switch %s -> %s %s in %.2f s",
        fleet.name,
        entry.from_model,
        entry.to_model,
        outcome.replace("_", " "),
        time.monotonic() - started,
    )
    return outcome


def _close_rolled_back(
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


def _fail(
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


def resolve_all(tools: SwitchTools) -> dict[str, str | None]:
    """Start-up: resolve every fleet's open entry under its switch lock. Under gunicorn each
    worker calls this; the first to take a fleet's lock resolves it, the others find nothing
    open. Errors are logged, not raised (a later switch of the fleet tries again)."""
    outcomes: dict[str, str | None] = {}
    for name, fleet in tools.config.fleets.items():
        try:
            if tools.store.snapshot().fleets[name].journal is None:
                continue
            with tools.store.switch_lock(name, switch_wait(fleet)):
                outcomes[name] = resolve(tools, fleet)
        except Exception:  # a start-up thread has no caller to tell: log it whole
            log.exception("fleet %s: could not resolve the interrupted switch at start-up", name)
    return outcomes


def resolve_in_background(tools: SwitchTools) -> threading.Thread:
    """Run :func:`resolve_all` on a daemon thread: the service answers /healthz meanwhile."""
    thread = threading.Thread(
        target=resolve_all, args=(tools,), name="switch-recovery", daemon=True
    )
    thread.start()
    return thread


@runtime_checkable
class MoveResolver(Protocol):
    """What recovery asks of a fleet's actions for an interrupted move (FleetActions has it)."""

    def resolve_move(self, model: str, gpu: str, *, forward: bool) -> list[str]:
        """Finish the move (``forward``) or take it back, the fleet's GPU config naming
        ``gpu``; return what could not be done."""
        ...


def _resolve_move(
    tools: SwitchTools,
    fleet: FleetConfig,
    entry: SwitchJournal,
    actions: object,
    started: float,
) -> str:
    """An interrupted move: forward when its copy was found ready on the model (the container
    put aside is removed and the fleet recorded on the new GPU), else back to the container put
    aside. Raises RecoveryFailed (the entry stays open) when the containers cannot be put right.
    """
    assert entry.to_gpu is not None
    if not isinstance(actions, MoveResolver):
        _fail(tools, fleet, entry, [f"{type(actions).__name__} cannot resolve a move"])
    forward = entry.has("verified_ollama")
    gpu = entry.to_gpu if forward else (entry.from_gpu or fleet.gpu)
    problems = actions.resolve_move(entry.from_model, gpu, forward=forward)
    if problems:
        _fail(tools, fleet, entry, problems)
    last = entry.done[-1] if entry.done else "intent"
    what = f"the move to GPU {entry.to_gpu} was interrupted after '{last}'"
    with tools.store.transaction() as state:
        fs = state.fleets[fleet.name]
        if forward:
            reason = f"recovery: rolled forward ({entry.reason})"
            record = _apply_move(tools, fleet, fs, entry, entry.to_gpu, reason)
            record.recovery = ROLLED_FORWARD
            message = f"fleet {fleet.name}: {what}; rolled forward: it runs on GPU {entry.to_gpu}"
        else:
            _close_rolled_back(tools, fleet, fs, entry, what)
            fs.history[-1].action = "move"
            fs.history[-1].from_gpu, fs.history[-1].to_gpu = entry.from_gpu, entry.to_gpu
            message = f"fleet {fleet.name}: {what}; rolled back: it runs on GPU {entry.from_gpu}"
        state.notices.append(Notice(tools.now(), message))
    if forward:
        tools.observer.switched(fleet.name, entry.direction, entry.trigger)
    outcome = ROLLED_FORWARD if forward else ROLLED_BACK
    tools.observer.recovered(fleet.name, outcome)
    log.warning(
        "fleet %s: interrupted move to GPU %s %s in %.2f s",
        fleet.name,
        entry.to_gpu,
        outcome.replace("_", " "),
        time.monotonic() - started,
    )
    return outcome
