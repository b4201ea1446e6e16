"""Pure decisions: (config, state, input, now) -> a target rung or a reason why not. No I/O.

Each :class:`Decision` carries a short ``reason`` code (a log field and a metric label) and a
human ``detail``. The caller performs whatever the decision says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from remediator.config import MIB, FleetConfig
from remediator.config.windows import describe, window_state
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


def _no(reason: str, detail: str, retry_at: float | None = None) -> Decision:
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
        return _no("duplicate", f"alert {alert.key} was already handled")
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
            return _no(
                "stale_alert",
                f"the alert started {state.last_switch_at - alert.started_at:.0f} s before the "
                "fleet's last switch: it is about the previous model",
            )
    if trigger not in AUTOMATIC_TRIGGERS:
        return None
    if state.last_switch_at is not None and now - state.last_switch_at < fleet.cooldown_seconds:
        left = fleet.cooldown_seconds - (now - state.last_switch_at)
        ends = state.last_switch_at + fleet.cooldown_seconds
        return _no(
            "cooldown",
            f"last switch {now - state.last_switch_at:.0f} s ago; {left:.0f} s left",
            cap_clears_at(fleet, state, ends),
        )
    recent = state.switches_since(now - HOUR)
    if recent >= fleet.max_switches_per_hour:
        clears = cap_clears_at(fleet, state, now)
        return _no(
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
        return _no("unknown_fleet", "no such fleet is configured")
    gate = _gates(fleet, state, now, trigger, alert)
    if gate is not None:
        return gate
    ladder, current = fleet.ladder, state.index
    if current >= len(ladder) - 1:
        return _no("at_smallest", f"{ladder[current].name} is the smallest model of the ladder")
    lower = range(current + 1, len(ladder))
    here = ladder[current]

    if fleet.policy == "next":
        target = current + 1
        return Decision(target, "next", f"{here.name} -> {ladder[target].name} (next rung)")

    smaller = [i for i in lower if ladder[i].size_mb < here.size_mb]
    if fleet.policy == "next-smaller" or free_vram_bytes is None:
        if not smaller:
            return _no("no_smaller_rung", f"no lower rung is smaller than {here.name}")
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

    # fits: the current model's memory comes back when it is unloaded.
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
        return _no("unknown_fleet", "no such fleet is configured")
    if state.index == 0:
        return _no("at_largest", f"{fleet.ladder[0].name} is the largest model of the ladder")
    gate = _gates(fleet, state, now, trigger, None)
    if gate is not None:
        return gate
    target = state.index - 1
    return Decision(target, "step_up", f"{state.current_model} -> {fleet.ladder[target].name}")


def choose_reset(fleet: FleetConfig | None, state: FleetState | None) -> Decision:
    """Back to the top of the ladder, or why not."""
    if fleet is None or state is None:
        return _no("unknown_fleet", "no such fleet is configured")
    if state.index == 0:
        return _no("at_largest", f"already at {fleet.ladder[0].name}, the top of the ladder")
    return Decision(0, "reset", f"{state.current_model} -> {fleet.ladder[0].name}")


def upgrade_failed(fleet: FleetConfig, state: FleetState, now: float) -> bool:
    """True when a step down now would undo a step up inside its quiet period (a failed step up)."""
    last_up = state.last_upgrade_at
    return last_up is not None and now - last_up < fleet.auto_upgrade.quiet_seconds


def choose_auto_upgrade(
    fleet: FleetConfig | None,
    state: FleetState | None,
    now: float,
    *,
    last_error_at: float | None = None,
    free_vram_bytes: int | None = None,
    alert: AlertRef | None = None,
    vram_source: str | None = None,
) -> Decision:
    """The automatic step up: after a quiet period, with VRAM headroom (hysteresis).

    Without ``auto_upgrade.windows``, one rung. With them, only while ``now`` is inside one,
    and then to the highest rung that the free VRAM holds with headroom (the top, when it
    fits); without a measurement, one rung.
    ``last_error_at`` is the time of the last VRAM error seen (None: none known).
    ``free_vram_bytes`` None means the caller could not measure; the alert rule that asked
    for the step up has then checked the headroom in Prometheus. ``vram_source`` says where
    the figure came from or why there is none (for the detail).
    """
    if fleet is None or state is None:
        return _no("unknown_fleet", "no such fleet is configured")
    au = fleet.auto_upgrade
    if not au.enabled:
        return _no("auto_upgrade_disabled", f"auto_upgrade is off for fleet {fleet.name}")
    if state.index == 0:
        return _no("at_largest", f"{fleet.ladder[0].name} is the largest model of the ladder")
    gate = _gates(fleet, state, now, Trigger.AUTO, alert)
    if gate is not None:
        return gate
    if au.windows:
        window = window_state(au.windows, au.timezone, now)
        if not window.open:
            nxt = describe(window.opens_at, au.timezone) if window.opens_at else "never"
            return _no(
                "outside_window",
                f"outside the step-up windows ({'; '.join(w.text for w in au.windows)}); "
                f"the next opens {nxt}",
                window.opens_at,
            )
    failed_recently = (
        state.last_upgrade_failed_at is not None
        and now - state.last_upgrade_failed_at < au.failed_quiet_seconds
    )
    quiet = au.failed_quiet_seconds if failed_recently else au.quiet_seconds
    calm_since = max(t for t in (state.last_switch_at, last_error_at, 0.0) if t is not None)
    if now - calm_since < quiet:
        why = " (a step up failed recently)" if failed_recently else ""
        return _no(
            "quiet_period",
            f"quiet for {now - calm_since:.0f} s of the {quiet:.0f} s required{why}",
            calm_since + quiet,
        )
    ladder, current = fleet.ladder, state.index
    target = current - 1
    larger, here = ladder[target], ladder[current]
    why = f" ({vram_source})" if vram_source else ""
    room = f"; free VRAM unknown{why}: the step-up alert checked the headroom"
    if free_vram_bytes is not None:
        available = free_vram_bytes + here.size_bytes
        headroom = au.headroom_mb * MIB
        source = f"; free VRAM from {vram_source}" if vram_source else ""
        fitting = [i for i in range(current) if ladder[i].size_bytes + headroom <= available]
        if au.windows and fitting and min(fitting) < target:
            top = min(fitting)
            return Decision(
                top,
                "step_up_fits",
                f"{state.current_model} -> {ladder[top].name} ({current - top} rungs) inside a "
                f"step-up window: {ladder[top].size_mb} MB + {au.headroom_mb} MB headroom fits "
                f"in {available // MIB} MB{source}",
            )
        need = larger.size_bytes + headroom
        room = (
            f"; {larger.name} needs {need // MIB} MiB ({larger.size_mb} MiB + {au.headroom_mb} "
            f"MiB headroom), {available // MIB} MiB would be free ({free_vram_bytes // MIB} MiB "
            f"free + {here.size_mb} MiB of {here.name} once unloaded){source}"
        )
        if target not in fitting:
            return _no("no_headroom", room[2:])
    return Decision(
        target,
        "step_up",
        f"{state.current_model} -> {larger.name} after {quiet:.0f} s quiet{room}",
    )
