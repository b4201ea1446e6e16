"""Resolving an interrupted move (:mod:`remediator.switch.moving`): forward when its copy was
found ready on the model (the container put aside is removed and the fleet recorded on the new
GPU), else back to the container put aside."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from remediator.config import FleetConfig
from remediator.domain.loggers import RECOVERY as log
from remediator.domain.notices import Notice
from remediator.domain.records import SwitchJournal
from remediator.switch.resolution import (
    ROLLED_BACK,
    ROLLED_FORWARD,
    apply_move,
    close_rolled_back,
    fail,
)
from remediator.switch.tools import SwitchTools

__all__ = ["MoveResolver", "resolve_move"]


@runtime_checkable
class MoveResolver(Protocol):
    """What recovery asks of a fleet's actions for an interrupted move (FleetActions has it)."""

    def resolve_move(self, model: str, gpu: str, *, forward: bool) -> list[str]:
        """Finish the move (``forward``) or take it back, the fleet's GPU config naming
        ``gpu``; return what could not be done."""
        ...


def resolve_move(
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
        fail(tools, fleet, entry, [f"{type(actions).__name__} cannot resolve a move"])
    forward = entry.has("verified_ollama")
    gpu = entry.to_gpu if forward else (entry.from_gpu or fleet.gpu)
    problems = actions.resolve_move(entry.from_model, gpu, forward=forward)
    if problems:
        fail(tools, fleet, entry, problems)
    last = entry.done[-1] if entry.done else "intent"
    what = f"the move to GPU {entry.to_gpu} was interrupted after '{last}'"
    with tools.store.transaction() as state:
        fs = state.fleets[fleet.name]
        if forward:
            reason = f"recovery: rolled forward ({entry.reason})"
            record = apply_move(tools, fleet, fs, entry, entry.to_gpu, reason)
            record.recovery = ROLLED_FORWARD
            message = f"fleet {fleet.name}: {what}; rolled forward: it runs on GPU {entry.to_gpu}"
        else:
            close_rolled_back(tools, fleet, fs, entry, what)
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
