"""The exporter's configuration: the ``exporter:`` section of model-fleet.yaml, plus the fleets'
container names, overridden by command-line flags. Errors name the file and the key.

The exporter parses the file itself (it never imports the remediator; both read it with
fleet_contract.yamlfile). Of the ``fleets:`` section it reads only what it needs,
``containers.server`` (or its old name ``ollama``), ``containers.use_labels``, the model
server's URL (``server.url``, or its old name ``ollama_url``) and ``probe``, and leaves the rest
to the remediator's own validation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from exporter.classifier import DEFAULT_PATTERNS, LogClassifier, PatternError
from exporter.incidents import DEFAULT_WINDOW_SECONDS
from fleet_contract.env import HOST as HOST_ENV
from fleet_contract.hosts import default_host, resolve_host
from fleet_contract.labels import DEFAULT_FLEET as DEFAULT_FLEET
from fleet_contract.labels import FLEET_LABEL, ROLE_LABEL, ROLE_SERVER
from fleet_contract.systemd import unit_problem
from fleet_contract.yamlfile import ConfigError as ConfigError
from fleet_contract.yamlfile import config_path, load_yaml

DEFAULT_PORT: Final = 9842
DEFAULT_BIND: Final = f"0.0.0.0:{DEFAULT_PORT}"

_EXPORTER_KEYS: Final = frozenset(
    {
        "bind",
        "labels",
        "use_labels",
        "containers",
        "fleet_label",
        "default_fleet",
        "patterns",
        "default_patterns",
        "case_sensitive",
        "incident_window_seconds",
        "nvml",
        "docker",
        "logs",
        "proc_root",
        "server_poll_seconds",
    }
)
_PROBE_KEYS: Final = frozenset({"enabled", "interval_seconds", "num_predict", "prompt", "model"})
_LOGS_KEYS: Final = frozenset({"source", "unit"})
LOG_SOURCES: Final = ("docker", "journald")
# Ollama's own Linux install runs it as this unit.
DEFAULT_UNIT: Final = "ollama.service"
# Of the fleets, how their model servers' containers are found, where their APIs answer, and
# the synthetic probe.
_FLEET_KEYS: Final = (
    "containers.server",
    "containers.ollama",
    "containers.use_labels",
    "server.url",
    "server.unit",  # a model server run by systemd: its unit's journal (logs.source journald)
    "ollama_url",  # the deprecated name of server.url
    *(f"probe.{key}" for key in sorted(_PROBE_KEYS)),
)
DEFAULT_SERVER_URL: Final = "http://127.0.0.1:11434"  # the remediator's default too
# Every key path this parser reads ("*": a fleet name); the docs test checks the docs against it.
CONFIG_KEYS: Final = frozenset(
    {"host"}  # the `host` label of every metric (fleet_contract.hosts)
    | {f"exporter.{key}" for key in _EXPORTER_KEYS}
    | {f"exporter.logs.{key}" for key in _LOGS_KEYS}
    | {f"fleets.*.{key}" for key in _FLEET_KEYS}
)
_KIND_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_bind(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9842`` for IPv6); raise ValueError when malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


@dataclass(frozen=True)
class ContainerSelection:
    """Which containers' logs are watched, and the fleet each belongs to."""

    labels: Mapping[str, str] = field(default_factory=lambda: {ROLE_LABEL: ROLE_SERVER})
    use_labels: bool = True
    names: Mapping[str, str] = field(default_factory=dict)  # container name -> fleet
    fleet_label: str = FLEET_LABEL
    default_fleet: str = DEFAULT_FLEET

    def fleet_of(self, name: str, labels: Mapping[str, str]) -> str | None:
        """The fleet of a container to watch, or None when it is not selected."""
        if name in self.names:
            return self.names[name]
        if self.use_labels and all(labels.get(k) == v for k, v in self.labels.items()):
            return labels.get(self.fleet_label) or self.default_fleet
        return None


@dataclass(frozen=True)
class ProbeSettings:
    """The synthetic probe of a fleet's model server (opt-in)."""

    enabled: bool = False
    interval_seconds: float = 60.0
    num_predict: int = 8
    prompt: str = "Say OK."
    model: str | None = None  # None: the model the server lists as loaded


@dataclass(frozen=True)
class ServerTarget:
    """A fleet's model server, as the exporter polls and probes it."""

    fleet: str
    url: str = DEFAULT_SERVER_URL
    probe: ProbeSettings = field(default_factory=ProbeSettings)


@dataclass(frozen=True)
class ExporterConfig:
    """The whole effective exporter configuration."""

    bind: str = DEFAULT_BIND
    selection: ContainerSelection = field(default_factory=ContainerSelection)
    patterns: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_PATTERNS))
    case_sensitive: bool = False
    # matching lines within this many seconds of an incident's first line are one error
    incident_window_seconds: float = DEFAULT_WINDOW_SECONDS
    nvml: bool = True
    docker: bool = True  # false: no log is followed at all (the name is from Docker-only days)
    log_source: str = "docker"  # or "journald": the selection's names are systemd units
    proc_root: str = "/proc"
    # No fleets section: the remediator's one fleet, at its default URL.
    servers: tuple[ServerTarget, ...] = (ServerTarget(DEFAULT_FLEET),)
    server_poll_seconds: float = 5.0  # 0: not polled
    source: str = "<defaults>"
    host: str = field(default_factory=default_host)  # the `host` label of every metric

    def classifier(self) -> LogClassifier:
        """The LogClassifier for these patterns."""
        return LogClassifier(self.patterns, case_sensitive=self.case_sensitive)


def effective_config(config: ExporterConfig) -> dict[str, Any]:
    """The configuration as plain data, logged once at start-up."""
    s = config.selection
    return {
        "source": config.source,
        "host": config.host,
        "bind": config.bind,
        "containers": {
            "labels": dict(s.labels) if s.use_labels else None,
            "names": dict(s.names),
            "fleet_label": s.fleet_label,
            "default_fleet": s.default_fleet,
        },
        "patterns": {kind: list(p) for kind, p in config.patterns.items()},
        "case_sensitive": config.case_sensitive,
        "incident_window_seconds": config.incident_window_seconds,
        "nvml": config.nvml,
        "docker": config.docker,
        "logs": {"source": config.log_source},
        "proc_root": config.proc_root,
        "server_poll_seconds": config.server_poll_seconds,
        "servers": {
            t.fleet: {"url": t.url, "probe": asdict(t.probe) if t.probe.enabled else None}
            for t in config.servers
        },
    }


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")

    def mapping(
        self, value: Any, where: str, allowed: frozenset[str] | None = None
    ) -> dict[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping, got {type(value).__name__}")
        if allowed is not None:
            unknown = sorted(str(k) for k in value if k not in allowed)
            if unknown:
                raise self.fail(
                    where,
                    f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})",
                )
        return value

    def boolean(self, m: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{where}.{key}", f"must be true or false, got {value!r}")
        return value

    def string(self, m: Mapping[str, Any], key: str, where: str, default: str) -> str:
        value = m.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
        return value

    def number(self, m: Mapping[str, Any], key: str, where: str, default: float) -> float:
        """A number >= 0 (``where.key`` in the error)."""
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise self.fail(f"{where}.{key}", f"must be a number >= 0, got {value!r}")
        return float(value)

    def url(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise self.fail(where, f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def names(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(where, f"must be a list of container names, got {value!r}")
        return value


def parse_config(data: Any, source: str = "<config>") -> ExporterConfig:
    """Build the exporter's config from a parsed model-fleet.yaml; raise ConfigError."""
    r = _Reader(source)
    top = r.mapping(data, "top level")
    ex = r.mapping(top.get("exporter"), "exporter", _EXPORTER_KEYS)
    d = ExporterConfig()
    ds = d.selection

    bind = r.string(ex, "bind", "exporter", d.bind)
    try:
        parse_bind(bind)
    except ValueError as exc:
        raise r.fail("exporter.bind", str(exc)) from exc

    names: dict[str, str] = {}
    units: dict[str, str] = {}  # unit -> fleet, for logs.source journald
    fleets_use_labels: list[bool] = []
    servers: list[ServerTarget] = []
    fleets = r.mapping(top.get("fleets"), "fleets")
    for fleet, settings in fleets.items():
        where = f"fleets.{fleet}"
        m = r.mapping(settings, where)
        servers.append(_parse_server(r, str(fleet), m, where))
        unit = r.mapping(m.get("server"), f"{where}.server").get("unit")
        if unit is not None:
            units[_unit(r, unit, f"{where}.server.unit")] = str(fleet)
        containers = r.mapping(m.get("containers"), f"{where}.containers")
        for key in ("server", "ollama"):  # ollama: the deprecated name of server
            for name in r.names(containers.get(key), f"{where}.containers.{key}"):
                names[name] = str(fleet)
        use = containers.get("use_labels", True)
        if not isinstance(use, bool):
            raise r.fail(f"{where}.containers.use_labels", f"must be true or false, got {use!r}")
        fleets_use_labels.append(use)

    default_fleet = r.string(ex, "default_fleet", "exporter", ds.default_fleet)
    extra = ex.get("containers")
    if isinstance(extra, dict):
        for name, fleet in extra.items():
            if not isinstance(name, str) or not isinstance(fleet, str) or not fleet:
                raise r.fail(
                    f"exporter.containers.{name}", f"must map a name to a fleet, got {fleet!r}"
                )
            names[name] = fleet
    else:
        for name in r.names(extra, "exporter.containers"):
            names[name] = default_fleet

    log_source = _parse_logs(r, ex.get("logs"), units, default_fleet)
    if log_source == "journald":  # units are selected by name: no labels
        names = units
        ex = {**ex, "use_labels": False}

    labels_raw = ex.get("labels", dict(ds.labels))
    labels = r.mapping(labels_raw, "exporter.labels")
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str | int | bool):
            raise r.fail(f"exporter.labels.{k}", f"must map a label to a value, got {v!r}")
    # Labels are on by default; fleets that all turned them off turn them off here too.
    labels_default = not fleets_use_labels or any(fleets_use_labels)
    selection = ContainerSelection(
        labels={
            str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in labels.items()
        },
        use_labels=r.boolean(ex, "use_labels", "exporter", labels_default),
        names=names,
        fleet_label=r.string(ex, "fleet_label", "exporter", ds.fleet_label),
        default_fleet=default_fleet,
    )

    patterns = _parse_patterns(
        r, ex.get("patterns"), keep_defaults=r.boolean(ex, "default_patterns", "exporter", True)
    )
    config = ExporterConfig(
        bind=bind,
        selection=selection,
        patterns=patterns,
        case_sensitive=r.boolean(ex, "case_sensitive", "exporter", d.case_sensitive),
        incident_window_seconds=_window(
            r, ex.get("incident_window_seconds", d.incident_window_seconds)
        ),
        nvml=r.boolean(ex, "nvml", "exporter", d.nvml),
        docker=r.boolean(ex, "docker", "exporter", d.docker),
        log_source=log_source,
        proc_root=r.string(ex, "proc_root", "exporter", d.proc_root),
        servers=tuple(servers) if "fleets" in top and top["fleets"] is not None else d.servers,
        server_poll_seconds=r.number(ex, "server_poll_seconds", "exporter", d.server_poll_seconds),
        source=source,
        host=resolve_host(top.get("host"), source, os.environ.get(HOST_ENV)),
    )
    try:
        config.classifier()
    except PatternError as exc:
        raise r.fail("exporter.patterns", f"invalid regular expression {exc}") from exc
    return config


def _parse_server(r: _Reader, fleet: str, m: Mapping[str, Any], where: str) -> ServerTarget:
    server = r.mapping(m.get("server"), f"{where}.server")  # server.kind: the remediator's
    url: Any = DEFAULT_SERVER_URL
    if "url" in server and "ollama_url" in m:
        raise r.fail(
            f"{where}.ollama_url",
            f"is the deprecated name of {where}.server.url, which is set too: keep only one",
        )
    if "url" in server:
        url = r.url(server["url"], f"{where}.server.url")
    elif "ollama_url" in m:
        url = r.url(m["ollama_url"], f"{where}.ollama_url")
    return ServerTarget(fleet=fleet, url=url, probe=_parse_probe(r, m.get("probe"), where))


def _parse_logs(r: _Reader, value: Any, units: dict[str, str], default_fleet: str) -> str:
    """``exporter.logs``: where the model servers' logs come from. For ``journald``, ``units``
    (unit -> fleet, from the fleets' ``server.unit``) gains ``logs.unit`` (the default fleet's;
    ``ollama.service`` when no unit is named anywhere)."""
    logs = r.mapping(value, "exporter.logs", _LOGS_KEYS)
    source = logs.get("source", "docker")
    if source not in LOG_SOURCES:
        raise r.fail(
            "exporter.logs.source", f"must be one of {', '.join(LOG_SOURCES)}, got {source!r}"
        )
    named = logs.get("unit")
    if source != "journald":
        if named is not None:
            raise r.fail("exporter.logs.unit", "is read only with logs.source: journald")
        return str(source)
    for unit in r.names(named, "exporter.logs.unit"):
        units.setdefault(_unit(r, unit, "exporter.logs.unit"), default_fleet)
    if not units:
        units[DEFAULT_UNIT] = default_fleet
    return str(source)


def _unit(r: _Reader, value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise r.fail(where, f"must be a unit name such as {DEFAULT_UNIT}, got {value!r}")
    problem = unit_problem(value)
    if problem is not None:
        raise r.fail(where, problem)
    return value


def _parse_probe(r: _Reader, value: Any, fleet_where: str) -> ProbeSettings:
    where = f"{fleet_where}.probe"
    p = r.mapping(value, where, _PROBE_KEYS)
    d = ProbeSettings()
    interval = r.number(p, "interval_seconds", where, d.interval_seconds)
    if interval <= 0:
        raise r.fail(f"{where}.interval_seconds", f"must be more than 0, got {interval:g}")
    num_predict = p.get("num_predict", d.num_predict)
    if isinstance(num_predict, bool) or not isinstance(num_predict, int) or num_predict < 1:
        raise r.fail(f"{where}.num_predict", f"must be an integer >= 1, got {num_predict!r}")
    model = p.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise r.fail(f"{where}.model", f"must be a model name or null, got {model!r}")
    return ProbeSettings(
        enabled=r.boolean(p, "enabled", where, d.enabled),
        interval_seconds=interval,
        num_predict=num_predict,
        prompt=r.string(p, "prompt", where, d.prompt),
        model=model,
    )


def _window(r: _Reader, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise r.fail(
            "exporter.incident_window_seconds",
            f"must be a number of seconds from 0 to 3600, got {value!r}",
        )
    return float(value)


def _parse_patterns(r: _Reader, value: Any, *, keep_defaults: bool) -> dict[str, tuple[str, ...]]:
    user = r.mapping(value, "exporter.patterns")
    patterns: dict[str, tuple[str, ...]] = dict(DEFAULT_PATTERNS) if keep_defaults else {}
    for kind, items in user.items():
        where = f"exporter.patterns.{kind}"
        if not isinstance(kind, str) or not _KIND_NAME.match(kind):
            raise r.fail(where, "kinds are lower-case names: letters, digits and '_'")
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not items:
            raise r.fail(where, f"must be a non-empty list of regular expressions, got {items!r}")
        for i, p in enumerate(items):
            if not isinstance(p, str) or not p:
                raise r.fail(f"{where}[{i}]", f"must be a non-empty string, got {p!r}")
            try:
                re.compile(p)
            except re.error as exc:
                raise r.fail(f"{where}[{i}]", f"invalid regular expression {p!r}: {exc}") from exc
        patterns[kind] = tuple(patterns.get(kind, ())) + tuple(items)
    if not patterns:
        raise r.fail("exporter.patterns", "no patterns left (default_patterns is false)")
    return patterns


def load_config(path: str | os.PathLike[str] | None = None) -> ExporterConfig:
    """Load ``path``, else $MODEL_FLEET_CONFIG, else ./model-fleet.yaml, else the defaults."""
    chosen = config_path(path)
    if chosen is None:
        return parse_config({}, "<defaults>")
    return parse_config(load_yaml(chosen), str(chosen))
