"""The status JSON of docs/architecture.md (the original system's shape, with extras).

Live figures (:mod:`remediator.switch.live`) come in read already; with none, each figure says that
no Prometheus was asked and ``vram_error_count`` is the one kept in the state file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

from remediator.config import AutoUpgrade, Config, FleetConfig
from remediator.config.windows import iso, window_state
from remediator.domain.records import DeferredAlert
from remediator.domain.state import FleetState, State
from remediator.switch.live import NOT_CONFIGURED, SOURCE, Figure, LiveFigures, unavailable

# Where vram_error_count comes from when Prometheus has no live count.
STATE_SOURCE: Final = "state"


def step_up_status(au: AutoUpgrade, now: float) -> dict[str, Any]:
    """Whether the automatic step up is on and its windows let it happen at ``now``."""
    window = window_state(au.windows, au.timezone, now)

    def when(instant: float | None) -> str | None:
        return iso(instant, au.timezone) if instant is not None else None

    return {
        "enabled": au.enabled,
        "allowed_now": au.enabled and window.open,
        "windows": [w.text for w in au.windows],
        "timezone": au.timezone,
        "window_open": window.open,
        "window_closes_at": when(window.closes_at),
        "next_window_at": when(window.opens_at),
    }


def _figure(live: LiveFigures, figure: Figure[Any], fallback: str | None = None) -> dict[str, Any]:
    live_value = figure.value is not None and figure.sampled_at is not None
    return {
        "source": SOURCE if live_value else fallback,
        "sampled_at": figure.sampled_at,
        "age_seconds": figure.age(live.at),
        "problem": figure.problem,
    }


def live_status(live: LiveFigures) -> dict[str, Any]:
    """Where each live figure came from and how old it is, or why it is missing."""
    return {
        "source": SOURCE if live.url is not None else None,
        "url": live.url,
        "at": round(live.at, 3),
        "error": live.error,
        "figures": {
            "vram_error_count": _figure(live, live.vram_errors, STATE_SOURCE),
            "free_vram_bytes": _figure(live, live.free_vram_bytes),
            "loaded_models": _figure(live, live.loaded_models),
        },
    }


def sorted_deferred(fs: FleetState) -> list[DeferredAlert]:
    """The fleet's deferred alerts, the first to act first."""
    return sorted(fs.deferred.values(), key=lambda a: (a.acts_at, a.key))


def deferred_status(alert: DeferredAlert) -> dict[str, Any]:
    """One deferred alert as the status shows it: what it asks, why it waits, when it acts."""
    return {
        "alert_key": alert.key,
        "alertname": alert.alertname or None,
        "direction": alert.direction,
        "trigger": alert.trigger,
        "reason": alert.reason,
        "detail": alert.detail,
        "deferred_at": iso(alert.deferred_at, "UTC"),
        "acts_at": iso(alert.acts_at, "UTC"),
        "acts_at_epoch": alert.acts_at,
    }


def fleet_status(
    fleet: FleetConfig,
    fs: FleetState,
    live: LiveFigures | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One fleet's status: the seed's keys first, then model-fleet's extras.

    ``vram_error_count`` is the live count when Prometheus has one, else the state's; ``now``
    (default: the time) decides the step-up windows.
    """
    rung = fleet.ladder[fs.index]
    switched = [r for r in fs.history if r.recovery != "rolled_back"]  # rolled back: never was
    last = switched[-1].to_dict() if switched else None
    live = live or unavailable(None, time.time(), NOT_CONFIGURED)
    errors = live.vram_errors.value
    return {
        "current_model": {
            "name": rung.name,
            "size_mb": rung.size_mb,
            "description": rung.description,
            "index": fs.index,
        },
        "vram_error_count": fs.vram_error_count if errors is None else errors,
        "max_vram_errors": fleet.max_vram_errors,
        "counting": fleet.counting,
        "available_models": fleet.ladder.names,
        "fleet_size": len(fleet.ladder),
        "can_downgrade": fs.index < len(fleet.ladder) - 1,
        "fleet": fleet.name,
        # The GPU the model server runs on now (a move changes it) and those it may run on.
        "gpu": fs.current_gpu(fleet),
        "gpus": list(fleet.listed_gpus),
        "can_upgrade": fs.index > 0,
        "policy": fleet.policy,
        "dry_run": fleet.dry_run,
        "last_switch": last,
        "last_failure": fs.last_failure,
        # A switch under way, or one that died and is not resolved yet (the switch journal).
        "switch_in_progress": None if fs.journal is None else fs.journal.to_dict(),
        # Alerts refused for a reason that passes, judged again when it has (deferrals.py).
        "deferred_alerts": [deferred_status(a) for a in sorted_deferred(fs)],
        "auto_upgrade": step_up_status(fleet.auto_upgrade, time.time() if now is None else now),
        "free_vram_bytes": live.free_vram_bytes.value,
        "loaded_models": [m.to_dict() for m in live.loaded_models.value or ()],
        "live": live_status(live),
    }


def build_status(
    config: Config,
    state: State,
    fleet: str | None = None,
    live: Mapping[str, LiveFigures] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The status of one fleet (seed shape), or of all fleets when several are configured.

    With one fleet, or with ``fleet`` named, the result is that fleet's status object; with
    several, ``{"fleets": {name: status}}``. Problems with the state file appear as ``notices``,
    the alerts last delivered to people as ``notifications`` (oldest first; with ``fleet``
    named, that fleet's only). ``live``: each fleet's live figures, when they were read;
    ``now`` (default: the time) decides the step-up windows.
    """
    live = live or {}
    notices = [n.to_dict() for n in state.notices]
    if fleet is not None or len(config.fleets) == 1:
        fc = config.fleet(fleet)
        result = fleet_status(fc, state.fleets[fc.name], live.get(fc.name), now)
    else:
        result = {
            "fleets": {
                name: fleet_status(fc, state.fleets[name], live.get(name), now)
                for name, fc in config.fleets.items()
            }
        }
    result["notices"] = notices
    result["notifications"] = [
        n.to_dict() for n in state.notifications if fleet is None or n.fleet == fleet
    ]
    return result
