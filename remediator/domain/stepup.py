"""The automatic step up: after a quiet period, with VRAM headroom, inside the off-peak windows
if there are any. Pure, as :mod:`remediator.domain.decisions` is, whose gates it passes."""

from __future__ import annotations

from remediator.config import MIB, FleetConfig
from remediator.config.windows import describe, window_state
from remediator.domain.decisions import AlertRef, Decision, refusal, refuse
from remediator.domain.kinds import Trigger
from remediator.domain.state import FleetState

__all__ = ["choose_auto_upgrade"]


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
        return refuse("unknown_fleet", "no such fleet is configured")
    au = fleet.auto_upgrade
    if not au.enabled:
        return refuse("auto_upgrade_disabled", f"auto_upgrade is off for fleet {fleet.name}")
    if state.index == 0:
        return refuse("at_largest", f"{fleet.ladder[0].name} is the largest model of the ladder")
    gate = refusal(fleet, state, now, Trigger.AUTO, alert)
    if gate is not None:
        return gate
    closed = _outside_windows(fleet, now)
    if closed is not None:
        return closed
    quiet, calm_since = _quiet_period(fleet, state, now, last_error_at)
    if now - calm_since < quiet:
        why = " (a step up failed recently)" if quiet != au.quiet_seconds else ""
        return refuse(
            "quiet_period",
            f"quiet for {now - calm_since:.0f} s of the {quiet:.0f} s required{why}",
            calm_since + quiet,
        )
    return _step_up_target(fleet, state, quiet, free_vram_bytes, vram_source)


def _outside_windows(fleet: FleetConfig, now: float) -> Decision | None:
    """The refusal while ``now`` is outside every step-up window (when there are any)."""
    au = fleet.auto_upgrade
    if not au.windows:
        return None
    window = window_state(au.windows, au.timezone, now)
    if window.open:
        return None
    nxt = describe(window.opens_at, au.timezone) if window.opens_at else "never"
    return refuse(
        "outside_window",
        f"outside the step-up windows ({'; '.join(w.text for w in au.windows)}); "
        f"the next opens {nxt}",
        window.opens_at,
    )


def _quiet_period(
    fleet: FleetConfig, state: FleetState, now: float, last_error_at: float | None
) -> tuple[float, float]:
    """How long the fleet must have been quiet (longer after a failed step up), and since
    when it has been: its last switch or VRAM error."""
    au = fleet.auto_upgrade
    failed_recently = (
        state.last_upgrade_failed_at is not None
        and now - state.last_upgrade_failed_at < au.failed_quiet_seconds
    )
    quiet = au.failed_quiet_seconds if failed_recently else au.quiet_seconds
    calm_since = max(t for t in (state.last_switch_at, last_error_at, 0.0) if t is not None)
    return quiet, calm_since


def _step_up_target(
    fleet: FleetConfig,
    state: FleetState,
    quiet: float,
    free_vram_bytes: int | None,
    vram_source: str | None,
) -> Decision:
    """The rung to step up to once the gates let it: one rung, or inside a window the highest
    the free VRAM holds; refused when even one rung lacks the headroom."""
    au = fleet.auto_upgrade
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
            return refuse("no_headroom", room[2:])
    return Decision(
        target,
        "step_up",
        f"{state.current_model} -> {larger.name} after {quiet:.0f} s quiet{room}",
    )
