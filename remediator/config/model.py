"""The configuration's types and defaults; the defaults are the original system.

A fleet's ladder is in :mod:`remediator.config.ladder`, parsing and validation in
:mod:`remediator.config.parse`, checks and the effective configuration in
:mod:`remediator.config.report`; import all of them from ``remediator.config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from fleet_contract.env import CONFIG as CONFIG_ENV
from fleet_contract.env import NOTIFY_URL as NOTIFY_URL_ENV
from fleet_contract.env import STATE_FILE as STATE_FILE_ENV
from fleet_contract.hosts import default_host
from fleet_contract.labels import DEFAULT_FLEET
from fleet_contract.yamlfile import DEFAULT_CONFIG_NAME, ConfigError
from remediator.appconfig import FORMATS as APP_CONFIG_FORMATS
from remediator.appconfig import AppConfigTarget
from remediator.config.ladder import DEFAULT_LADDER, Ladder
from remediator.config.windows import Window
from remediator.ports.model_server import DEFAULT_KIND

__all__ = [
    "APP_CONFIG_FORMATS",
    "CONFIG_ENV",
    "COUNTINGS",
    "DEFAULT_CONFIG_NAME",
    "DEFAULT_FLEET",
    "GPU_PLACEMENTS",
    "NOTIFY_FORMATS",
    "NOTIFY_URL_ENV",
    "POLICIES",
    "RUNTIMES",
    "SHIPPED_ALERT_THRESHOLD",
    "STATE_FILE_ENV",
    "AppConfigTarget",
    "AutoUpgrade",
    "Config",
    "ConfigError",
    "Containers",
    "Counting",
    "FleetConfig",
    "GpuPlacement",
    "HttpLimits",
    "Notifications",
    "NotifyFormat",
    "Policy",
    "PrometheusSettings",
    "RuntimeKind",
    "ServerSettings",
    "Units",
    "UnknownFleet",
    "default_config",
]

Policy = Literal["next", "next-smaller", "fits"]
POLICIES: Final[tuple[str, ...]] = ("next", "next-smaller", "fits")
# How ModelFleetVRAMErrors counts a fleet's errors: since the model server last served a
# request ("3 consecutive VRAM errors", the original system's words), or since it started.
Counting = Literal["consecutive", "since_start"]
COUNTINGS: Final[tuple[str, ...]] = ("consecutive", "since_start")
# Where the model server runs: a Docker container (the original system) or a systemd unit.
RuntimeKind = Literal["docker", "systemd"]
RUNTIMES: Final[tuple[str, ...]] = ("docker", "systemd")
# Where a VRAM alert looks first: stay on the fleet's gpu (step down), or move_first to another
# of its gpus where the current model fits (remediator.domain.moves).
GpuPlacement = Literal["stay", "move_first"]
GPU_PLACEMENTS: Final[tuple[str, ...]] = ("stay", "move_first")
NotifyFormat = Literal["generic", "slack"]
NOTIFY_FORMATS: Final[tuple[str, ...]] = ("generic", "slack")
# The alert rule shipped in alert_rules/ fires at this many errors since start.
SHIPPED_ALERT_THRESHOLD: Final = 3


@dataclass(frozen=True)
class ServerSettings:
    """The fleet's model server: its kind (remediator.ports.model_server.SERVER_KINDS), its API's
    URL and where it runs: a Docker container, or the systemd ``unit`` (``runtime: systemd``)."""

    kind: str = DEFAULT_KIND
    url: str = "http://127.0.0.1:11434"
    runtime: RuntimeKind = "docker"
    unit: str | None = None


@dataclass(frozen=True)
class Containers:
    """How a fleet's containers are found and restarted."""

    use_labels: bool = True
    server_names: tuple[str, ...] = ()
    app_names: tuple[str, ...] = ()
    restart_server: bool = True
    stop_timeout_seconds: int = 10
    ready_timeout_seconds: float = 120.0
    # Without a health check, a restarted container must stay up this long to count as ready.
    settle_seconds: float = 2.0
    # The app's health endpoint, which names the model it uses: the switch commits as soon as
    # it answers with the new model (Docker's health status is then not waited for).
    app_health_url: str | None = None


@dataclass(frozen=True)
class Units:
    """The application's systemd units (``units.app``), the counterpart of containers.app."""

    app: tuple[str, ...] = ()


@dataclass(frozen=True)
class AutoUpgrade:
    """The automatic step back up: off by default.

    ``windows`` (remediator.config.windows): when set, the step up happens only inside one of them,
    and there it may climb several rungs at once; ``timezone`` (IANA) is their zone, None the
    host's local time.
    """

    enabled: bool = False
    quiet_seconds: float = 3600.0
    failed_quiet_seconds: float = 4 * 3600.0
    headroom_mb: int = 512
    windows: tuple[Window, ...] = ()
    timezone: str | None = None


@dataclass(frozen=True)
class Notifications:
    """Where the remediator forwards the alerts Alertmanager sends to /webhook/notify.

    No ``webhook_url``: the alerts are only logged and kept in the status. ``generic`` posts
    the Alertmanager payload as it came; ``slack`` posts ``{"text": ...}``, which Slack,
    Mattermost and Rocket.Chat incoming webhooks accept.
    """

    webhook_url: str | None = None
    format: NotifyFormat = "generic"
    timeout_seconds: float = 5.0


@dataclass(frozen=True)
class PrometheusSettings:
    """Where the remediator reads live figures (free VRAM, VRAM errors, loaded models) at
    decision time and for the status. No ``url``: no live figures, decisions as without them."""

    url: str | None = None
    timeout_seconds: float = 2.0


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP request may cost the service; beyond them it is refused before the work.

    A real Alertmanager delivery measures about 0.7 KB per alert (tests/data, compact JSON as
    Alertmanager sends it; ~2 KB with long annotations): 1,000 alerts are 0.7-2 MB and 10,000
    are about 7 MB. 16 MiB and 10,000 alerts leave room for the largest batch seen (the 10,000
    alerts of issue 13, one switch per fleet) while a 500 MB body is refused unread (413). An
    Alertmanager payload nests 4 levels deep; 32 refuses only what no client sends (400).
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_alerts: int = 10_000
    max_json_depth: int = 32


@dataclass(frozen=True)
class FleetConfig:
    """One model server (usually one GPU) with its ladder and its remediation settings."""

    name: str
    ladder: Ladder = field(default_factory=lambda: Ladder(DEFAULT_LADDER))
    max_vram_errors: int = SHIPPED_ALERT_THRESHOLD
    # Which count max_vram_errors applies to (exported as model_fleet_vram_error_counting_info,
    # which the rule follows): consecutive or since_start.
    counting: Counting = "consecutive"
    policy: Policy = "next"
    headroom_mb: int = 512
    cooldown_seconds: float = 60.0
    max_switches_per_hour: int = 6
    dry_run: bool = False
    gpu: str = "0"
    # The GPUs the fleet may run on (holding gpu, where its model server starts; empty: gpu
    # alone) and whether a VRAM alert moves it to one of them before it steps down.
    gpus: tuple[str, ...] = ()
    placement: GpuPlacement = "stay"
    server: ServerSettings = field(default_factory=ServerSettings)
    pull_timeout_seconds: float = 1800.0
    containers: Containers = field(default_factory=Containers)
    units: Units = field(default_factory=Units)
    app_config: tuple[AppConfigTarget, ...] = ()
    # Files that name the GPU the model server runs on (compose's .env: MODEL_FLEET_GPU): a
    # move writes the new GPU into them, as a switch writes the model into app_config.
    gpu_config: tuple[AppConfigTarget, ...] = ()
    auto_upgrade: AutoUpgrade = field(default_factory=AutoUpgrade)
    # The fraction (0..1) of the current model's bytes that may sit outside VRAM before
    # ModelFleetCPUOffload asks for a step down (exported as model_fleet_offload_tolerance_ratio).
    offload_tolerance: float = 0.0

    @property
    def listed_gpus(self) -> tuple[str, ...]:
        """The GPUs the fleet may run on: ``gpus``, or ``gpu`` alone when none are listed."""
        return self.gpus or (self.gpu,)


class UnknownFleet(KeyError):
    """No fleet of that name is configured, or several are and none was named. A KeyError, as
    a lookup by name is; ``message`` is what to tell the caller."""

    @property
    def message(self) -> str:
        """The reason, without KeyError's quotes."""
        return str(self.args[0])


@dataclass(frozen=True)
class Config:
    """The whole effective configuration."""

    fleets: Mapping[str, FleetConfig]
    # The GPU host this remediator acts for: its metrics' `host` label; alerts of another
    # host are ignored (fleet_contract.hosts).
    host: str = field(default_factory=default_host)
    state_file: Path = Path("model_fleet_state.json")
    lock_timeout_seconds: float = 10.0
    history_limit: int = 100
    alert_key_limit: int = 1000
    alert_key_ttl_seconds: float = 7 * 24 * 3600.0
    protect_reads: bool = False
    notifications: Notifications = field(default_factory=Notifications)
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    http: HttpLimits = field(default_factory=HttpLimits)
    source: str = "<defaults>"
    # (old key, new key) for every deprecated key the file used, e.g.
    # ("fleets.a.ollama_url", "fleets.a.server.url"): check-config names them.
    deprecated_keys: tuple[tuple[str, str], ...] = ()

    def fleet(self, name: str | None) -> FleetConfig:
        """The fleet called ``name``; None means the only fleet. Raises UnknownFleet."""
        if name is None:
            if len(self.fleets) == 1:
                return next(iter(self.fleets.values()))
            raise UnknownFleet(
                f"several fleets are configured ({', '.join(self.fleets)}): name one"
            )
        if name not in self.fleets:
            raise UnknownFleet(f"unknown fleet {name!r} (configured: {', '.join(self.fleets)})")
        return self.fleets[name]


def default_config() -> Config:
    """The original system: one fleet ``default``, the 4-model ladder, threshold 3."""
    return Config(fleets={DEFAULT_FLEET: FleetConfig(name=DEFAULT_FLEET)})
