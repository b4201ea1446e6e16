"""Pure decisions: (config, state, input, now) -> a target rung or a reason why not. No I/O.

Each :class:`Decision` carries a short ``reason`` code (a log field and a metric label) and a
human ``detail``. The caller performs whatever the decision says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from remediator.config import MIB, FleetConfig
from remediator.domain.kinds import Trigger
from remediator.domain.state import FleetState

HOUR: Final = 3600.0

# Triggers: "alert" and "auto" come from the monitoring loop and are held back by cooldown and
# the hourly cap; "manual" is a person who asked on purpose, so only the ladder's ends limit it.
AUTOMATIC_TRIGGERS: Final = frozenset({Trigger.ALERT, Trigger.AUTO})


@dataclass(frozen=True)
class Decision:
    """What to do: switch to ``target`` (a ladder index), or nothing, and why.

    A refusal for a reason that passes by itself (the cooldown, the hourly cap, a step-up
    window not yet open, a quiet period) says when in ``retry_at`` (epoch seconds): an alert
    refused so is deferred and judged again then (:mod:`remediator.switch.deferrals`). A move
    (:mod:`remediator.domain.moves`) is a switch to the current rung on another ``gpu``.
    """

    target: int | None
    reason: str
    detail: str
    retry_at: float | None = None
    gpu: str | None = None

    @property
    def switch(self) -> bool:
        """True when the decision is to switch."""
        return self.target is not None


@dataclass(frozen=True)
class AlertRef:
    """The identity of one alert: its idempotency key and when it started (epoch seconds)."""

    key: str
    started_at: float


def refuse(reason: str, detail: str, retry_at: float | None = None) -> Decision:
    """No switch, for ``reason``; ``retry_at``: when that reason passes by itself."""
    return Decision(None, reason, detail, retry_at)


def cap_clears_at(fleet: FleetConfig, state: FleetState, at: float) -> float:
    """The first moment from ``at`` on when the hourly cap allows another switch.

    ``switches_since(now - HOUR)`` counts a switch at ``t`` until ``now`` passes ``t + HOUR``:
    the cap clears when enough of the oldest switches of the hour have aged out.
    """
    times = sorted(
        r.time for r in state.history if r.recovery != "rolled_back" and r.time >= at - HOUR
    )
    excess = len(times) - fleet.max_switches_per_hour
    if excess < 0:
        return at
    return max(at, times[excess] + HOUR + 0.001)


def already_handled(state: FleetState, alert: AlertRef) -> Decision | None:
    """``duplicate`` when the fleet has handled ``alert`` (its key is recorded), else None."""
    if alert.key in state.processed_alerts:
        return refuse("duplicate", f"alert {alert.key} was already handled")
    return None


def _gates(
    fleet: FleetConfig, state: FleetState, now: float, trigger: str, alert: AlertRef | None
) -> Decision | None:
    """The checks shared by automatic switches: duplicate, stale, cooldown, hourly cap."""
    if alert is not None:
        handled = already_handled(state, alert)
        if handled is not None:
            return handled
        if state.last_switch_at is not None and alert.started_at < state.last_switch_at:
            return refuse(
                "stale_alert",
                f"the alert started {state.last_switch_at - alert.started_at:.0f} s before the "
                "fleet's last switch: it is about the previous model",
            )
    if trigger not in AUTOMATIC_TRIGGERS:
        return None
    if state.last_switch_at is not None and now - state.last_switch_at < fleet.cooldown_seconds:
        left = fleet.cooldown_seconds - (now - state.last_switch_at)
        ends = state.last_switch_at + fleet.cooldown_seconds
        return refuse(
            "cooldown",
            f"last switch {now - state.last_switch_at:.0f} s ago; {left:.0f} s left",
            cap_clears_at(fleet, state, ends),
        )
    recent = state.switches_since(now - HOUR)
    if recent >= fleet.max_switches_per_hour:
        clears = cap_clears_at(fleet, state, now)
        return refuse(
            "rate_limited",
            f"{recent} switches in the last hour "
            f"(max_switches_per_hour={fleet.max_switches_per_hour}); the next is allowed in "
            f"{clears - now:.0f} s",
            clears,
        )
    return None


def refusal(
    fleet: FleetConfig, state: FleetState, now: float, trigger: str, alert: AlertRef | None
) -> Decision | None:
    """Why no switch may start now (duplicate, stale, cooldown, hourly cap), or None: the gates
    every switch passes, shared with a move (remediator.domain.moves)."""
    return _gates(fleet, state, now, trigger, alert)


def choose_downgrade(
    fleet: FleetConfig | None,
    state: FleetState | None,
    now: float,
    *,
    trigger: str = Trigger.MANUAL,
    alert: AlertRef | None = None,
    free_vram_bytes: int | None = None,
    vram_source: str | None = None,
) -> Decision:
    """Pick the rung to step down to under the fleet's policy, or say why not.

    ``free_vram_bytes`` is the GPU's free VRAM now (None: not measured); ``vram_source`` says
    where it came from or, when it is None, why there is none (for the detail).
    """
    if fleet is None or state is None:
        return refuse("unknown_fleet", "no such fleet is configured")
    gate = _gates(fleet, state, now, trigger, alert)
    if gate is not None:
        return gate
    ladder, current = fleet.ladder, state.index
    if current >= len(ladder) - 1:
        return refuse("at_smallest", f"{ladder[current].name} is the smallest model of the ladder")
    here = ladder[current]
    if fleet.policy == "next":
        target = current + 1
        return Decision(target, "next", f"{here.name} -> {ladder[target].name} (next rung)")

    if fleet.policy == "next-smaller" or free_vram_bytes is None:
        return _next_smaller(fleet, current, vram_source)
    return _largest_fitting(fleet, current, free_vram_bytes, vram_source)


def _next_smaller(fleet: FleetConfig, current: int, vram_source: str | None) -> Decision:
    """The first lower rung that is smaller than the current one (policy ``next-smaller``, or
    ``fits`` without a measurement of the free VRAM)."""
    ladder, here = fleet.ladder, fleet.ladder[current]
    smaller = [i for i in range(current + 1, len(ladder)) if ladder[i].size_mb < here.size_mb]
    if not smaller:
        return refuse("no_smaller_rung", f"no lower rung is smaller than {here.name}")
    target = smaller[0]
    skipped = target - current - 1
    note = f", skipping {skipped} rung(s) that free no VRAM" if skipped else ""
    if fleet.policy == "fits":
        why = f" ({vram_source})" if vram_source else ""
        return Decision(
            target,
            "no_vram_measurement",
            f"{here.name} -> {ladder[target].name}: free VRAM unknown{why}, took the next "
            f"smaller rung{note}",
        )
    return Decision(target, "next_smaller", f"{here.name} -> {ladder[target].name}{note}")


def _largest_fitting(
    fleet: FleetConfig, current: int, free_vram_bytes: int, vram_source: str | None
) -> Decision:
    """Policy ``fits``: the largest lower rung the free VRAM holds with the headroom, else the
    smallest. The current model's memory comes back when it is unloaded."""
    ladder, here = fleet.ladder, fleet.ladder[current]
    lower = range(current + 1, len(ladder))
    available = free_vram_bytes + here.size_bytes
    need = fleet.headroom_mb * MIB
    fitting = [i for i in lower if ladder[i].size_bytes + need <= available]
    room = (
        f"{available // MIB} MiB ({free_vram_bytes // MIB} MiB free + {here.size_mb} MiB of "
        f"{here.name} once unloaded)"
    )
    source = f"; free VRAM from {vram_source}" if vram_source else ""
    if fitting:
        target = max(fitting, key=lambda i: (ladder[i].size_mb, -i))
        big = [f"{ladder[i].name} ({ladder[i].size_mb} MiB)" for i in lower if i not in fitting]
        too_large = f"; too large: {', '.join(big)}" if big else ""
        return Decision(
            target,
            "fits",
            f"{here.name} -> {ladder[target].name}: {ladder[target].size_mb} MiB + "
            f"{fleet.headroom_mb} MiB headroom fits in {room}{too_large}{source}",
        )
    target = min(lower, key=lambda i: (ladder[i].size_mb, i))
    return Decision(
        target,
        "nothing_fits",
        f"{here.name} -> {ladder[target].name}: no lower rung fits {room} with "
        f"{fleet.headroom_mb} MiB headroom; took the smallest{source}",
    )


def choose_upgrade(
    fleet: FleetConfig | None,
    state: FleetState | None,
    now: float,
    *,
    trigger: str = Trigger.MANUAL,
) -> Decision:
    """One rung up, or why not."""
    if fleet is None or state is None:
        return refuse("unknown_fleet", "no such fleet is configured")
    if state.index == 0:
        return refuse("at_largest", f"{fleet.ladder[0].name} is the largest model of the ladder")
    gate = _gates(fleet, state, now, trigger, None)
    if gate is not None:
        return gate
    target = state.index - 1
    return Decision(target, "step_up", f"{state.current_model} -> {fleet.ladder[target].name}")


def choose_reset(fleet: FleetConfig | None, state: FleetState | None) -> Decision:
    """Back to the top of the ladder, or why not."""
    if fleet is None or state is None:
        return refuse("unknown_fleet", "no such fleet is configured")
    if state.index == 0:
        return refuse("at_largest", f"already at {fleet.ladder[0].name}, the top of the ladder")
    return Decision(0, "reset", f"{state.current_model} -> {fleet.ladder[0].name}")


def upgrade_failed(fleet: FleetConfig, state: FleetState, now: float) -> bool:
    """True when a step down now would undo a step up inside its quiet period (a failed step up)."""
    last_up = state.last_upgrade_at
    return last_up is not None and now - last_up < fleet.auto_upgrade.quiet_seconds
