"""Reading model-fleet.yaml: validate every key at start-up, fail naming the file and the key.

The key sets below are the ones the parser validates with; :data:`CONFIG_KEYS` is built from
them, so the list of accepted keys cannot drift from the parser. Renamed keys keep working:
:data:`DEPRECATED_KEYS` maps each old key to its new one, and a file that sets both is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from fleet_contract import env as contract_env
from fleet_contract.env import HOST as HOST_ENV
from fleet_contract.env import PROMETHEUS_URL as PROMETHEUS_URL_ENV
from fleet_contract.hosts import resolve_host
from fleet_contract.yamlfile import config_path, load_yaml
from remediator.adapters.appconfig import AppConfigError
from remediator.config.gpus import parse_gpus
from remediator.config.limits import HTTP_KEYS, parse_http
from remediator.config.model import (
    APP_CONFIG_FORMATS,
    COUNTINGS,
    DEFAULT_LADDER,
    NOTIFY_FORMATS,
    NOTIFY_URL_ENV,
    POLICIES,
    STATE_FILE_ENV,
    AppConfigTarget,
    AutoUpgrade,
    Config,
    FleetConfig,
    Ladder,
    Notifications,
    PrometheusSettings,
    Rung,
    default_config,
)
from remediator.config.placement import (
    CONTAINER_KEYS,
    SERVER_KEYS,
    UNIT_KEYS,
    parse_containers,
    parse_server,
    parse_units,
)
from remediator.config.reader import _join, _kind, _Reader
from remediator.config.rungs import CREATE_KEYS, parse_create
from remediator.windows import Window, parse_window, zone_of

__all__ = ["CONFIG_KEYS", "DEPRECATED_KEYS", "load_config", "parse_config"]

_TOP_KEYS: Final = frozenset(
    {
        "host",
        "state_file",
        "lock_timeout_seconds",
        "history_limit",
        "alert_keys",
        "protect_reads",
        "fleets",
        "notifications",
        "prometheus",
        "http",
        "exporter",  # read by the exporter itself; the remediator leaves it alone
    }
)
_ALERT_KEYS: Final = frozenset({"max", "ttl_seconds"})
_NOTIFICATION_KEYS: Final = frozenset({"webhook_url", "format", "timeout_seconds"})
_PROMETHEUS_KEYS: Final = frozenset({"url", "timeout_seconds"})
# A decision waits for Prometheus under the fleet's lock: the timeout must stay short.
PROMETHEUS_MAX_TIMEOUT: Final = 10.0
_FLEET_KEYS: Final = frozenset(
    {
        "ladder",
        "max_vram_errors",
        "counting",
        "policy",
        "headroom_mb",
        "cooldown_seconds",
        "max_switches_per_hour",
        "dry_run",
        "gpu",
        "gpus",
        "placement",
        "server",
        "ollama_url",  # deprecated: server.url
        "pull_timeout_seconds",
        "containers",
        "units",
        "app_config",
        "gpu_config",
        "auto_upgrade",
        "offload_tolerance",
        "probe",  # read by the exporter itself (its synthetic probe); the remediator leaves it
    }
)
_LADDER_KEYS: Final = frozenset({"name", "size_mb", "description", "create"})
_APP_CONFIG_KEYS: Final = frozenset({"path", "format", "key"})
# The variable compose's .env names the model server's GPU in (docker-compose.gpu.yml).
GPU_ENV_KEY: Final = contract_env.GPU
_AUTO_UPGRADE_KEYS: Final = frozenset(
    {"enabled", "quiet_seconds", "failed_quiet_seconds", "headroom_mb", "windows", "timezone"}
)

# Each mapping the parser reads, by its dotted path, and the keys it accepts there.
_SECTIONS: Final[Mapping[str, frozenset[str]]] = {
    "": _TOP_KEYS,
    "alert_keys": _ALERT_KEYS,
    "notifications": _NOTIFICATION_KEYS,
    "prometheus": _PROMETHEUS_KEYS,
    "http": HTTP_KEYS,
    "fleets.*": _FLEET_KEYS,
    "fleets.*.server": SERVER_KEYS,
    "fleets.*.ladder[]": _LADDER_KEYS,
    "fleets.*.ladder[].create": CREATE_KEYS,
    "fleets.*.containers": CONTAINER_KEYS,
    "fleets.*.units": UNIT_KEYS,
    "fleets.*.app_config[]": _APP_CONFIG_KEYS,
    "fleets.*.gpu_config[]": _APP_CONFIG_KEYS,
    "fleets.*.auto_upgrade": _AUTO_UPGRADE_KEYS,
}

#: Every dotted key path the parser accepts: ``*`` stands for a fleet's name, ``[]`` for the
#: items of a list (``fleets.*.app_config[].path``). ``exporter`` is the exporter's section.
CONFIG_KEYS: Final[frozenset[str]] = frozenset(
    {"fleets.*"} | {_join(where, key) for where, keys in _SECTIONS.items() for key in keys}
)

#: Old key -> new key, for the keys renamed when the server became a seam.
DEPRECATED_KEYS: Final[Mapping[str, str]] = {
    "fleets.*.ollama_url": "fleets.*.server.url",
    "fleets.*.containers.ollama": "fleets.*.containers.server",
    "fleets.*.containers.restart_ollama": "fleets.*.containers.restart_server",
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
        m = r.mapping(item, here, _LADDER_KEYS)
        name = r.string(m, "name", here, None)
        if name in seen:
            raise r.fail(_join(here, "name"), f"model {name!r} appears twice in the ladder")
        seen.add(name)
        size = r.integer(m, "size_mb", here, -1, lo=1)
        description = m.get("description", "")
        if not isinstance(description, str):
            raise r.fail(_join(here, "description"), f"must be a string, got {description!r}")
        create = parse_create(r, m.get("create"), _join(here, "create"), name)
        rungs.append(Rung(name, size, description, create))
    return Ladder(tuple(rungs))


def _parse_app_config(
    r: _Reader, value: Any, where: str, env_key: str | None = None
) -> tuple[AppConfigTarget, ...]:
    """The targets of ``app_config`` (or of ``gpu_config``, whose env files default to
    ``env_key``)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise r.fail(where, f"must be a list of targets, got {_kind(value)}")
    targets = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        m = r.mapping(item, here, _APP_CONFIG_KEYS)
        path = r.string(m, "path", here, None)
        fmt = r.string(m, "format", here, "env")
        # The formats and their key rules are appconfig's: this only reads the YAML's shapes.
        kind = APP_CONFIG_FORMATS.get(fmt)
        if kind is None:
            raise r.fail(
                _join(here, "format"),
                f"must be one of {', '.join(APP_CONFIG_FORMATS)}, got {fmt!r}",
            )
        default_key = env_key if env_key and fmt == "env" else kind.default_key
        key = r.string(m, "key", here, default_key) if kind.takes_key else m.get("key")
        try:
            targets.append(AppConfigTarget(path, fmt, key))
        except AppConfigError as exc:
            raise r.fail(_join(here, "key"), exc.cause) from None
    return tuple(targets)


def _parse_gpu_config(
    r: _Reader, m: dict[str, Any], where: str, placement: str
) -> tuple[AppConfigTarget, ...]:
    """``gpu_config``: the files a move writes the new GPU into (only a move_first fleet's)."""
    here = _join(where, "gpu_config")
    targets = _parse_app_config(r, m.get("gpu_config"), here, GPU_ENV_KEY)
    if targets and placement != "move_first":
        raise r.fail(here, "only a move writes it: set placement: move_first, or remove it")
    return targets


def _parse_windows(r: _Reader, m: dict[str, Any], where: str) -> tuple[Window, ...]:
    here = _join(where, "windows")
    value = m.get("windows")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise r.fail(here, f"must be a list of windows, got {_kind(value)}")
    windows = []
    for i, item in enumerate(value):
        try:
            windows.append(parse_window(item))
        except ValueError as exc:
            raise r.fail(f"{here}[{i}]", f"{item!r}: {exc}") from None
    return tuple(windows)


def _parse_timezone(r: _Reader, m: dict[str, Any], where: str) -> str | None:
    if m.get("timezone") is None:
        return None
    name = r.string(m, "timezone", where, None)
    try:
        zone_of(name)
    except ValueError as exc:
        raise r.fail(_join(where, "timezone"), str(exc)) from None
    return name


def _parse_auto_upgrade(r: _Reader, value: Any, where: str) -> AutoUpgrade:
    m = r.mapping(value, where, _AUTO_UPGRADE_KEYS)
    d = AutoUpgrade()
    au = AutoUpgrade(
        enabled=r.boolean(m, "enabled", where, d.enabled),
        quiet_seconds=r.number(m, "quiet_seconds", where, d.quiet_seconds),
        failed_quiet_seconds=r.number(m, "failed_quiet_seconds", where, d.failed_quiet_seconds),
        headroom_mb=r.integer(m, "headroom_mb", where, d.headroom_mb),
        windows=_parse_windows(r, m, where),
        timezone=_parse_timezone(r, m, where),
    )
    if au.failed_quiet_seconds < au.quiet_seconds:
        raise r.fail(
            _join(where, "failed_quiet_seconds"),
            f"must be at least quiet_seconds ({au.quiet_seconds:g}): after a step up failed "
            "the fleet waits longer, not shorter",
        )
    return au


def _parse_notifications(r: _Reader, value: Any, where: str) -> Notifications:
    m = r.mapping(value, where, _NOTIFICATION_KEYS)
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


def _parse_prometheus(r: _Reader, value: Any, where: str) -> PrometheusSettings:
    m = r.mapping(value, where, _PROMETHEUS_KEYS)
    d = PrometheusSettings()
    raw, key = m.get("url"), _join(where, "url")
    if os.environ.get(PROMETHEUS_URL_ENV):
        raw, key = os.environ[PROMETHEUS_URL_ENV], f"{key} (from ${PROMETHEUS_URL_ENV})"
    if raw is not None and (
        not isinstance(raw, str) or not raw.startswith(("http://", "https://"))
    ):
        raise r.fail(key, f"must be an http(s) URL, got {raw!r}")
    url = raw.rstrip("/") if raw is not None else None
    timeout = r.number(m, "timeout_seconds", where, d.timeout_seconds)
    if not 0 < timeout <= PROMETHEUS_MAX_TIMEOUT:
        raise r.fail(
            _join(where, "timeout_seconds"),
            f"must be more than 0 and at most {PROMETHEUS_MAX_TIMEOUT:g} seconds (a decision "
            f"waits for Prometheus), got {timeout:g}",
        )
    return PrometheusSettings(url=url, timeout_seconds=timeout)


def _parse_fleet(r: _Reader, name: str, value: Any) -> FleetConfig:
    where = f"fleets.{name}"
    m = r.mapping(value, where, _FLEET_KEYS)
    d = FleetConfig(name=name)
    policy = r.string(m, "policy", where, d.policy)
    if policy not in POLICIES:
        raise r.fail(
            _join(where, "policy"), f"must be one of {', '.join(POLICIES)}, got {policy!r}"
        )
    counting = r.string(m, "counting", where, d.counting)
    if counting not in COUNTINGS:
        raise r.fail(
            _join(where, "counting"), f"must be one of {', '.join(COUNTINGS)}, got {counting!r}"
        )
    tolerance = r.number(m, "offload_tolerance", where, d.offload_tolerance)
    if tolerance > 1:
        raise r.fail(
            _join(where, "offload_tolerance"),
            f"must be a fraction from 0 to 1 of the model's bytes, got {tolerance:g}",
        )
    server = parse_server(r, m, where)
    gpu = r.string(m, "gpu", where, d.gpu)
    gpus, placement = parse_gpus(r, m, where, gpu, server)
    containers = parse_containers(r, m.get("containers"), _join(where, "containers"), server)
    return FleetConfig(
        name=name,
        ladder=_parse_ladder(r, m.get("ladder"), _join(where, "ladder")),
        max_vram_errors=r.integer(m, "max_vram_errors", where, d.max_vram_errors, lo=1),
        counting=counting,  # type: ignore[arg-type]
        policy=policy,  # type: ignore[arg-type]
        headroom_mb=r.integer(m, "headroom_mb", where, d.headroom_mb),
        cooldown_seconds=r.number(m, "cooldown_seconds", where, d.cooldown_seconds),
        max_switches_per_hour=r.integer(
            m, "max_switches_per_hour", where, d.max_switches_per_hour, lo=1
        ),
        dry_run=r.boolean(m, "dry_run", where, d.dry_run),
        gpu=gpu,
        gpus=gpus,
        placement=placement,  # type: ignore[arg-type]
        server=server,
        pull_timeout_seconds=r.number(
            m, "pull_timeout_seconds", where, d.pull_timeout_seconds, lo=1
        ),
        containers=containers,
        units=parse_units(r, m.get("units"), _join(where, "units"), server, containers),
        app_config=_parse_app_config(r, m.get("app_config"), _join(where, "app_config")),
        gpu_config=_parse_gpu_config(r, m, where, placement),
        auto_upgrade=_parse_auto_upgrade(r, m.get("auto_upgrade"), _join(where, "auto_upgrade")),
        offload_tolerance=tolerance,
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
    alert_keys = r.mapping(top.get("alert_keys"), "alert_keys", _ALERT_KEYS)
    state_file = os.environ.get(STATE_FILE_ENV) or r.string(
        top, "state_file", "", str(d.state_file)
    )
    return Config(
        fleets=fleets,
        host=resolve_host(top.get("host"), source, os.environ.get(HOST_ENV)),
        state_file=Path(state_file),
        lock_timeout_seconds=r.number(top, "lock_timeout_seconds", "", d.lock_timeout_seconds),
        history_limit=r.integer(top, "history_limit", "", d.history_limit, lo=1),
        alert_key_limit=r.integer(alert_keys, "max", "alert_keys", d.alert_key_limit, lo=1),
        alert_key_ttl_seconds=r.number(
            alert_keys, "ttl_seconds", "alert_keys", d.alert_key_ttl_seconds, lo=1
        ),
        protect_reads=r.boolean(top, "protect_reads", "", d.protect_reads),
        notifications=_parse_notifications(r, top.get("notifications"), "notifications"),
        prometheus=_parse_prometheus(r, top.get("prometheus"), "prometheus"),
        http=parse_http(r, top.get("http")),
        source=source,
        deprecated_keys=tuple(r.deprecated),
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load ``path``, else $MODEL_FLEET_CONFIG, else ./model-fleet.yaml, else the defaults."""
    chosen = config_path(path)
    if chosen is None:
        return parse_config({}, "<defaults>")
    return parse_config(load_yaml(chosen), str(chosen))
