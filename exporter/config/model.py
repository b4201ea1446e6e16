"""The exporter's configuration as types with their defaults, and the effective configuration
as plain data (logged once at start-up). Reading model-fleet.yaml into them: exporter.config.parse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from exporter.classifier import DEFAULT_PATTERNS, LogClassifier
from exporter.incidents import DEFAULT_WINDOW_SECONDS
from fleet_contract.hosts import default_host
from fleet_contract.labels import DEFAULT_FLEET as DEFAULT_FLEET
from fleet_contract.labels import FLEET_LABEL, ROLE_LABEL, ROLE_SERVER
from fleet_contract.yamlfile import ConfigError as ConfigError

__all__ = [
    "DEFAULT_BIND",
    "DEFAULT_FLEET",
    "DEFAULT_PORT",
    "DEFAULT_SERVER_URL",
    "DEFAULT_UNIT",
    "LOG_SOURCES",
    "ConfigError",
    "ContainerSelection",
    "ExporterConfig",
    "ProbeSettings",
    "ServerTarget",
    "effective_config",
    "parse_bind",
]

DEFAULT_PORT: Final = 9842
DEFAULT_BIND: Final = f"0.0.0.0:{DEFAULT_PORT}"
LOG_SOURCES: Final = ("docker", "journald")
# Ollama's own Linux install runs it as this unit.
DEFAULT_UNIT: Final = "ollama.service"
DEFAULT_SERVER_URL: Final = "http://127.0.0.1:11434"  # the remediator's default too


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
