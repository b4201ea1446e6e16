"""Fleet configuration: one YAML file, validated at start-up; defaults are the original system."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from remediator.adapters.appconfig import FORMATS as APP_CONFIG_FORMATS
from remediator.adapters.appconfig import AppConfigError, AppConfigTarget

log = logging.getLogger(__name__)

CONFIG_ENV: Final = "MODEL_FLEET_CONFIG"
STATE_FILE_ENV: Final = "MODEL_FLEET_STATE_FILE"
NOTIFY_URL_ENV: Final = "MODEL_FLEET_NOTIFY_URL"
DEFAULT_CONFIG_NAME: Final = "model-fleet.yaml"
DEFAULT_FLEET: Final = "default"
MIB: Final = 1024 * 1024

Policy = Literal["next", "next-smaller", "fits"]
POLICIES: Final[tuple[str, ...]] = ("next", "next-smaller", "fits")
NotifyFormat = Literal["generic", "slack"]
NOTIFY_FORMATS: Final[tuple[str, ...]] = ("generic", "slack")
# The alert rule shipped in alert_rules/ fires at this many errors since start.
SHIPPED_ALERT_THRESHOLD: Final = 3


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message names file and key."""


@dataclass(frozen=True)
class Rung:
    """One model of a ladder."""

    name: str
    size_mb: int
    description: str = ""

    @property
    def size_bytes(self) -> int:
        """Size in bytes (size_mb is MiB, as Ollama reports model sizes)."""
        return self.size_mb * MIB


DEFAULT_LADDER: Final[tuple[Rung, ...]] = (
    Rung("llama3.2:3b", 2048, "Large model - 3B parameters"),
    Rung("phi3:mini", 2200, "Medium model - Phi3 mini"),
    Rung("tinyllama:1.1b", 637, "Small model - 1.1B parameters"),
    Rung("qwen2.5:0.5b", 397, "Tiny model - 0.5B parameters"),
)


@dataclass(frozen=True)
class Ladder:
    """Models from largest (index 0, preferred) to smallest."""

    rungs: tuple[Rung, ...]

    def __len__(self) -> int:
        return len(self.rungs)

    def __getitem__(self, index: int) -> Rung:
        return self.rungs[index]

    @property
    def names(self) -> list[str]:
        """Model names in ladder order."""
        return [r.name for r in self.rungs]

    def index_of(self, name: str) -> int | None:
        """Position of the model named ``name``, or None when it is not on the ladder."""
        for i, rung in enumerate(self.rungs):
            if rung.name == name:
                return i
        return None


@dataclass(frozen=True)
class Containers:
    """How a fleet's containers are found and restarted."""

    use_labels: bool = True
    ollama_names: tuple[str, ...] = ()
    app_names: tuple[str, ...] = ()
    restart_ollama: bool = True
    stop_timeout_seconds: int = 10
    ready_timeout_seconds: float = 120.0
    # Without a health check, a restarted container must stay up this long to count as ready.
    settle_seconds: float = 2.0
    # The app's health endpoint, which names the model it uses: the switch commits as soon as
    # it answers with the new model (Docker's health status is then not waited for).
    app_health_url: str | None = None


@dataclass(frozen=True)
class AutoUpgrade:
    """The automatic step back up: off by default."""

    enabled: bool = False
    quiet_seconds: float = 3600.0
    failed_quiet_seconds: float = 4 * 3600.0
    headroom_mb: int = 512


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
class FleetConfig:
    """One model server (usually one GPU) with its ladder and its remediation settings."""

    name: str
    ladder: Ladder = field(default_factory=lambda: Ladder(DEFAULT_LADDER))
    max_vram_errors: int = SHIPPED_ALERT_THRESHOLD
    policy: Policy = "next"
    headroom_mb: int = 512
    cooldown_seconds: float = 60.0
    max_switches_per_hour: int = 6
    dry_run: bool = False
    gpu: str = "0"
    ollama_url: str = "http://127.0.0.1:11434"
    pull_timeout_seconds: float = 1800.0
    containers: Containers = field(default_factory=Containers)
    app_config: tuple[AppConfigTarget, ...] = ()
    auto_upgrade: AutoUpgrade = field(default_factory=AutoUpgrade)


@dataclass(frozen=True)
class Config:
    """The whole effective configuration."""

    fleets: Mapping[str, FleetConfig]
    state_file: Path = Path("model_fleet_state.json")
    lock_timeout_seconds: float = 10.0
    history_limit: int = 100
    alert_key_limit: int = 1000
    alert_key_ttl_seconds: float = 7 * 24 * 3600.0
    protect_reads: bool = False
    notifications: Notifications = field(default_factory=Notifications)
    source: str = "<defaults>"

    def fleet(self, name: str | None) -> FleetConfig:
        """The fleet called ``name``; None means the only fleet. Raises KeyError if unknown."""
        if name is None:
            if len(self.fleets) == 1:
                return next(iter(self.fleets.values()))
            raise KeyError(f"several fleets are configured ({', '.join(self.fleets)}): name one")
        if name not in self.fleets:
            raise KeyError(f"unknown fleet {name!r} (configured: {', '.join(self.fleets)})")
        return self.fleets[name]


def default_config() -> Config:
    """The original system: one fleet ``default``, the 4-model ladder, threshold 3."""
    return Config(fleets={DEFAULT_FLEET: FleetConfig(name=DEFAULT_FLEET)})


# --- parsing -------------------------------------------------------------------------------


class _Reader:
    """Reads typed values out of a mapping and names the file and key path in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where or "top level", f"must be a mapping, got {_kind(value)}")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise self.fail(
                where or "top level",
                f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})",
            )
        return value

    def number(
        self, m: dict[str, Any], key: str, where: str, default: float, *, lo: float = 0.0
    ) -> float:
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
            raise self.fail(_join(where, key), f"must be a number >= {lo:g}, got {value!r}")
        return float(value)

    def integer(self, m: dict[str, Any], key: str, where: str, default: int, *, lo: int = 0) -> int:
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(_join(where, key), f"must be an integer >= {lo}, got {value!r}")
        return value

    def boolean(self, m: dict[str, Any], key: str, where: str, default: bool) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(_join(where, key), f"must be true or false, got {value!r}")
        return value

    def string(self, m: dict[str, Any], key: str, where: str, default: str | None) -> str:
        value = m.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # e.g. gpu: 0
        if not isinstance(value, str) or not value.strip():
            raise self.fail(_join(where, key), f"must be a non-empty string, got {value!r}")
        return value

    def strings(self, m: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = m.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(_join(where, key), f"must be a list of names, got {value!r}")
        return tuple(value)


def _kind(value: Any) -> str:
    return type(value).__name__


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


_TOP_KEYS = {
    "state_file",
    "lock_timeout_seconds",
    "history_limit",
    "alert_keys",
    "protect_reads",
    "fleets",
    "notifications",
    "exporter",  # read by the exporter itself; the remediator leaves it alone
}
_FLEET_KEYS = {
    "ladder",
    "max_vram_errors",
    "policy",
    "headroom_mb",
    "cooldown_seconds",
    "max_switches_per_hour",
    "dry_run",
    "gpu",
    "ollama_url",
    "pull_timeout_seconds",
    "containers",
    "app_config",
    "auto_upgrade",
}


def _parse_ladder(r: _Reader, value: Any, where: str) -> Ladder:
    if value is None:
        return Ladder(DEFAULT_LADDER)
    if not isinstance(value, list) or not value:
        raise r.fail(where, f"must be a non-empty list of models, got {value!r}")
    rungs: list[Rung] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        m = r.mapping(item, here, {"name", "size_mb", "description"})
        name = r.string(m, "name", here, None)
        if name in seen:
            raise r.fail(_join(here, "name"), f"model {name!r} appears twice in the ladder")
        seen.add(name)
        size = r.integer(m, "size_mb", here, -1, lo=1)
        description = m.get("description", "")
        if not isinstance(description, str):
            raise r.fail(_join(here, "description"), f"must be a string, got {description!r}")
        rungs.append(Rung(name, size, description))
    return Ladder(tuple(rungs))


def _parse_containers(r: _Reader, value: Any, where: str) -> Containers:
    m = r.mapping(
        value,
        where,
        {
            "use_labels",
            "ollama",
            "app",
            "restart_ollama",
            "stop_timeout_seconds",
            "ready_timeout_seconds",
            "settle_seconds",
            "app_health_url",
        },
    )
    d = Containers()
    health_url = m.get("app_health_url")
    if health_url is not None and (
        not isinstance(health_url, str) or not health_url.startswith(("http://", "https://"))
    ):
        raise r.fail(_join(where, "app_health_url"), f"must be an http(s) URL, got {health_url!r}")
    return Containers(
        use_labels=r.boolean(m, "use_labels", where, d.use_labels),
        ollama_names=r.strings(m, "ollama", where),
        app_names=r.strings(m, "app", where),
        restart_ollama=r.boolean(m, "restart_ollama", where, d.restart_ollama),
        stop_timeout_seconds=r.integer(m, "stop_timeout_seconds", where, d.stop_timeout_seconds),
        ready_timeout_seconds=r.number(
            m, "ready_timeout_seconds", where, d.ready_timeout_seconds, lo=1
        ),
        settle_seconds=r.number(m, "settle_seconds", where, d.settle_seconds),
        app_health_url=health_url,
    )


def _parse_app_config(r: _Reader, value: Any, where: str) -> tuple[AppConfigTarget, ...]:
    # The formats and their key rules are appconfig's: this only reads the YAML's shapes.
    if value is None:
        return ()
    if not isinstance(value, list):
        raise r.fail(where, f"must be a list of targets, got {_kind(value)}")
    targets = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        m = r.mapping(item, here, {"path", "format", "key"})
        path = r.string(m, "path", here, None)
        fmt = r.string(m, "format", here, "env")
        kind = APP_CONFIG_FORMATS.get(fmt)
        if kind is None:
            raise r.fail(
                _join(here, "format"),
                f"must be one of {', '.join(APP_CONFIG_FORMATS)}, got {fmt!r}",
            )
        key = r.string(m, "key", here, kind.default_key) if kind.takes_key else m.get("key")
        try:
            targets.append(AppConfigTarget(path, fmt, key))
        except AppConfigError as exc:
            raise r.fail(_join(here, "key"), exc.cause) from None
    return tuple(targets)


def _parse_auto_upgrade(r: _Reader, value: Any, where: str) -> AutoUpgrade:
    m = r.mapping(value, where, {"enabled", "quiet_seconds", "failed_quiet_seconds", "headroom_mb"})
    d = AutoUpgrade()
    au = AutoUpgrade(
        enabled=r.boolean(m, "enabled", where, d.enabled),
        quiet_seconds=r.number(m, "quiet_seconds", where, d.quiet_seconds),
        failed_quiet_seconds=r.number(m, "failed_quiet_seconds", where, d.failed_quiet_seconds),
        headroom_mb=r.integer(m, "headroom_mb", where, d.headroom_mb),
    )
    if au.failed_quiet_seconds < au.quiet_seconds:
        raise r.fail(
            _join(where, "failed_quiet_seconds"),
            f"must be at least quiet_seconds ({au.quiet_seconds:g}): after a step up failed "
            "the fleet waits longer, not shorter",
        )
    return au


def _parse_notifications(r: _Reader, value: Any, where: str) -> Notifications:
    m = r.mapping(value, where, {"webhook_url", "format", "timeout_seconds"})
    d = Notifications()
    url: str | None = None
    key = _join(where, "webhook_url")
    if os.environ.get(NOTIFY_URL_ENV):
        url, key = os.environ[NOTIFY_URL_ENV], f"{key} (from ${NOTIFY_URL_ENV})"
    elif m.get("webhook_url") is not None:
        url = r.string(m, "webhook_url", where, None)
    if url is not None and not url.startswith(("http://", "https://")):
        # The URL is a secret (Slack's carries the token): name the key, never the value.
        raise r.fail(key, "must be an http(s) URL")
    fmt = r.string(m, "format", where, d.format)
    if fmt not in NOTIFY_FORMATS:
        raise r.fail(
            _join(where, "format"), f"must be one of {', '.join(NOTIFY_FORMATS)}, got {fmt!r}"
        )
    timeout = r.number(m, "timeout_seconds", where, d.timeout_seconds)
    if timeout <= 0:
        raise r.fail(_join(where, "timeout_seconds"), "must be more than 0")
    return Notifications(webhook_url=url, format=fmt, timeout_seconds=timeout)  # type: ignore[arg-type]


def redact_url(url: str | None) -> str | None:
    """Scheme and host only: webhook URLs carry their token in the path or the query."""
    if url is None:
        return None
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return f"{scheme}://{host}/<redacted>"


def _parse_fleet(r: _Reader, name: str, value: Any) -> FleetConfig:
    where = f"fleets.{name}"
    m = r.mapping(value, where, _FLEET_KEYS)
    d = FleetConfig(name=name)
    policy = r.string(m, "policy", where, d.policy)
    if policy not in POLICIES:
        raise r.fail(
            _join(where, "policy"), f"must be one of {', '.join(POLICIES)}, got {policy!r}"
        )
    url = r.string(m, "ollama_url", where, d.ollama_url)
    if not url.startswith(("http://", "https://")):
        raise r.fail(_join(where, "ollama_url"), f"must be an http(s) URL, got {url!r}")
    return FleetConfig(
        name=name,
        ladder=_parse_ladder(r, m.get("ladder"), _join(where, "ladder")),
        max_vram_errors=r.integer(m, "max_vram_errors", where, d.max_vram_errors, lo=1),
        policy=policy,  # type: ignore[arg-type]
        headroom_mb=r.integer(m, "headroom_mb", where, d.headroom_mb),
        cooldown_seconds=r.number(m, "cooldown_seconds", where, d.cooldown_seconds),
        max_switches_per_hour=r.integer(
            m, "max_switches_per_hour", where, d.max_switches_per_hour, lo=1
        ),
        dry_run=r.boolean(m, "dry_run", where, d.dry_run),
        gpu=r.string(m, "gpu", where, d.gpu),
        ollama_url=url.rstrip("/"),
        pull_timeout_seconds=r.number(
            m, "pull_timeout_seconds", where, d.pull_timeout_seconds, lo=1
        ),
        containers=_parse_containers(r, m.get("containers"), _join(where, "containers")),
        app_config=_parse_app_config(r, m.get("app_config"), _join(where, "app_config")),
        auto_upgrade=_parse_auto_upgrade(r, m.get("auto_upgrade"), _join(where, "auto_upgrade")),
    )


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Build a validated Config from parsed YAML; raise ConfigError naming the key and entry."""
    r = _Reader(source)
    top = r.mapping(data, "", _TOP_KEYS)
    d = default_config()
    fleets_raw = top.get("fleets")
    fleets: dict[str, FleetConfig]
    if fleets_raw is None:
        fleets = dict(d.fleets)
    else:
        if not isinstance(fleets_raw, dict) or not fleets_raw:
            raise r.fail("fleets", "must be a non-empty mapping of fleet name to settings")
        fleets = {}
        for name, value in fleets_raw.items():
            if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
                raise r.fail(f"fleets.{name}", "fleet names use letters, digits, '-' and '_'")
            fleets[name] = _parse_fleet(r, name, value)
    alert_keys = r.mapping(top.get("alert_keys"), "alert_keys", {"max", "ttl_seconds"})
    state_file = os.environ.get(STATE_FILE_ENV) or r.string(
        top, "state_file", "", str(d.state_file)
    )
    return Config(
        fleets=fleets,
        state_file=Path(state_file),
        lock_timeout_seconds=r.number(top, "lock_timeout_seconds", "", d.lock_timeout_seconds),
        history_limit=r.integer(top, "history_limit", "", d.history_limit, lo=1),
        alert_key_limit=r.integer(alert_keys, "max", "alert_keys", d.alert_key_limit, lo=1),
        alert_key_ttl_seconds=r.number(
            alert_keys, "ttl_seconds", "alert_keys", d.alert_key_ttl_seconds, lo=1
        ),
        protect_reads=r.boolean(top, "protect_reads", "", d.protect_reads),
        notifications=_parse_notifications(r, top.get("notifications"), "notifications"),
        source=source,
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load ``path``, else $MODEL_FLEET_CONFIG, else ./model-fleet.yaml, else the defaults."""
    explicit = path is not None or bool(os.environ.get(CONFIG_ENV))
    chosen = (
        Path(path) if path is not None else Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME)
    )
    if not chosen.exists():
        if explicit:
            raise ConfigError(f"{chosen}: configuration file not found")
        return parse_config({}, "<defaults>")
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{chosen}: not valid YAML: {exc}") from exc
    return parse_config(data if data is not None else {}, str(chosen))


# --- checks ---------------------------------------------------------------------------------


def config_warnings(config: Config) -> list[str]:
    """Things that are valid but probably not what the operator wants."""
    warnings: list[str] = []
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
        if not fleet.app_config:
            warnings.append(
                f"fleet {fleet.name}: no app_config targets: a switch changes the model server "
                "but tells the application nothing"
            )
        c = fleet.containers
        if not c.use_labels and not c.ollama_names and not c.app_names:
            warnings.append(
                f"fleet {fleet.name}: containers.use_labels is false and no container names "
                "are given: a switch restarts nothing"
            )
    return warnings


def effective_config(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, for logging and check-config."""

    def fleet_dict(f: FleetConfig) -> dict[str, Any]:
        return {
            "ladder": [
                {"name": r.name, "size_mb": r.size_mb, "description": r.description}
                for r in f.ladder.rungs
            ],
            "max_vram_errors": f.max_vram_errors,
            "policy": f.policy,
            "headroom_mb": f.headroom_mb,
            "cooldown_seconds": f.cooldown_seconds,
            "max_switches_per_hour": f.max_switches_per_hour,
            "dry_run": f.dry_run,
            "gpu": f.gpu,
            "ollama_url": f.ollama_url,
            "pull_timeout_seconds": f.pull_timeout_seconds,
            "containers": {
                "use_labels": f.containers.use_labels,
                "ollama": list(f.containers.ollama_names),
                "app": list(f.containers.app_names),
                "restart_ollama": f.containers.restart_ollama,
                "stop_timeout_seconds": f.containers.stop_timeout_seconds,
                "ready_timeout_seconds": f.containers.ready_timeout_seconds,
                "settle_seconds": f.containers.settle_seconds,
                "app_health_url": f.containers.app_health_url,
            },
            "app_config": [
                {"path": t.path, "format": t.format, **({"key": t.key} if t.key else {})}
                for t in f.app_config
            ],
            "auto_upgrade": {
                "enabled": f.auto_upgrade.enabled,
                "quiet_seconds": f.auto_upgrade.quiet_seconds,
                "failed_quiet_seconds": f.auto_upgrade.failed_quiet_seconds,
                "headroom_mb": f.auto_upgrade.headroom_mb,
            },
        }

    return {
        "source": config.source,
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
        "fleets": {name: fleet_dict(f) for name, f in config.fleets.items()},
    }
