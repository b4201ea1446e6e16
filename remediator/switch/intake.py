"""An Alertmanager delivery -> at most one switch per fleet, decided once, under the fleet's lock.

:func:`accept` is the whole path of the webhook (reached as ``Remediator.accept_alerts``). For
each fleet the delivery asks something of, it takes the fleet's switch lock without waiting
and, holding it, judges the fleet's alerts in one state transaction: it records the VRAM error
count they carry, then dedupes (fingerprint@startsAt), refuses stale alerts, the cooldown and
the hourly cap, and picks at most one switch. The lock then passes to a
:class:`~remediator.switch.transaction.HeldSwitch`,
which carries that switch out after the HTTP answer (a pull and the restarts take minutes) and
lets go when the switch is committed or rolled back. No switch of the fleet, from any thread,
gunicorn worker or the CLI, can come between the decision and its commit: nothing is decided
twice.

A fleet whose lock is held is switching right now. Alerts that the running switch acts on (its
lock file names them) are duplicates; the others wait in a
:class:`~remediator.switch.transaction.QueuedAlerts`, which takes the lock when the running
switch lets go and has them judged then, the same way.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from remediator.config import FleetConfig
from remediator.domain import moves
from remediator.domain.alerts import AlertRequest, WebhookAlert, resolutions, triage
from remediator.domain.decisions import Decision
from remediator.domain.kinds import Direction
from remediator.store.locks import LockTimeout
from remediator.switch import recovery
from remediator.switch.background import Acceptance
from remediator.switch.deciding import Decider
from remediator.switch.keeping import defer, forget_resolved
from remediator.switch.live import note_live_errors
from remediator.switch.plan import SwitchPlan
from remediator.switch.redelivery import answer_handled, log_not_acted_on
from remediator.switch.tools import SwitchTools
from remediator.switch.transaction import HeldSwitch, QueuedAlerts


@dataclass
class Verdict:
    """One fleet's alerts judged under its lock: the switch chosen, if any, and the answers."""

    accepted: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)
    deferred: list[dict[str, Any]] = field(default_factory=list)
    decision: Decision | None = None
    plan: SwitchPlan | None = None


def accept(tools: SwitchTools, decider: Decider, alerts: Sequence[WebhookAlert]) -> Acceptance:
    """Judge a delivery fleet by fleet; the chosen switches wait in ``pending`` for their start.

    Raises LockTimeout or StateError when the state cannot be read or written; nothing is then
    left pending.
    """
    requests, ignored = triage(tools.config, list(alerts))
    acceptance = Acceptance(ignored=ignored)
    forget_resolved(tools.store, resolutions(tools.config, list(alerts)))
    try:
        for name, asks in requests.items():
            _accept_fleet(tools, decider, tools.config.fleets[name], asks, acceptance)
    except BaseException:
        acceptance.release()
        raise
    return acceptance


def judge(
    tools: SwitchTools, decider: Decider, fleet: FleetConfig, asks: Sequence[AlertRequest]
) -> Verdict:
    """Judge one fleet's alerts in one state transaction; the caller holds the fleet's lock.

    An interrupted switch of the fleet (its journal entry open) is resolved first.

    A step down is judged before a step up (VRAM errors outweigh headroom), and once one alert
    is chosen the others of the delivery are ``superseded``: one switch per fleet. An alert
    refused for a reason that passes by itself (the decision's ``retry_at``: cooldown, the
    hourly cap, ...) is deferred: kept in the fleet's state and judged again when the reason
    has passed (:mod:`remediator.switch.deferrals`), whether or not Alertmanager delivers it again.
    Any other refusal, or the switch, ends its deferral.
    """
    verdict = Verdict()
    # A switch of this fleet that died half-way is resolved before anything is decided.
    recovery.resolve(tools, fleet)
    # Read before the transaction (Prometheus may take its timeout); one read serves all asks.
    live = None
    for ask in asks:
        live = decider.read_live(fleet, ask.direction, ask.trigger)
        if live is not None:
            break
    with tools.store.transaction() as state:
        fs = state.fleets[fleet.name]
        for ask in asks:
            if ask.error_count is not None:
                fs.vram_error_count = ask.error_count
        note_live_errors(fs, live)
        for ask in sorted(asks, key=lambda a: a.direction != Direction.DOWN):
            if verdict.plan is not None:
                detail = (
                    f"alert {verdict.plan.alert_key} switches the fleet: one switch per delivery"
                )
                verdict.ignored.append({**ask.item, "reason": "superseded", "detail": detail})
                continue
            near = moves.neighbours(fleet, tools.config.fleets, state.fleets)
            decision = decider.decide(
                fleet, fs, ask.direction, ask.trigger, ask.ref, live, neighbours=near
            )
            if decision.retry_at is not None:
                verdict.deferred.append(defer(tools, fleet, fs, ask, decision))
                continue
            fs.deferred.pop(ask.ref.key, None)
            if not decision.switch:
                log_not_acted_on(fleet.name, ask, decision)
                verdict.ignored.append(
                    {**ask.item, "reason": decision.reason, "detail": decision.detail}
                )
                continue
            verdict.decision = decision
            verdict.plan = decider.plan(
                fleet, fs, decision, ask.direction, ask.trigger, f"alert {ask.ref.key}", ask.ref.key
            )
            verdict.accepted.append({**ask.item, "detail": decision.detail})
    return verdict


def _accept_fleet(
    tools: SwitchTools,
    decider: Decider,
    fleet: FleetConfig,
    asks: list[AlertRequest],
    acceptance: Acceptance,
) -> None:
    # A redelivery: no lock, no state write.
    reads_live = decider.live.prometheus is not None
    handled = answer_handled(tools.store, fleet, asks, reads_live=reads_live)
    if handled is not None:
        acceptance.ignored += handled
        return
    keys = [ask.ref.key for ask in asks]
    held = contextlib.ExitStack()
    try:
        held.enter_context(tools.store.switch_lock(fleet.name, 0, handling=keys))
    except LockTimeout:
        acceptance.absorb(_queue(tools, decider, fleet, asks))
        return
    started = time.monotonic()
    with held:
        verdict = judge(tools, decider, fleet, asks)
        acceptance.accepted += verdict.accepted
        acceptance.ignored += verdict.ignored
        acceptance.deferred += verdict.deferred
        if verdict.plan is not None:
            assert verdict.decision is not None  # a plan comes from a decision to switch
            switch = HeldSwitch(tools, verdict.plan, verdict.decision, held.pop_all(), started)
            acceptance.pending.append(switch)


def _queue(
    tools: SwitchTools, decider: Decider, fleet: FleetConfig, asks: list[AlertRequest]
) -> Acceptance:
    """The fleet is switching: its alerts are duplicates of the running switch, or wait for it."""
    running = tools.store.keys_in_switch(fleet.name)
    acceptance = Acceptance()
    waiting = []
    for ask in asks:
        if ask.ref.key in running:
            acceptance.ignored.append(
                {**ask.item, "reason": "duplicate", "detail": "being handled"}
            )
        else:
            waiting.append(ask)
            detail = f"queued: fleet {fleet.name} is switching; judged when that switch ends"
            acceptance.accepted.append({**ask.item, "detail": detail})
    if waiting:
        keys = [ask.ref.key for ask in waiting]
        chosen = functools.partial(_chosen, tools, decider, fleet, waiting)
        acceptance.pending.append(QueuedAlerts(tools, fleet, keys, chosen))
    return acceptance


def _chosen(
    tools: SwitchTools, decider: Decider, fleet: FleetConfig, asks: list[AlertRequest]
) -> tuple[SwitchPlan, Decision] | None:
    """The switch queued alerts choose, judged once the fleet's lock is theirs."""
    verdict = judge(tools, decider, fleet, asks)
    if verdict.plan is None or verdict.decision is None:
        return None
    return verdict.plan, verdict.decision
