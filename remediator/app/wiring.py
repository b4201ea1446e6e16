"""Builds a fleet's real actions: the model server its config names, the runtime its services
run on (the Docker engine, systemd, or each role its own), the app's HTTP health probe. The one
module of the core that knows which adapters exist."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from remediator.adapters.docker_engine import DockerRuntime
from remediator.adapters.ollama import OllamaServer
from remediator.adapters.probes import app_reports_model
from remediator.adapters.systemd_units import SystemdRuntime
from remediator.config import ConfigError, FleetConfig, ServerSettings, placement_of
from remediator.ports.model_server import SERVER_KINDS, ModelServer
from remediator.ports.runtime import ROLE_APP, ROLE_SERVER, Runtime, RuntimeByRole
from remediator.switch.actions import FleetActions

# One builder per kind of remediator.ports.model_server.SERVER_KINDS (a test keeps the two in step).
SERVER_BUILDERS: Final[Mapping[str, Callable[[ServerSettings], ModelServer]]] = {
    "ollama": lambda settings: OllamaServer(settings.url),
}

# One builder per runtime of remediator.config.RUNTIMES (a test keeps the two in step). systemctl
# waits for a restart's job: it may take the stop timeout and then the readiness timeout.
RUNTIME_BUILDERS: Final[Mapping[str, Callable[[FleetConfig], Runtime]]] = {
    "docker": lambda fleet: DockerRuntime(),
    "systemd": lambda fleet: SystemdRuntime(start_timeout=fleet.containers.ready_timeout_seconds),
}


def model_server(fleet: FleetConfig) -> ModelServer:
    """The model server of ``fleet``, chosen by its ``server.kind``."""
    build = SERVER_BUILDERS.get(fleet.server.kind)
    if build is None:
        raise ConfigError(
            f"fleets.{fleet.name}.server.kind: unknown server kind {fleet.server.kind!r} "
            f"(known kinds: {', '.join(SERVER_KINDS)})"
        )
    return build(fleet.server)


def container_runtime(fleet: FleetConfig) -> Runtime:
    """The runtime the fleet's services run on: the local Docker engine (the default), the
    local systemd (``server.runtime: systemd``), or each role its own (a RuntimeByRole)."""
    kinds = {role: placement_of(fleet, role).runtime for role in (ROLE_SERVER, ROLE_APP)}
    built = {kind: RUNTIME_BUILDERS[kind](fleet) for kind in sorted(set(kinds.values()))}
    if len(built) == 1:
        return next(iter(built.values()))
    return RuntimeByRole({role: built[kind] for role, kind in kinds.items()})


def fleet_actions(
    fleet: FleetConfig, *, server: ModelServer | None = None, runtime: Runtime | None = None
) -> FleetActions:
    """The real actions of ``fleet``; ``server`` and ``runtime`` replace the configured ones."""
    return FleetActions(
        fleet,
        server or model_server(fleet),
        runtime or container_runtime(fleet),
        app_probe=app_reports_model,
    )
