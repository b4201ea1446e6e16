"""What carrying out, committing and resolving a switch work with: the state store, each
fleet's actions, the observer told about switches, the clock, and a test's step hook.

:class:`SwitchTools` is handed to :mod:`remediator.switch.transaction`,
:mod:`remediator.switch.recovery` and :mod:`remediator.switch.intake` explicitly; none of them
reaches back into the :class:`~remediator.switch.engine.Remediator` that built it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from remediator.config import Config, FleetConfig
from remediator.store.state import StateStore
from remediator.switch.plan import Actions, NullObserver, SwitchObserver

__all__ = ["SwitchTools"]


@dataclass
class SwitchTools:
    """The store, the actions, the observer and the clock a switch is carried out with."""

    config: Config
    store: StateStore
    actions_for: Callable[[FleetConfig], Actions]
    observer: SwitchObserver = field(default_factory=NullObserver)
    clock: Callable[[], float] = time.time
    # Tests: called after each journal step is recorded (e.g. to fill the disk there).
    on_step: Callable[[str], None] | None = None

    def now(self) -> float:
        """The time on the remediator's clock: its decisions and its status read the same."""
        return self.clock()

    def actions(self, fleet: FleetConfig) -> Actions:
        """The actions that carry out ``fleet``'s switches."""
        return self.actions_for(fleet)
