"""The switch journal: a switch's intent and progress, kept in the state file.

Before the first side effect of a real switch, :meth:`Journal.open` records in the fleet's
``journal`` entry what the switch will do (fleet, from, to, direction, trigger, alert key, the
steps planned, the start time); each completed step is appended by :meth:`Journal.record`;
the commit transaction that moves the fleet to its new rung closes the entry in the same
atomic write (``FleetState.apply_switch``). An entry found open by a process that holds the
fleet's switch lock therefore belongs to a switch that died, and :mod:`remediator.switch.recovery`
resolves it. Every write is a :class:`~remediator.store.state.StateStore` transaction: temp file,
fsync, rename, fsync of the directory.

``MODEL_FLEET_TEST_CRASH_AFTER=<step>`` (tests only) makes the process that records ``step``
SIGKILL its whole process group at once, as a power cut would: the crash tests start the
service in its own session and name each step boundary in turn.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator

from fleet_contract.env import TEST_CRASH_AFTER
from remediator.domain.loggers import JOURNAL as log
from remediator.domain.records import SwitchJournal
from remediator.store.locks import StateError
from remediator.store.state import StateStore
from remediator.switch.plan import Done, StepRecorder

# The steps of a real switch, in order, as FleetActions records them ("restarted_<role>" once
# per container). "intent" is the entry itself; "committed" follows the closing commit.
PLANNED = (
    "pulled",
    "found",
    "unloaded",
    "config_written",
    "restarted_ollama",
    "verified_ollama",
    "restarted_app",
    "verified_app",
    "settled",
)
# A custom rung (its `create`) made in the store: after "pulled" (its base), before "found".
CREATED = "created"


def planned_steps(creates: bool) -> list[str]:
    """The steps of a switch, with CREATED when its new rung is made rather than pulled."""
    return [PLANNED[0], CREATED, *PLANNED[1:]] if creates else list(PLANNED)


# The steps of a move (remediator.switch.moving): the model server's container recreated on another
# GPU, found ready on the same model, and the old container, kept aside until then, removed.
MOVE_PLANNED = (
    "found",
    "gpu_config_written",
    "moved_ollama",
    "verified_ollama",
    "move_finished",
)
# Every step a crash test can stop at: the switch's, then the recovery's own.
CRASH_POINTS = (
    "intent",
    *planned_steps(creates=True),
    "committed",
    "recovery_started",
    "recovery_config_written",
    "recovery_restored",
)

# A failed commit (a full disk, a held lock) is tried again after these pauses.
COMMIT_RETRY_PAUSES = (0.2, 0.5, 1.0)


def crash_point(step: str) -> None:
    """Tests only: SIGKILL this process group when ``MODEL_FLEET_TEST_CRASH_AFTER`` is ``step``."""
    if os.environ.get(TEST_CRASH_AFTER) == step:
        log.warning("%s=%s: killing the process group now", TEST_CRASH_AFTER, step)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.killpg(os.getpgrp(), signal.SIGKILL)


class Journal:
    """The journal entry of one switch of one fleet, written through the store."""

    def __init__(
        self,
        store: StateStore,
        fleet: str,
        *,
        clock: Callable[[], float] = time.time,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self._clock = clock
        self._on_step = on_step
        self.lost_steps: list[str] = []  # steps whose record could not be written
        self.write_seconds: list[float] = []

    def open(self, entry: SwitchJournal) -> None:
        """Record the intent; raises StateError when it cannot be written (nothing was done)."""
        with self.store.transaction() as state:
            state.fleets[self.fleet].journal = entry
        log.info(
            "fleet %s: journal opened: %s -> %s (%s, %s)",
            self.fleet,
            entry.from_model,
            entry.to_model,
            entry.direction,
            entry.trigger,
        )
        self._after("intent")

    def record(self, step: str, detail: str = "") -> None:
        """Append a completed step. A write that fails is logged and the switch goes on:
        a missing step only makes a recovery roll back where it might have rolled forward."""
        started = time.monotonic()
        try:
            with self.store.transaction() as state:
                entry = state.fleets[self.fleet].journal
                if entry is not None:
                    entry.done.append(f"{step} {detail}".strip())
        except StateError as exc:
            self.lost_steps.append(step)
            log.warning(
                "fleet %s: could not record step %s in the journal: %s", self.fleet, step, exc
            )
        self.write_seconds.append(time.monotonic() - started)
        self._after(step)

    def _after(self, step: str) -> None:
        if self._on_step is not None:
            self._on_step(step)
        crash_point(step)


def journaled(done: Iterator[Done], note: StepRecorder) -> list[str]:
    """Tell ``note`` (:meth:`Journal.record`) each step a step module yields, before that
    module goes on to the next; what the steps said, for the switch's list of steps."""
    said: list[str] = []
    for d in done:
        note(d.step, d.detail)
        said += d.said
    return said
