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

import threading
import time

from remediator.config import FleetConfig
from remediator.domain.loggers import RECOVERY as log
from remediator.domain.notices import Notice
from remediator.domain.records import Failure, SwitchJournal, SwitchRecord
from remediator.store.locks import StateError
from remediator.switch.journal import COMMIT_RETRY_PAUSES, crash_point
from remediator.switch.plan import Actions, SwitchPlan, switch_wait
from remediator.switch.recovery_moves import resolve_move
from remediator.switch.resolution import (
    ROLLED_BACK,
    ROLLED_FORWARD,
    Resolver,
    apply_move,
    apply_switch,
    close_rolled_back,
    fail,
)
from remediator.switch.tools import SwitchTools


def commit(tools: SwitchTools, fleet: FleetConfig, plan: SwitchPlan, target: int) -> SwitchRecord:
    """Commit a finished switch (closing its journal entry); a failed write is tried again
    after each of COMMIT_RETRY_PAUSES, then its StateError raised."""
    for pause in (*COMMIT_RETRY_PAUSES, None):
        try:
            with tools.store.transaction() as state:
                fs = state.fleets[fleet.name]
                if plan.to_gpu is not None:
                    return apply_move(tools, fleet, fs, plan, plan.to_gpu, plan.reason)
                return apply_switch(tools, fleet, fs, plan, target, reason=plan.reason)
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
    entry = _open_entry(tools, fleet)
    if entry is None:
        return None
    started = time.monotonic()
    crash_point("recovery_started")
    actions = tools.actions(fleet)
    if not isinstance(actions, Resolver):
        fail(tools, fleet, entry, [f"{type(actions).__name__} cannot check or restore"])
    if entry.to_gpu is not None:
        return resolve_move(tools, fleet, entry, actions, started)
    last = entry.done[-1] if entry.done else "intent"
    if entry.has("verified_app"):
        why_not = actions.inspect(entry.to_model)
    else:
        why_not = [f"the switch stopped after '{last}', before its containers were verified"]
    what = f"the switch {entry.from_model} -> {entry.to_model} was interrupted after '{last}'"
    if not why_not:
        outcome = _roll_forward(tools, fleet, entry, what)
    else:
        log.info("fleet %s: rolling back: %s", fleet.name, "; ".join(why_not))
        outcome = _roll_back(tools, fleet, entry, actions, what)
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


def _open_entry(tools: SwitchTools, fleet: FleetConfig) -> SwitchJournal | None:
    """The fleet's open journal entry, its recovery attempt counted; None when none is open."""
    store = tools.store
    if store.snapshot().fleets[fleet.name].journal is None:  # the common case, read lock-free
        return None
    with store.transaction() as state:
        found = state.fleets[fleet.name].journal
        if found is None:
            return None
        found.recovery_attempts += 1
        entry = SwitchJournal.from_dict(found.to_dict())
    log.warning(
        "fleet %s: found an interrupted switch %s -> %s (last step recorded: %s; attempt %d)",
        fleet.name,
        entry.from_model,
        entry.to_model,
        entry.done[-1] if entry.done else "intent",
        entry.recovery_attempts,
    )
    return entry


def _roll_forward(tools: SwitchTools, fleet: FleetConfig, entry: SwitchJournal, what: str) -> str:
    """The fleet runs the new model: record the switch as its commit would have."""
    with tools.store.transaction() as state:
        fs = state.fleets[fleet.name]
        reason = f"recovery: rolled forward ({entry.reason})"
        apply_switch(tools, fleet, fs, entry, entry.target, reason=reason, recovery=ROLLED_FORWARD)
        message = f"fleet {fleet.name}: {what}; rolled forward: the fleet runs {entry.to_model}"
        state.notices.append(Notice(tools.now(), message))
    tools.observer.switched(fleet.name, entry.direction, entry.trigger)
    return ROLLED_FORWARD


def _roll_back(
    tools: SwitchTools, fleet: FleetConfig, entry: SwitchJournal, actions: Resolver, what: str
) -> str:
    """Put the fleet back on the old model, then close the entry; RecoveryFailed when the fleet
    could not be put back."""
    problems = actions.restore(
        entry.from_model, entry.to_model, restart=entry.has("config_written")
    )
    if problems:
        fail(tools, fleet, entry, problems)
    crash_point("recovery_restored")
    with tools.store.transaction() as state:
        fs = state.fleets[fleet.name]
        close_rolled_back(tools, fleet, fs, entry, what)
        message = f"fleet {fleet.name}: {what}; rolled back: the fleet runs {entry.from_model}"
        state.notices.append(Notice(tools.now(), message))
    return ROLLED_BACK


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
