"""The switch engine: a model switch as one transaction, decided under the fleet's lock.

The decision is pure (:mod:`remediator.domain.decisions`), read with the live figures
(:mod:`remediator.switch.deciding`); the actions (pull, unload, rewrite configs, restart) are
behind the :class:`~remediator.switch.plan.Actions` protocol so that the CLI, the service and
the tests share this one path (:mod:`remediator.switch.transaction`). A fleet's switch lock is
held from decision to commit, so two switches of one fleet never overlap, whether they come
from threads, gunicorn workers or the CLI. Two entry points: :meth:`Remediator.request` (a
person: decide and switch, then answer) and :meth:`Remediator.accept_alerts` (Alertmanager:
decide and answer, then switch: :mod:`remediator.switch.intake`). Each real switch keeps its
intent and its steps in the switch journal (:mod:`remediator.switch.journal`); an entry a dead
switch left open is resolved under the lock before the next decision
(:mod:`remediator.switch.recovery`).

The engine hands its parts to those modules explicitly (:class:`SwitchTools`, and itself as
the :class:`~remediator.switch.deciding.Decider`); none of them imports this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from remediator.config import Config, FleetConfig
from remediator.domain import moves
from remediator.domain.alerts import WebhookAlert
from remediator.domain.kinds import Trigger
from remediator.store.state import StateStore
from remediator.switch import intake, recovery, transaction
from remediator.switch.background import Acceptance
from remediator.switch.deciding import Decider
from remediator.switch.live import LiveReader, note_live_errors
from remediator.switch.plan import DIRECTIONS, Actions, Outcome, SwitchObserver
from remediator.switch.tools import SwitchTools

__all__ = ["Remediator"]


class Remediator(Decider):
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
        super().__init__(config, store, clock=clock, live=live)
        self.tools = SwitchTools(config, store, actions_for, clock=clock, on_step=on_step)
        if observer is not None:
            self.tools.observer = observer

    @property
    def observer(self) -> SwitchObserver:
        """Told about switches and failures (the service's metrics)."""
        return self.tools.observer

    @property
    def on_step(self) -> Callable[[str], None] | None:
        """Tests: called after each journal step is recorded."""
        return self.tools.on_step

    @on_step.setter
    def on_step(self, hook: Callable[[str], None] | None) -> None:
        self.tools.on_step = hook

    def actions(self, fleet: FleetConfig) -> Actions:
        """The actions that carry out ``fleet``'s switches."""
        return self.tools.actions(fleet)

    def request(
        self,
        fleet_name: str | None,
        direction: str,
        *,
        trigger: str = Trigger.MANUAL,
        reason: str = "",
        dry_run: bool = False,
        lock_timeout: float | None = None,
    ) -> Outcome:
        """Decide and, if the decision is to switch, perform the switch as one transaction.

        Raises UnknownFleet for an unknown fleet and LockTimeout when the locks are held too
        long.
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
            return transaction.carry_out(
                self.tools, fleet, direction, decision, plan, dry_run, started
            )

    def resolve_open(self, fleet: FleetConfig) -> str | None:
        """Resolve ``fleet``'s interrupted switch, if its journal holds one (the caller holds
        the fleet's switch lock): ``rolled_forward``, ``rolled_back`` or None (none open).
        Raises RecoveryFailed when the fleet could not be put right; the entry stays open."""
        return recovery.resolve(self.tools, fleet)

    def accept_alerts(self, alerts: Sequence[WebhookAlert]) -> Acceptance:
        """The webhook's entry point: judge a delivery once per fleet under the fleet's lock.

        Answers at once; the switches it decides run when the caller starts
        ``Acceptance.pending`` (:mod:`remediator.switch.intake`).
        """
        return intake.accept(self.tools, self, alerts)
