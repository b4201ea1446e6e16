"""Wires the exporter: config -> classifier, log watcher, NVML collector, HTTP server; and scan."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter import filescan
from exporter.adapters.docker_logs import DockerLogSource
from exporter.adapters.journald import JournaldLogSource
from exporter.adapters.model_server import OllamaApi
from exporter.adapters.nvml import NvmlCollector
from exporter.config import ExporterConfig, effective_config, parse_bind
from exporter.logsource import LogSource
from exporter.metrics import LogCollector, LogStore, gauge
from exporter.server import make_server
from exporter.serverapi import ApiFactory
from exporter.serverpoll import ServerCollector, ServerStore, ServerWatch
from exporter.watcher import LogWatcher
from fleet_contract.metrics import EXPORTER_DOCKER_UP, EXPORTER_JOURNAL_UP
from fleet_exposition import BuildInfoCollector, HostRegistry

log = logging.getLogger("model-fleet-exporter")


class _SourceUpCollector(Collector):
    """Whether the log source is followed: Docker's events, or the journal."""

    def __init__(self, watcher: LogWatcher | None, journald: bool) -> None:
        self._watcher = watcher
        self._journald = journald

    def collect(self) -> list[GaugeMetricFamily]:
        up = 1 if self._watcher is not None and self._watcher.source_up else 0
        docker, journal = gauge(EXPORTER_DOCKER_UP), gauge(EXPORTER_JOURNAL_UP)
        docker.add_metric([], 0 if self._journald else up)
        journal.add_metric([], up if self._journald else 0)
        return [docker, journal]


@dataclass
class Exporter:
    """A running exporter: its registry, log watcher and NVML collector."""

    config: ExporterConfig
    registry: CollectorRegistry
    store: LogStore
    watcher: LogWatcher | None
    nvml: NvmlCollector | None
    servers: ServerWatch

    def health(self) -> dict[str, Any]:
        """What /healthz reports: the process serves; NVML and Docker may be down."""
        watched = self.watcher.watched().values() if self.watcher is not None else []
        journald = self.config.log_source == "journald"
        return {
            "status": "ok",
            "nvml_up": bool(self.nvml and self.nvml.up),
            "docker_up": bool(self.watcher and self.watcher.source_up) and not journald,
            "journal_up": bool(self.watcher and self.watcher.source_up) and journald,
            "containers": sorted(name for _, name in watched),
        }

    def start(self) -> None:
        """Start following logs and polling the model servers (in the background)."""
        if self.watcher is not None:
            self.watcher.start()
        self.servers.start()

    def stop(self) -> None:
        """Stop following logs and polling."""
        self.servers.stop()
        if self.watcher is not None:
            self.watcher.stop()


def default_source(config: ExporterConfig) -> LogSource:
    """The configured log source: Docker's logs API, or the units' journal."""
    if config.log_source == "journald":
        return JournaldLogSource(sorted(config.selection.names))
    return DockerLogSource()


def build_exporter(
    config: ExporterConfig,
    *,
    source: LogSource | None = None,
    server_api: ApiFactory = OllamaApi,
) -> Exporter:
    """Assemble the exporter's parts for ``config`` (nothing runs until start()).

    The logs come from ``source``, by default the configured one (the Docker engine of the
    environment, or the journal of the model servers' systemd units); each
    fleet's model server is reached through ``server_api(url)``, by default Ollama's API.
    """
    registry = HostRegistry(config.host)  # every sample gets the `host` label there
    classifier = config.classifier()
    store = LogStore(classifier.kinds)
    watcher = (
        LogWatcher(
            config.selection,
            classifier,
            store,
            source or default_source(config),
            incident_window_seconds=config.incident_window_seconds,
        )
        if config.docker
        else None
    )
    registry.register(LogCollector(store))
    nvml = None
    if config.nvml:
        nvml = NvmlCollector(
            proc_root=config.proc_root,
            container_name=watcher.container_name if watcher is not None else None,
        )
        registry.register(nvml)
    registry.register(_SourceUpCollector(watcher, config.log_source == "journald"))
    registry.register(BuildInfoCollector())
    server_store = ServerStore()
    servers = ServerWatch(config.servers, config.server_poll_seconds, server_api, server_store)
    registry.register(ServerCollector(server_store))
    return Exporter(config, registry, store, watcher, nvml, servers)


def serve(config: ExporterConfig, *, ready: Callable[[str, int], None] | None = None) -> int:
    """Serve /metrics and /healthz until SIGTERM or SIGINT; return the exit code."""
    log.info("effective configuration: %s", json.dumps(effective_config(config), sort_keys=True))
    host, port = parse_bind(config.bind)
    exporter = build_exporter(config)
    try:
        server = make_server(host, port, exporter.registry, exporter.health)
    except OSError as exc:
        log.error("cannot listen on %s: %s", config.bind, exc.strerror or exc)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    exporter.start()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True
    )
    thread.start()
    bound_port = int(server.server_address[1])
    log.info("serving http://%s:%d/metrics", host, bound_port)
    if ready is not None:
        ready(host, bound_port)
    stop.wait()
    server.shutdown()
    server.server_close()
    exporter.stop()
    log.info("stopped")
    return 0


def scan(config: ExporterConfig, stream: IO[bytes]) -> filescan.Scan:
    """Count the incidents and lines of each kind in a log file (or stdin)."""
    return filescan.scan(config.classifier(), stream.read, config.incident_window_seconds)
