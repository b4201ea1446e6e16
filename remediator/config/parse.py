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
from fleet_contract.hosts import resolve_host
from fleet_contract.yamlfile import config_path, load_yaml
from remediator.appconfig import AppConfigError
from remediator.config import placement as services
from remediator.config.auto_upgrade import AUTO_UPGRADE_KEYS, parse_auto_upgrade
from remediator.config.endpoints import (
    NOTIFICATION_KEYS,
    PROMETHEUS_KEYS,
    parse_notifications,
    parse_prometheus,
)
from remediator.config.gpus import parse_gpus
from remediator.config.ladder import DEFAULT_LADDER, Ladder, Rung
from remediator.config.limits import HTTP_KEYS, parse_http
from remediator.config.model import (
    APP_CONFIG_FORMATS,
    COUNTINGS,
    POLICIES,
    STATE_FILE_ENV,
    AppConfigTarget,
    Config,
    FleetConfig,
    default_config,
)
from remediator.config.reader import Reader, key_path, type_name
from remediator.config.rungs import CREATE_KEYS, parse_create

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

# Each mapping the parser reads, by its dotted path, and the keys it accepts there.
_SECTIONS: Final[Mapping[str, frozenset[str]]] = {
    "": _TOP_KEYS,
    "alert_keys": _ALERT_KEYS,
    "notifications": NOTIFICATION_KEYS,
    "prometheus": PROMETHEUS_KEYS,
    "http": HTTP_KEYS,
    "fleets.*": _FLEET_KEYS,
    "fleets.*.server": services.SERVER_KEYS,
    "fleets.*.ladder[]": _LADDER_KEYS,
    "fleets.*.ladder[].create": CREATE_KEYS,
    "fleets.*.containers": services.CONTAINER_KEYS,
    "fleets.*.units": services.UNIT_KEYS,
    "fleets.*.app_config[]": _APP_CONFIG_KEYS,
    "fleets.*.gpu_config[]": _APP_CONFIG_KEYS,
    "fleets.*.auto_upgrade": AUTO_UPGRADE_KEYS,
}

#: Every dotted key path the parser accepts: ``*`` stands for a fleet's name, ``[]`` for the
#: items of a list (``fleets.*.app_config[].path``). ``exporter`` is the exporter's section.
CONFIG_KEYS: Final[frozenset[str]] = frozenset(
    {"fleets.*"} | {key_path(where, key) for where, keys in _SECTIONS.items() for key in keys}
)

#: Old key -> new key, for the keys renamed when the server became a seam.
DEPRECATED_KEYS: Final[Mapping[str, str]] = {
    "fleets.*.ollama_url": "fleets.*.server.url",
    "fleets.*.containers.ollama": "fleets.*.containers.server",
    "fleets.*.containers.restart_ollama": "fleets.*.containers.restart_server",
}


def _parse_ladder(r: Reader, value: Any, where: str) -> Ladder:
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
            raise r.fail(key_path(here, "name"), f"model {name!r} appears twice in the ladder")
        seen.add(name)
        size = r.integer(m, "size_mb", here, -1, lo=1)
        description = m.get("description", "")
        if not isinstance(description, str):
            raise r.fail(key_path(here, "description"), f"must be a string, got {description!r}")
        create = parse_create(r, m.get("create"), key_path(here, "create"), name)
        rungs.append(Rung(name, size, description, create))
    return Ladder(tuple(rungs))


def _parse_app_config(
    r: Reader, value: Any, where: str, env_key: str | None = None
) -> tuple[AppConfigTarget, ...]:
    """The targets of ``app_config`` (or of ``gpu_config``, whose env files default to
    ``env_key``)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise r.fail(where, f"must be a list of targets, got {type_name(value)}")
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
                key_path(here, "format"),
                f"must be one of {', '.join(APP_CONFIG_FORMATS)}, got {fmt!r}",
            )
        default_key = env_key if env_key and fmt == "env" else kind.default_key
        key = r.string(m, "key", here, default_key) if kind.takes_key else m.get("key")
        try:
            targets.append(AppConfigTarget(path, fmt, key))
        except AppConfigError as exc:
            raise r.fail(key_path(here, "key"), exc.cause) from None
    return tuple(targets)


def _parse_gpu_config(
    r: Reader, m: dict[str, Any], where: str, placement: str
) -> tuple[AppConfigTarget, ...]:
    """``gpu_config``: the files a move writes the new GPU into (only a move_first fleet's)."""
    here = key_path(where, "gpu_config")
    targets = _parse_app_config(r, m.get("gpu_config"), here, GPU_ENV_KEY)
    if targets and placement != "move_first":
        raise r.fail(here, "only a move writes it: set placement: move_first, or remove it")
    return targets


def _parse_fleet(r: Reader, name: str, value: Any) -> FleetConfig:
    where = f"fleets.{name}"
    m = r.mapping(value, where, _FLEET_KEYS)
    d = FleetConfig(name=name)
    policy = r.string(m, "policy", where, d.policy)
    if policy not in POLICIES:
        raise r.fail(
            key_path(where, "policy"), f"must be one of {', '.join(POLICIES)}, got {policy!r}"
        )
    counting = r.string(m, "counting", where, d.counting)
    if counting not in COUNTINGS:
        raise r.fail(
            key_path(where, "counting"), f"must be one of {', '.join(COUNTINGS)}, got {counting!r}"
        )
    tolerance = r.number(m, "offload_tolerance", where, d.offload_tolerance)
    if tolerance > 1:
        raise r.fail(
            key_path(where, "offload_tolerance"),
            f"must be a fraction from 0 to 1 of the model's bytes, got {tolerance:g}",
        )
    server = services.parse_server(r, m, where)
    gpu = r.string(m, "gpu", where, d.gpu)
    gpus, placement = parse_gpus(r, m, where, gpu, server)
    containers = services.parse_containers(
        r, m.get("containers"), key_path(where, "containers"), server
    )
    return FleetConfig(
        name=name,
        ladder=_parse_ladder(r, m.get("ladder"), key_path(where, "ladder")),
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
        units=services.parse_units(r, m.get("units"), key_path(where, "units"), server, containers),
        app_config=_parse_app_config(r, m.get("app_config"), key_path(where, "app_config")),
        gpu_config=_parse_gpu_config(r, m, where, placement),
        auto_upgrade=parse_auto_upgrade(r, m.get("auto_upgrade"), key_path(where, "auto_upgrade")),
        offload_tolerance=tolerance,
    )


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Build a validated Config from parsed YAML; raise ConfigError naming the key and entry."""
    r = Reader(source)
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
        notifications=parse_notifications(r, top.get("notifications"), "notifications"),
        prometheus=parse_prometheus(r, top.get("prometheus"), "prometheus"),
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
