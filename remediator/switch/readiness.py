"""When a restarted (or moved) container is ready: the service's own probe (the model server
lists the model; the app's health endpoint names it), else the runtime's health check, else
still up after ``settle_seconds``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from remediator.appconfig import AppConfigError, AppConfigTarget
from remediator.config import FleetConfig
from remediator.ports.model_server import ModelServer, ModelServerError
from remediator.ports.runtime import ROLE_SERVER, ContainerRef, ContainerState, Probe, Runtime

__all__ = [
    "AppProbe",
    "Ready",
    "configs_and_server_on",
    "lists_model",
    "readiness_probe",
    "settle",
    "wait_ready",
]


# The application's own readiness: (health URL, model) -> None when it answers on the model,
# else why not (remediator.adapters.probes.app_reports_model for an HTTP health endpoint).
AppProbe = Callable[[str, str], str | None]


class Ready(NamedTuple):
    """A restarted container found ready, and whether the service's own probe said so."""

    ref: ContainerRef
    state: ContainerState
    probed: bool


def readiness_probe(
    fleet: FleetConfig, server: ModelServer, app_probe: AppProbe | None, role: str, model: str
) -> Probe | None:
    """The service's own readiness check for ``role`` on ``model``, if it has one.

    The model server is ready when its API answers and lists the model; the application
    when its health endpoint (``containers.app_health_url``) names the model. Without
    one, the runtime's health status (or, lacking a health check, settle_seconds) decides.
    """
    if role == ROLE_SERVER:
        return lists_model(server, model)
    url = fleet.containers.app_health_url
    if url is None or app_probe is None:
        return None
    return lambda: app_probe(url, model)


def lists_model(server: ModelServer, model: str) -> Probe:
    """The model server's readiness: its API answers and lists ``model``."""

    def server_has_model() -> str | None:
        try:
            found = server.has_model(model)
        except ModelServerError as exc:
            return f"model server not answering: {exc}"
        return None if found else f"model server does not list {model}"

    return server_has_model


def wait_ready(
    fleet: FleetConfig, runtime: Runtime, group: list[ContainerRef], probe: Probe | None
) -> list[Ready]:
    """Every container of the group ready within the fleet's deadline."""
    deadline = time.monotonic() + fleet.containers.ready_timeout_seconds
    return [
        Ready(ref, runtime.wait_ready(ref, deadline, probe), probe is not None) for ref in group
    ]


def settle(fleet: FleetConfig, runtime: Runtime, ready: list[Ready]) -> None:
    """Containers that nothing vouched for (no probe, no health check) must still be up
    after settle_seconds (one wait for all)."""
    unchecked = [r for r in ready if not r.probed and r.state.health is None]
    if unchecked and fleet.containers.settle_seconds > 0:
        time.sleep(fleet.containers.settle_seconds)
        for r in unchecked:
            runtime.still_up(r.ref, r.state)


def configs_and_server_on(
    targets: Iterable[AppConfigTarget], server: ModelServer, model: str
) -> list[str]:
    """Why the app configs or the model server are not on ``model`` now: a config names
    another model, or the server does not list it (empty when both are)."""
    problems = [
        f"{t.describe()} names {found!r}" for t in targets if (found := _read_model(t)) != model
    ]
    try:
        if not server.has_model(model):
            problems.append(f"the model server does not list {model}")
    except ModelServerError as exc:
        problems.append(f"model server not answering: {exc}")
    return problems


def _read_model(target: AppConfigTarget) -> str | None:
    try:
        return target.read_model()
    except AppConfigError as exc:
        return f"unreadable: {exc}"
