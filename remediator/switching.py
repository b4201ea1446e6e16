"""A model switch as one transaction: decide under the state lock, act, then commit or roll back.

The decision is pure (:mod:`remediator.decisions`); the actions (pull, unload, rewrite configs,
restart) are behind the :class:`Actions` protocol so that the CLI, the service and the tests
share this one path. A fleet's switch lock is held from decision to commit, so two switches
of one fleet never overlap, whether they come from threads, gunicorn workers or the CLI.
Two entry points: :meth:`Remediator.request` (a person: decide and switch, then answer) and
:meth:`Remediator.accept_alerts` (Alertmanager: decide and answer, then switch; the alert path
is :mod:`remediator.intake`). Each real switch keeps its intent and its steps in the switch
journal (:mod:`remediator.journal`); an entry a dead switch left open is resolved under the
lock before the next decision (:mod:`remediator.recovery`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from remediator import decisions, intake, moves, recovery
from remediator.config import Config, FleetConfig, Rung
from remediator.decisions import AlertRef, Decision
from remediator.journal import MOVE_PLANNED, Journal, crash_point, planned_steps
from remediator.live import LiveFigures, LiveReader, live_reader, note_live_errors
from remediator.state import StateError, StateStore
from remediator.state_model import FleetState, SwitchJournal, SwitchRecord

if TYPE_CHECKING:
    from remediator.alerts import WebhookAlert
    from remediator.intake import Acceptance

log = logging.getLogger(__name__)

DIRECTIONS = ("down", "up", "reset")


@dataclass(frozen=True)
class SwitchPlan:
    """What a switch will do: the fleet, the two rungs and why."""

    fleet: FleetConfig
    from_rung: Rung
    to_rung: Rung
    direction: str
    trigger: str
    reason: str
    alert_key: str | None = None
    # A move (remediator.moves): the same rung, the model server recreated on ``to_gpu``.
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


class _NullObserver:
    def switched(self, fleet: str, direction: str, trigger: str) -> None:
        pass

    def failed(self, fleet: str, step: str) -> None:
        pass

    def recovered(self, fleet: str, outcome: str) -> None:
        pass

    def deferred(self, fleet: str, reason: str) -> None:
        pass


class Remediator:
    """Decides and performs switches for all fleets of a config."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        actions_for: Callable[[FleetConfig], Actions],
        *,
        clock: Callable[[], float] = time.time,
        observer: SwitchObserver | None = None,
        live: LiveReader | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        # Tests: called after each journal step is recorded (e.g. to fill the disk there).
        self.on_step = on_step
        self.store = store
        self._actions_for = actions_for
        self._clock = clock
        self.observer: SwitchObserver = observer or _NullObserver()
        # Live figures come from Prometheus' clock: their ages are real time, not ``clock``'s.
        self.live = live or live_reader(config)

    def read_live(self, fleet: FleetConfig, direction: str, trigger: str) -> LiveFigures | None:
        """The live figures a decision uses (a step down, an automatic step up), read now; None
        for the others. Called before the state transaction: Prometheus may take its timeout."""
        if direction != "down" and not (direction == "up" and trigger == "auto"):
            return None
        # The caller holds the fleet's switch lock: no move can change its GPU meanwhile.
        here = self.store.snapshot().fleets[fleet.name].current_gpu(fleet)
        placement = direction == "down" and moves_on(fleet, trigger)
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
        if direction == "down" and moves_on(fleet, trigger):
            move = _move_first(fleet, fs, now, trigger, alert, live, neighbours)
            if move.reason not in moves.STEP_DOWN_INSTEAD:
                return move  # a move, or a gate that refuses a step down as well
            down = decisions.choose_downgrade(
                fleet, fs, now, trigger=trigger, alert=alert, free_vram_bytes=free, vram_source=note
            )
            return replace(down, detail=f"{down.detail}; no move ({move.reason}): {move.detail}")
        if direction == "down":
            return decisions.choose_downgrade(
                fleet, fs, now, trigger=trigger, alert=alert, free_vram_bytes=free, vram_source=note
            )
        if direction == "up" and trigger == "auto":
            return decisions.choose_auto_upgrade(
                fleet, fs, now, alert=alert, free_vram_bytes=free, vram_source=note
            )
        if direction == "up":
            return decisions.choose_upgrade(fleet, fs, now, trigger=trigger)
        return decisions.choose_reset(fleet, fs)

    def request(
        self,
        fleet_name: str | None,
        direction: str,
        *,
        trigger: str = "manual",
        reason: str = "",
        dry_run: bool = False,
        lock_timeout: float | None = None,
    ) -> Outcome:
        """Decide and, if the decision is to switch, perform the switch as one transaction.

        Raises KeyError for an unknown fleet and LockTimeout when the locks are held too long.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        fleet = self.config.fleet(fleet_name)
        started = time.monotonic()
        with self.store.switch_lock(fleet.name, lock_timeout):
            self.resolve_open(fleet)
            live = self.read_live(fleet, direction, trigger)
            with self.store.transaction() as state:
                fs = state.fleets[fleet.name]
                note_live_errors(fs, live)
                near = moves.neighbours(fleet, self.config.fleets, state.fleets)
                decision = self.decide(fleet, fs, direction, trigger, live=live, neighbours=near)
                plan = self.plan(fleet, fs, decision, direction, trigger, reason)
            return self.carry_out(fleet, direction, decision, plan, dry_run, started)

    def actions(self, fleet: FleetConfig) -> Actions:
        """The actions that carry out ``fleet``'s switches."""
        return self._actions_for(fleet)

    def resolve_open(self, fleet: FleetConfig) -> str | None:
        """Resolve ``fleet``'s interrupted switch, if its journal holds one (the caller holds
        the fleet's switch lock): ``rolled_forward``, ``rolled_back`` or None (none open).
        Raises RecoveryFailed when the fleet could not be put right; the entry stays open."""
        return recovery.resolve(self, fleet)

    def accept_alerts(self, alerts: Sequence[WebhookAlert]) -> Acceptance:
        """The webhook's entry point: judge a delivery once per fleet under the fleet's lock.

        Answers at once; the switches it decides run when the caller starts
        ``Acceptance.pending`` (:mod:`remediator.intake`).
        """
        return intake.accept(self, alerts)

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
            direction=direction,
            trigger=trigger,
            reason=reason or decision.detail,
            alert_key=alert_key,
            from_gpu=None if decision.gpu is None else fs.current_gpu(fleet),
            to_gpu=decision.gpu,
        )

    def carry_out(
        self,
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
        # With the detail: an alert's decision (why it moved, or why it did not) is shown
        # nowhere else but in the webhook's answer to Alertmanager.
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
        actions = self._actions_for(fleet)
        record: StepRecorder | None = None
        if not dry_run:
            # The intent first: a StateError here means nothing was done (the caller's error).
            journal = Journal(self.store, fleet.name, clock=self._clock, on_step=self.on_step)
            journal.open(self.intent(plan, decision.target))
            record = journal.record
        try:
            outcome.steps = actions.execute(plan, dry_run, record)
        except SwitchFailed as exc:
            outcome.failure = exc
            outcome.duration_seconds = time.monotonic() - started
            log.error(
                "fleet %s: %s", fleet.name, exc, extra={"fleet": fleet.name, "step": exc.step}
            )
            self.observer.failed(fleet.name, exc.step)
            if not dry_run:
                self._record_failure(fleet, plan, exc)
            return outcome
        if dry_run:
            outcome.duration_seconds = time.monotonic() - started
            log.info("fleet %s: dry run, nothing changed: %s", fleet.name, "; ".join(outcome.steps))
            return outcome
        try:
            outcome.record = recovery.commit(self, fleet, plan, decision.target)
        except StateError as exc:
            problems = recovery.undo_uncommitted(self, fleet, plan, actions, exc)
            cause = f"switched, but the state could not be saved ({exc}); " + (
                "rolled back" if not problems else "the rollback left the journal entry open"
            )
            outcome.failure = SwitchFailed("state", cause, problems)
            log.error("fleet %s: %s", fleet.name, outcome.failure)
            outcome.duration_seconds = time.monotonic() - started
            self.observer.failed(fleet.name, "state")
            return outcome
        crash_point("committed")
        outcome.switched = True
        outcome.duration_seconds = time.monotonic() - started
        self.observer.switched(fleet.name, direction, plan.trigger)
        log.info(
            "fleet %s: now on %s (%.2f s)",
            fleet.name,
            plan.to_rung.name,
            outcome.duration_seconds,
            extra={"fleet": fleet.name, "model": plan.to_rung.name, "direction": direction},
        )
        return outcome

    def intent(self, plan: SwitchPlan, target: int) -> SwitchJournal:
        """The journal entry of a switch about to start."""
        return SwitchJournal(
            started_at=self._clock(),
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

    def _record_failure(self, fleet: FleetConfig, plan: SwitchPlan, exc: SwitchFailed) -> None:
        """Record a failed switch; its journal entry closes unless the rollback left something
        undone, which the next start or switch then resolves."""
        with self.store.transaction() as state:
            fs = state.fleets[fleet.name]
            now = self._clock()
            if not exc.rollback_errors:
                fs.journal = None
            fs.last_failure = {
                "time": now,
                "step": exc.step,
                "message": str(exc),
                "from": plan.from_rung.name,
                "to": plan.to_rung.name,
            }
            if plan.alert_key is not None:
                fs.processed_alerts[plan.alert_key] = now


def moves_on(fleet: FleetConfig, trigger: str) -> bool:
    """Whether a step down of ``fleet`` for ``trigger`` looks for a move first: an alert (VRAM
    errors or offload) of a ``move_first`` fleet; a person's step down asks for a smaller model."""
    return fleet.placement == "move_first" and trigger == "alert"


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
