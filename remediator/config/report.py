"""What check-config prints: warnings about a valid configuration, and the effective one."""

from __future__ import annotations

from typing import Any

from fleet_contract.labels import ROLE_APP, ROLE_SERVER
from remediator.config.model import SHIPPED_ALERT_THRESHOLD, Config, FleetConfig
from remediator.config.placement import placement_of
from remediator.config.windows import describe, window_state
from remediator.ports.model_server import CreateSpec

__all__ = ["config_warnings", "effective_config", "redact_url", "strip_credentials", "window_notes"]


def redact_url(url: str | None) -> str | None:
    """Scheme and host only: webhook URLs carry their token in the path or the query."""
    if url is None:
        return None
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return f"{scheme}://{host}/<redacted>"


def strip_credentials(url: str | None) -> str | None:
    """The URL without a ``user:password@`` part, for showing (Prometheus behind basic auth)."""
    if url is None or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"


def config_warnings(config: Config) -> list[str]:
    """Things that are valid but probably not what the operator wants."""
    warnings = [
        f"{old} is deprecated: use {new} (the old key still works)"
        for old, new in config.deprecated_keys
    ]
    for fleet in config.fleets.values():
        ladder = fleet.ladder
        if len(ladder) == 1:
            warnings.append(
                f"fleet {fleet.name}: the ladder has one model ({ladder[0].name}): "
                "there is nothing to step down to"
            )
        for upper, lower in zip(ladder.rungs, ladder.rungs[1:], strict=False):
            if lower.size_mb >= upper.size_mb:
                what = "larger than" if lower.size_mb > upper.size_mb else "the same size as"
                skip = (
                    "policy 'next' takes that step anyway"
                    if fleet.policy == "next"
                    else f"policy '{fleet.policy}' skips it"
                )
                warnings.append(
                    f"fleet {fleet.name}: {lower.name} ({lower.size_mb} MB) is {what} "
                    f"{upper.name} ({upper.size_mb} MB), so stepping down from {upper.name} "
                    f"to {lower.name} frees no VRAM ({skip})"
                )
        if fleet.max_vram_errors != SHIPPED_ALERT_THRESHOLD:
            warnings.append(
                f"fleet {fleet.name}: max_vram_errors is {fleet.max_vram_errors} but the shipped "
                f"alert rule fires at {SHIPPED_ALERT_THRESHOLD}; change "
                "alert_rules/model_fleet.rules.yml to match"
            )
        if fleet.auto_upgrade.enabled and len(ladder) == 1:
            warnings.append(f"fleet {fleet.name}: auto_upgrade is enabled on a one-model ladder")
        if fleet.auto_upgrade.windows and not fleet.auto_upgrade.enabled:
            warnings.append(
                f"fleet {fleet.name}: auto_upgrade.windows are set but auto_upgrade.enabled is "
                "false: there is no automatic step up to schedule"
            )
        if not fleet.app_config:
            warnings.append(
                f"fleet {fleet.name}: no app_config targets: a switch changes the model server "
                "but tells the application nothing"
            )
        warnings += _placement_warnings(fleet)
        if fleet.placement == "move_first" and config.prometheus.url is None:
            warnings.append(
                f"fleet {fleet.name}: placement is move_first but no prometheus.url is set: "
                "without live free VRAM per GPU the fleet never moves, it steps down"
            )
    return warnings


def _placement_warnings(fleet: FleetConfig) -> list[str]:
    """A fleet where nothing is restarted, or labels that find nothing."""
    server, app = placement_of(fleet, ROLE_SERVER), placement_of(fleet, ROLE_APP)
    if server.finds_nothing and app.finds_nothing:
        return [
            f"fleet {fleet.name}: containers.use_labels is false and no container names "
            "are given: a switch restarts nothing"
        ]
    if fleet.containers.use_labels and "docker" not in (server.runtime, app.runtime):
        return [
            f"fleet {fleet.name}: containers.use_labels has no effect: labels find Docker "
            "containers, and the model server (server.unit) and the application (units.app) "
            "are systemd units"
        ]
    return []


def _create_dict(spec: CreateSpec) -> dict[str, Any]:
    """A custom rung's create request as it will be sent, and the Modelfile it came from."""
    return {**spec.request_fields(), **({"modelfile": spec.modelfile} if spec.modelfile else {})}


def _fleet_dict(f: FleetConfig) -> dict[str, Any]:
    """One fleet of the effective configuration."""
    return {
        "ladder": [
            {
                "name": r.name,
                "size_mb": r.size_mb,
                "description": r.description,
                **({"create": _create_dict(r.create)} if r.create else {}),
            }
            for r in f.ladder.rungs
        ],
        "max_vram_errors": f.max_vram_errors,
        "counting": f.counting,
        "policy": f.policy,
        "headroom_mb": f.headroom_mb,
        "cooldown_seconds": f.cooldown_seconds,
        "max_switches_per_hour": f.max_switches_per_hour,
        "dry_run": f.dry_run,
        "gpu": f.gpu,
        "gpus": list(f.listed_gpus),
        "placement": f.placement,
        "server": {
            "kind": f.server.kind,
            "url": f.server.url,
            "runtime": f.server.runtime,
            "unit": f.server.unit,
        },
        "pull_timeout_seconds": f.pull_timeout_seconds,
        "offload_tolerance": f.offload_tolerance,
        "containers": {
            "use_labels": f.containers.use_labels,
            "server": list(f.containers.server_names),
            "app": list(f.containers.app_names),
            "restart_server": f.containers.restart_server,
            "stop_timeout_seconds": f.containers.stop_timeout_seconds,
            "ready_timeout_seconds": f.containers.ready_timeout_seconds,
            "settle_seconds": f.containers.settle_seconds,
            "app_health_url": f.containers.app_health_url,
        },
        "units": {"app": list(f.units.app)},
        "app_config": [
            {"path": t.path, "format": t.format, **({"key": t.key} if t.key else {})}
            for t in f.app_config
        ],
        "gpu_config": [
            {"path": t.path, "format": t.format, **({"key": t.key} if t.key else {})}
            for t in f.gpu_config
        ],
        "auto_upgrade": {
            "enabled": f.auto_upgrade.enabled,
            "quiet_seconds": f.auto_upgrade.quiet_seconds,
            "failed_quiet_seconds": f.auto_upgrade.failed_quiet_seconds,
            "headroom_mb": f.auto_upgrade.headroom_mb,
            "windows": [w.text for w in f.auto_upgrade.windows],
            "timezone": f.auto_upgrade.timezone,
        },
    }


def effective_config(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, for logging and check-config."""
    return {
        "source": config.source,
        "host": config.host,
        "state_file": str(config.state_file),
        "lock_timeout_seconds": config.lock_timeout_seconds,
        "history_limit": config.history_limit,
        "alert_keys": {"max": config.alert_key_limit, "ttl_seconds": config.alert_key_ttl_seconds},
        "protect_reads": config.protect_reads,
        "notifications": {
            "webhook_url": redact_url(config.notifications.webhook_url),
            "format": config.notifications.format,
            "timeout_seconds": config.notifications.timeout_seconds,
        },
        "prometheus": {
            "url": strip_credentials(config.prometheus.url),
            "timeout_seconds": config.prometheus.timeout_seconds,
        },
        "http": {
            "max_body_bytes": config.http.max_body_bytes,
            "max_alerts": config.http.max_alerts,
            "max_json_depth": config.http.max_json_depth,
        },
        "fleets": {name: _fleet_dict(f) for name, f in config.fleets.items()},
    }


def window_notes(config: Config, now: float) -> list[str]:
    """For check-config: each fleet's step-up windows, whether one is open at ``now`` and
    when the next opens (``now`` decides, as in the decisions)."""
    notes = []
    for fleet in config.fleets.values():
        au = fleet.auto_upgrade
        if not au.windows:
            continue
        zone = au.timezone or "local time"
        ws = window_state(au.windows, au.timezone, now)
        if ws.open and ws.closes_at is None:
            where = "open now, and for good"
        elif ws.open and ws.closes_at is not None:
            where = f"open now until {describe(ws.closes_at, au.timezone)}"
        else:
            where = "closed now"
        following = describe(ws.opens_at, au.timezone) if ws.opens_at else "none found"
        texts = "; ".join(w.text for w in au.windows)
        notes.append(
            f"fleet {fleet.name}: automatic step up only inside {texts} ({zone}): {where}; "
            f"next opening {following}"
        )
    return notes
