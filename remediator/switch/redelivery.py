"""A redelivery of alerts a fleet has already handled, answered without the fleet's locks.

Alertmanager delivers an alert again and again (its ``repeat_interval``, a group that changed,
a retry, several replicas); a storm of such deliveries would queue on the fleet's switch lock
and the state lock only to be told ``duplicate``. :func:`handled_redelivery` gives that
answer from a lock-free snapshot of the state when judging the delivery under the locks would
change nothing: every alert's key is recorded as handled, no switch of the fleet is open in the
journal (none to resolve), the alerts carry the error count the state already holds, and no
Prometheus is asked for live figures (a read whose count the state would keep). Anything else
is judged under the locks as before. A key is recorded only by the commit of the switch it
caused, so a snapshot never calls an alert handled that no commit handled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from remediator.config import FleetConfig
from remediator.domain.alerts import AlertRequest
from remediator.domain.decisions import Decision, already_handled
from remediator.domain.kinds import Direction
from remediator.domain.loggers import REDELIVERY as log
from remediator.domain.state import FleetState
from remediator.store.state import StateStore


def answer_handled(
    store: StateStore, fleet: FleetConfig, asks: Sequence[AlertRequest], *, reads_live: bool
) -> list[dict[str, Any]] | None:
    """Answer a redelivery of handled alerts from the lock-free snapshot of ``store`` (logged
    as the locked judgement logs them); None when the delivery must be judged under the
    fleet's locks. ``reads_live``: a judgement would read live figures from Prometheus."""
    state = store.peek()
    fs = state.fleets.get(fleet.name) if state is not None else None
    judged = handled_redelivery(fs, asks, reads_live=reads_live)
    if judged is None:
        return None
    answers = []
    for ask, decision in judged:
        log_not_acted_on(fleet.name, ask, decision)
        answers.append({**ask.item, "reason": decision.reason, "detail": decision.detail})
    return answers


def log_not_acted_on(fleet: str, ask: AlertRequest, decision: Decision) -> None:
    """Log why ``ask`` is not acted on: at INFO, but a ``duplicate`` (Alertmanager delivering a
    handled alert again: its repeat, a changed group, a retry, another replica) at DEBUG: one
    line per redelivery said nothing new, and in a storm of them the log's lock was where a
    delivery's time went (BENCHMARKS.md, "Webhook storm"). The webhook metric counts them."""
    log.log(
        logging.DEBUG if decision.reason == "duplicate" else logging.INFO,
        "fleet %s: alert %s not acted on (%s): %s",
        fleet,
        ask.ref.key,
        decision.reason,
        decision.detail,
        extra={"fleet": fleet, "alert_key": ask.ref.key, "reason": decision.reason},
    )


def handled_redelivery(
    fs: FleetState | None, asks: Sequence[AlertRequest], *, reads_live: bool
) -> list[tuple[AlertRequest, Decision]] | None:
    """Each alert with its ``duplicate`` decision, in the order the locked judgement gives
    them, when judging ``asks`` under the fleet's locks would change nothing; None when it
    must be judged there.

    ``fs`` is the fleet's state from a lock-free snapshot (None: none to read); ``reads_live``
    says whether a judgement reads live figures from Prometheus.
    """
    if fs is None or fs.journal is not None or reads_live:
        return None
    judged = []
    for ask in sorted(asks, key=lambda a: a.direction != Direction.DOWN):  # as judge() orders them
        if ask.error_count is not None and ask.error_count != fs.vram_error_count:
            return None
        decision = already_handled(fs, ask.ref)
        if decision is None:
            return None
        judged.append((ask, decision))
    return judged
