"""Keeping an alert refused for a reason that passes by itself (the decision's ``retry_at``:
the cooldown, the hourly cap, a window not open yet, a quiet period) in its fleet's state, to be
judged again then (:mod:`remediator.switch.deferrals`), and dropping it when Alertmanager says
it resolved."""

from __future__ import annotations

from typing import Any

from remediator.config import FleetConfig
from remediator.config.windows import iso
from remediator.domain.alerts import AlertRequest
from remediator.domain.decisions import Decision
from remediator.domain.loggers import INTAKE as log
from remediator.domain.state import FleetState
from remediator.store.state import StateStore
from remediator.switch.tools import SwitchTools

__all__ = ["defer", "forget_resolved"]


def defer(
    tools: SwitchTools,
    fleet: FleetConfig,
    fs: FleetState,
    ask: AlertRequest,
    decision: Decision,
) -> dict[str, Any]:
    """Keep ``ask`` in the fleet's state, to be judged again at ``decision.retry_at``; its
    answer to the delivery."""
    assert decision.retry_at is not None
    now = tools.now()
    new = fs.defer(ask.kept(decision.reason, decision.detail, now, decision.retry_at))
    if new:
        tools.observer.deferred(fleet.name, decision.reason)
    acts_at = iso(decision.retry_at, "UTC")
    log.info(
        "fleet %s: alert %s deferred (%s): %s; judged again at %s (in %.0f s) if it still fires",
        fleet.name,
        ask.ref.key,
        decision.reason,
        decision.detail,
        acts_at,
        max(0.0, decision.retry_at - now),
        extra={
            "fleet": fleet.name,
            "alert_key": ask.ref.key,
            "reason": decision.reason,
            "acts_at": acts_at,
        },
    )
    return {**ask.item, "reason": decision.reason, "detail": decision.detail, "acts_at": acts_at}


def forget_resolved(store: StateStore, resolved: dict[str, list[str]]) -> None:
    """End the deferral of each resolved alert (read first: most deliveries touch none)."""
    if not resolved:
        return
    snapshot = store.snapshot()
    if not any(
        key in snapshot.fleets[name].deferred for name, keys in resolved.items() for key in keys
    ):
        return
    with store.transaction() as state:
        for name, keys in resolved.items():
            for key in keys:
                if state.fleets[name].deferred.pop(key, None) is not None:
                    log.info("fleet %s: deferred alert %s resolved: dropped", name, key)
