"""The inventory: every GPU host of a deployment, its exporter, its remediator and its fleets.

One small YAML file is the control plane's whole knowledge of the hosts (docs/multi-host.md)::

    hosts:
      gpu-a: {exporter: "gpu-a.lan:9842", remediator: "http://gpu-a.lan:8080", fleets: [a0, a1]}
      gpu-b: {exporter: "gpu-b.lan:9842", remediator: "http://gpu-b.lan:8080", fleets: [b0]}

``model-fleet render-monitoring`` (remediator/hosts/render.py) turns it into Prometheus' scrape
targets and Alertmanager's routes; ``model-fleet check-config --inventory`` validates it. Parsing
only: no file is written here, and nothing is reached over the network. Every error names the file
and the key, like model-fleet.yaml's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from fleet_contract.hosts import HOST_NAME_RULE, is_host_name
from fleet_contract.yamlfile import ConfigError

__all__ = [
    "DEFAULT_ALERTMANAGERS",
    "DEFAULT_CREDENTIALS_FILE",
    "DEFAULT_RULES",
    "DEFAULT_RUNBOOK_BASE_URL",
    "INVENTORY_KEYS",
    "HostEntry",
    "Inventory",
    "load_inventory",
    "parse_inventory",
]

# As the shipped monitoring/ files have them (compose: the token as a secret, the rules mounted).
DEFAULT_CREDENTIALS_FILE: Final = "/run/secrets/model_fleet_token"
DEFAULT_ALERTMANAGERS: Final = ("alertmanager:9093",)
DEFAULT_RULES: Final = "/etc/prometheus/rules/*.rules.yml"
DEFAULT_RUNBOOK_BASE_URL: Final = "https://git.example.com/ops/model-fleet/blob/main"

_TOP_KEYS: Final = frozenset(
    {"hosts", "credentials_file", "alertmanagers", "rules", "notify_url", "runbook_base_url"}
)
_HOST_KEYS: Final = frozenset({"exporter", "remediator", "fleets", "credentials_file"})
#: Every key path of the inventory ("*": a host's name); docs/configuration.md lists them.
INVENTORY_KEYS: Final = frozenset(_TOP_KEYS | {f"hosts.*.{k}" for k in _HOST_KEYS})

# host:port, the host a DNS name, an IPv4 address or a bracketed IPv6 address.
_ADDRESS: Final = re.compile(
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})"
)
_URL: Final = re.compile(r"(?P<scheme>https?)://(?P<address>[^/\s?#]+?)(?::(?P<port>\d{1,5}))?/?")
_FLEET_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")  # as model-fleet.yaml's fleet names


@dataclass(frozen=True)
class HostEntry:
    """One GPU host: where Prometheus scrapes its services, where Alertmanager posts, its fleets."""

    name: str
    exporter: str  # host:port
    remediator: str  # scheme://host:port, no trailing slash
    fleets: tuple[str, ...]
    credentials_file: str

    @property
    def remediator_scheme(self) -> str:
        """``http`` or ``https``."""
        return self.remediator.split("://", 1)[0]

    @property
    def remediator_address(self) -> str:
        """host:port of the remediator (the scheme's default port when the URL has none)."""
        rest = self.remediator.split("://", 1)[1]
        if _ADDRESS.fullmatch(rest):
            return rest
        return f"{rest}:{443 if self.remediator_scheme == 'https' else 80}"


@dataclass(frozen=True)
class Inventory:
    """The hosts by name (sorted), and what the rendered files share."""

    hosts: Mapping[str, HostEntry]
    credentials_file: str = DEFAULT_CREDENTIALS_FILE
    alertmanagers: tuple[str, ...] = DEFAULT_ALERTMANAGERS
    rules: str = DEFAULT_RULES
    notify_url: str | None = None
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL
    source: str = "<inventory>"
    fleet_hosts: Mapping[str, str] = field(default_factory=dict)  # fleet -> its host

    def host_of(self, fleet: str) -> str | None:
        """The host that runs ``fleet``, or None."""
        return self.fleet_hosts.get(fleet)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (line {mark.line + 1})", mark
            )
        seen[key] = True
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate the inventory at ``path``; ConfigError naming the file and the key."""
    chosen = Path(path)
    try:
        text = chosen.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{chosen}: inventory file not found") from None
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{chosen}: not valid YAML: {exc}") from exc
    return parse_inventory(data, str(chosen))


def parse_inventory(data: Any, source: str = "<inventory>") -> Inventory:
    """Validate parsed YAML: host names, unique fleets, addresses; ConfigError otherwise."""

    def fail(where: str, message: str) -> ConfigError:
        return ConfigError(f"{source}: {where}: {message}")

    top = _mapping(data, "top level", _TOP_KEYS, fail)
    raw_hosts = top.get("hosts")
    if not isinstance(raw_hosts, dict) or not raw_hosts:
        raise fail("hosts", "must be a non-empty mapping of host name to its settings")
    credentials = _string(top, "credentials_file", "", DEFAULT_CREDENTIALS_FILE, fail)
    hosts, fleet_hosts = _hosts(raw_hosts, credentials, fail)
    alertmanagers = _alertmanagers(top, fail)
    notify_url = _url(top, "notify_url", "", fail, full=True) if "notify_url" in top else None
    return Inventory(
        hosts=hosts,
        credentials_file=credentials,
        alertmanagers=alertmanagers,
        rules=_string(top, "rules", "", DEFAULT_RULES, fail),
        notify_url=notify_url,
        runbook_base_url=_url(top, "runbook_base_url", "", fail, full=True)
        if "runbook_base_url" in top
        else DEFAULT_RUNBOOK_BASE_URL,
        source=source,
        fleet_hosts=fleet_hosts,
    )


def _hosts(
    raw_hosts: dict[Any, Any], credentials: str, fail: Any
) -> tuple[dict[str, HostEntry], dict[str, str]]:
    """The hosts by name (sorted) and each fleet's host: no exporter, remediator or fleet is
    any other host's too."""
    hosts: dict[str, HostEntry] = {}
    fleet_hosts: dict[str, str] = {}
    addresses: dict[tuple[str, str], str] = {}  # (exporter | remediator, address) -> host
    for name in sorted(raw_hosts, key=str):
        where = f"hosts.{name}"
        if not is_host_name(name):
            raise fail(where, f"host names use {HOST_NAME_RULE}")
        entry = _mapping(raw_hosts[name], where, _HOST_KEYS, fail)
        for key in ("exporter", "remediator", "fleets"):
            if key not in entry:
                raise fail(f"{where}.{key}", "is required")
        exporter = _string(entry, "exporter", where, None, fail)
        if not _address_ok(exporter):
            raise fail(f"{where}.exporter", f"must be HOST:PORT, got {exporter!r}")
        remediator = _url(entry, "remediator", where, fail)
        for key, address in (("exporter", exporter), ("remediator", remediator)):
            if (key, address) in addresses:
                raise fail(
                    f"{where}.{key}",
                    f"{address} is host {addresses[key, address]}'s {key} too: each host has "
                    "its own",
                )
            addresses[key, address] = name
        fleets = _fleets(entry.get("fleets"), f"{where}.fleets", fail)
        for fleet in fleets:
            if fleet in fleet_hosts:
                raise fail(
                    f"{where}.fleets",
                    f"fleet {fleet!r} is listed by both host {fleet_hosts[fleet]} and host "
                    f"{name}: fleet names must be unique across the inventory",
                )
            fleet_hosts[fleet] = name
        hosts[name] = HostEntry(
            name=name,
            exporter=exporter,
            remediator=remediator,
            fleets=fleets,
            credentials_file=_string(entry, "credentials_file", where, credentials, fail),
        )
    return hosts, fleet_hosts


def _alertmanagers(top: dict[str, Any], fail: Any) -> tuple[str, ...]:
    alertmanagers = top.get("alertmanagers", list(DEFAULT_ALERTMANAGERS))
    if (
        not isinstance(alertmanagers, list)
        or not alertmanagers
        or not all(isinstance(a, str) and _address_ok(a) for a in alertmanagers)
    ):
        raise fail("alertmanagers", f"must be a non-empty list of HOST:PORT, got {alertmanagers!r}")
    if len(set(alertmanagers)) != len(alertmanagers):
        raise fail("alertmanagers", "lists an address twice")
    return tuple(alertmanagers)


def _mapping(value: Any, where: str, allowed: frozenset[str], fail: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(where, f"must be a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise fail(
            where, f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return value


def _string(m: dict[str, Any], key: str, where: str, default: str | None, fail: Any) -> str:
    value = m.get(key, default)
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        path = f"{where}.{key}" if where else key
        raise fail(path, f"must be a non-empty string without surrounding spaces, got {value!r}")
    return value


def _address_ok(value: str) -> bool:
    match = _ADDRESS.fullmatch(value)
    return match is not None and 0 < int(match.group("port")) < 65536


def _url(m: dict[str, Any], key: str, where: str, fail: Any, *, full: bool = False) -> str:
    """``scheme://host[:port]`` (``full``: any http(s) URL without spaces), no trailing slash."""
    value = _string(m, key, where, None, fail)
    path = f"{where}.{key}" if where else key
    if full:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise fail(path, f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")
    match = _URL.fullmatch(value)
    ok = match is not None and (match.group("port") is None or 0 < int(match.group("port")) < 65536)
    if (
        not ok
        or match is None
        or not re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", match.group("address"))
    ):
        raise fail(path, f"must be http(s)://HOST:PORT (no path), got {value!r}")
    return value.rstrip("/")


def _fleets(value: Any, where: str, fail: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise fail(where, f"must be a non-empty list of fleet names, got {value!r}")
    for item in value:
        if not isinstance(item, str) or not _FLEET_NAME.fullmatch(item):
            raise fail(where, f"fleet names use letters, digits, '-' and '_', got {item!r}")
    if len(set(value)) != len(value):
        raise fail(where, "lists a fleet twice")
    return tuple(value)
