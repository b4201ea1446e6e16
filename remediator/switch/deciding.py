"""Deciding a switch: the live figures a decision reads, the pure decision
(:mod:`remediator.domain.decisions`, :mod:`remediator.domain.moves`) and the plan it asks for.

:class:`Decider` is what :mod:`remediator.switch.intake` asks to decide an alert; the
:class:`~remediator.switch.engine.Remediator` is one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from remediator.config import Config, FleetConfig
from remediator.domain import decisions, moves, stepup
from remediator.domain.decisions import AlertRef, Decision
from remediator.domain.kinds import Direction, Trigger
from remediator.domain.loggers import SWITCHING as log
from remediator.domain.state import FleetState
from remediator.store.state import StateStore
from remediator.switch.live import LiveFigures, LiveReader
from remediator.switch.plan import SwitchPlan

__all__ = ["Decider", "moves_on"]


class Decider:
    """Decides a fleet's switches at its clock's time, with the live figures of ``live``."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        *,
        clock: Callable[[], float] = time.time,
        live: LiveReader | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._clock = clock
        # Live figures come from Prometheus' clock: their ages are real time, not ``clock``'s.
        # None: none (remediator.app.remediator's Remediator reads the configured Prometheus).
        self.live = live or LiveReader(None, host=config.host)

    def read_live(self, fleet: FleetConfig, direction: str, trigger: str) -> LiveFigures | None:
        """The live figures a decision uses (a step down, an automatic step up), read now; None
        for the others. Called before the state transaction: Prometheus may take its timeout."""
        automatic_up = direction == Direction.UP and trigger == Trigger.AUTO
        if direction != Direction.DOWN and not automatic_up:
            return None
        # The caller holds the fleet's switch lock: no move can change its GPU meanwhile.
        here = self.store.snapshot().fleets[fleet.name].current_gpu(fleet)
        placement = direction == Direction.DOWN and moves_on(fleet, trigger)
        figures = self.live.read(fleet, models=False, gpu=here, placement=placement)
        if figures.error is not None and figures.url is not None:
            log.warning("fleet %s: deciding without live figures: %s", fleet.name, figures.error)
        return figures

    def now(self) -> float:
        """The time on the remediator's clock: its decisions and its status read the same."""
        return self._clock()

    def decide(
        self,
        fleet: FleetConfig,
        fs: FleetState,
        direction: str,
        trigger: str,
        alert: AlertRef | None = None,
        live: LiveFigures | None = None,
        neighbours: Sequence[moves.Neighbour] = (),
    ) -> Decision:
        """The pure decision for this request, at this moment, with ``live`` figures if read;
        ``neighbours``: the host's other fleets, which a move must leave their headroom."""
        now = self._clock()
        free = live.free_vram_bytes.value if live is not None else None
        note = live.vram_note() if live is not None else None
        if direction == Direction.DOWN and moves_on(fleet, trigger):
            move = _move_first(fleet, fs, now, trigger, alert, live, neighbours)
            if move.reason not in moves.STEP_DOWN_INSTEAD:
                return move  # a move, or a gate that refuses a step down as well
            down = decisions.choose_downgrade(
                fleet, fs, now, trigger=trigger, alert=alert, free_vram_bytes=free, vram_source=note
            )
            return replace(down, detail=f"{down.detail}; no move ({move.reason}): {move.detail}")
        if direction == Direction.DOWN:
            return decisions.choose_downgrade(
                fleet, fs, now, trigger=trigger, alert=alert, free_vram_bytes=free, vram_source=note
            )
        if direction == Direction.UP and trigger == Trigger.AUTO:
            return stepup.choose_auto_upgrade(
                fleet, fs, now, alert=alert, free_vram_bytes=free, vram_source=note
            )
        if direction == Direction.UP:
            return decisions.choose_upgrade(fleet, fs, now, trigger=trigger)
        return decisions.choose_reset(fleet, fs)

    def plan(
        self,
        fleet: FleetConfig,
        fs: FleetState,
        decision: Decision,
        direction: str,
        trigger: str,
        reason: str = "",
        alert_key: str | None = None,
    ) -> SwitchPlan | None:
        """The switch ``decision`` asks for from where ``fs`` stands; None when it asks none."""
        if decision.target is None:
            return None
        return SwitchPlan(
            fleet=fleet,
            from_rung=fleet.ladder[fs.index],
            to_rung=fleet.ladder[decision.target],
            direction=Direction(direction),
            trigger=Trigger(trigger),
            reason=reason or decision.detail,
            alert_key=alert_key,
            from_gpu=None if decision.gpu is None else fs.current_gpu(fleet),
            to_gpu=decision.gpu,
        )


def moves_on(fleet: FleetConfig, trigger: str) -> bool:
    """Whether a step down of ``fleet`` for ``trigger`` looks for a move first: an alert (VRAM
    errors or offload) of a ``move_first`` fleet; a person's step down asks for a smaller model."""
    return fleet.placement == "move_first" and trigger == Trigger.ALERT


def _move_first(
    fleet: FleetConfig,
    fs: FleetState,
    now: float,
    trigger: str,
    alert: AlertRef | None,
    live: LiveFigures | None,
    neighbours: Sequence[moves.Neighbour],
) -> Decision:
    """The move decision with the live free VRAM of each listed GPU, if Prometheus gave it."""
    each = live.free_by_gpu if live is not None else None
    free = None if each is None or each.value is None else dict(each.value)
    if each is None or live is None:
        source = "no live figures read"
    else:
        source = live.origin(each) if each.value is not None else str(each.problem)
    return moves.choose_move(
        fleet,
        fs,
        now,
        free_by_gpu=free,
        neighbours=neighbours,
        trigger=trigger,
        alert=alert,
        vram_source=source,
    )
