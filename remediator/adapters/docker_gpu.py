"""Moving a container to another GPU through the Docker engine: the same container, recreated
with another NVIDIA device request.

Docker cannot change a container's device requests in place, so a move creates a new
container from the old one's inspected configuration (its Config, HostConfig and networks,
labels included, compose's among them) with only ``HostConfig.DeviceRequests`` changed. The
old container is stopped and renamed aside (``<name>.moving``), not removed, until the new one
is ready: a rollback then starts the very container that ran before, and a crash in between
leaves it findable by that name. Every engine failure is a
:class:`~remediator.adapters.docker_engine.DockerError` naming the step.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import docker.errors

from remediator.adapters.docker_errors import ENGINE_ERRORS as _ENGINE_ERRORS
from remediator.adapters.docker_errors import DockerError
from remediator.adapters.docker_errors import cause_of as _cause
from remediator.ports.runtime import ASIDE_SUFFIX

__all__ = [
    "ASIDE_SUFFIX",
    "copy_on_gpu",
    "device_gpus",
    "gpu_request",
    "recreate_on_gpu",
    "start_copy",
    "take_back",
]

log = logging.getLogger(__name__)

# What the engine fills in for a running container and refuses, or ignores, at create.
_ENDPOINT_KEYS: Final = ("IPAMConfig", "Links", "Aliases", "DriverOpts")


def gpu_request(gpu: str) -> dict[str, Any]:
    """The device request of ``docker run --gpus device=<gpu>`` (compose's ``device_ids``)."""
    return {
        "Driver": "nvidia",
        "DeviceIDs": [gpu],
        "Capabilities": [["gpu"]],
        "Count": 0,
        "Options": {},
    }


def device_gpus(attrs: dict[str, Any]) -> list[str]:
    """The GPU indexes an inspected container's NVIDIA device requests name."""
    requests = (attrs.get("HostConfig") or {}).get("DeviceRequests") or []
    return [
        str(i)
        for r in requests
        if r.get("Driver") in ("nvidia", "")
        for i in r.get("DeviceIDs") or []
    ]


def _with_gpu(host_config: dict[str, Any], gpu: str) -> dict[str, Any]:
    """``host_config`` with its NVIDIA device requests replaced by one for ``gpu`` (another
    driver's requests are kept)."""
    others = [
        r for r in host_config.get("DeviceRequests") or [] if r.get("Driver") not in ("nvidia", "")
    ]
    return {**host_config, "DeviceRequests": [*others, gpu_request(gpu)]}


def _networks(attrs: dict[str, Any]) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The network the container is created on (its NetworkMode) and the endpoint settings of
    each network, without what the engine assigned to the old container (its id as an alias)."""
    short_id = str(attrs.get("Id", ""))[:12]
    mode = (attrs.get("HostConfig") or {}).get("NetworkMode")
    endpoints: dict[str, dict[str, Any]] = {}
    for name, ep in ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).items():
        kept = {k: ep[k] for k in _ENDPOINT_KEYS if ep.get(k)}
        if "Aliases" in kept:
            kept["Aliases"] = [a for a in kept["Aliases"] if a != short_id] or None
        endpoints[name] = {k: v for k, v in kept.items() if v}
    return mode, endpoints


def recreate_on_gpu(client: Any, container_id: str, gpu: str, stop_timeout: int) -> str:
    """Stop the container, put it aside and create and start its copy on ``gpu``; the copy's id.

    A failure before the copy runs puts the old container back (name and run); a copy that was
    created but would not start is removed first. The old container stays aside until
    :func:`take_back`, or the caller removes it once the copy is ready.
    """
    new_id = copy_on_gpu(client, container_id, gpu, stop_timeout)
    start_copy(client, container_id, new_id)
    return new_id


def copy_on_gpu(client: Any, container_id: str, gpu: str, stop_timeout: int) -> str:
    """The first half of a move: the container stopped and put aside, its copy on ``gpu``
    created (not started); the copy's id. A failure puts the old container back."""
    step = "move"
    try:
        attrs = client.api.inspect_container(container_id)
        name = str(attrs["Name"]).lstrip("/")
        mode, endpoints = _networks(attrs)
        body = {**attrs["Config"], "HostConfig": _with_gpu(attrs["HostConfig"], gpu)}
        if mode in endpoints:
            body["NetworkingConfig"] = {"EndpointsConfig": {mode: endpoints.pop(mode)}}
        log.info("moving container %s to GPU %s (stop timeout %d s)", name, gpu, stop_timeout)
        step = "move_stop"
        client.api.stop(container_id, timeout=stop_timeout)
        client.api.rename(container_id, name + ASIDE_SUFFIX)
        step = "move_create"
        new_id = str(client.api.create_container_from_config(body, name=name)["Id"])
        for network, settings in endpoints.items():
            client.api.connect_container_to_network(new_id, network, **_snake(settings))
    except _ENGINE_ERRORS as exc:
        _put_back(client, container_id, None, step)
        raise DockerError(step, _why(exc), container=_name(client, container_id)) from exc
    return new_id


def start_copy(client: Any, old_id: str, new_id: str) -> None:
    """The second half: start the copy; when it will not start (no such GPU, no NVIDIA
    runtime), the copy is removed and the old container put back before the error is raised."""
    try:
        client.api.start(new_id)
    except _ENGINE_ERRORS as exc:
        _put_back(client, old_id, new_id, "move_start")
        raise DockerError("move_start", _why(exc), container=_name(client, old_id)) from exc


def _name(client: Any, container_id: str) -> str:
    """The container's name for an error, or its short id when the engine cannot say."""
    try:
        return str(client.api.inspect_container(container_id)["Name"]).lstrip("/")
    except _ENGINE_ERRORS:
        return container_id[:12]


def _why(exc: BaseException) -> str:
    """The engine's answer as it gave it: its APIError is an HTTP error to ``requests`` too,
    which :func:`_cause` would call unreachable."""
    if isinstance(exc, docker.errors.DockerException):
        return f"{type(exc).__name__}: {exc}"
    return _cause(exc)


def _snake(settings: dict[str, Any]) -> dict[str, Any]:
    """Endpoint settings as connect_container_to_network's keyword arguments."""
    ipam = settings.get("IPAMConfig") or {}
    return {
        "aliases": settings.get("Aliases"),
        "links": settings.get("Links"),
        "ipv4_address": ipam.get("IPv4Address"),
        "ipv6_address": ipam.get("IPv6Address"),
        "driver_opt": settings.get("DriverOpts"),
    }


def _put_back(client: Any, old_id: str, new_id: str | None, step: str) -> None:
    """After a failed ``step``: the copy removed, the old container back under its name and
    started; what cannot be undone is logged (the move's error is what the caller raises)."""
    try:
        take_back(client, old_id, new_id)
    except DockerError as exc:
        log.error("a move that failed at %s could not be undone: %s", step, exc)


def take_back(client: Any, old_id: str, new_id: str | None) -> None:
    """Undo a move: remove the copy (if any), rename the old container back and start it."""
    try:
        if new_id is not None:
            client.api.remove_container(new_id, force=True)
        attrs = client.api.inspect_container(old_id)
        name = str(attrs["Name"]).lstrip("/")
        if name.endswith(ASIDE_SUFFIX):
            client.api.rename(old_id, name[: -len(ASIDE_SUFFIX)])
        client.api.start(old_id)
    except _ENGINE_ERRORS as exc:
        raise DockerError("move_rollback", _why(exc), container=old_id[:12]) from exc
