"""The Docker engine as the :class:`~remediator.ports.runtime.Runtime`: find, restart, wait ready.

The only module of the remediator that talks to the Docker engine. Containers are found by
the labels of fleet_contract.labels (``model-fleet.fleet``, ``model-fleet.role``) and/or by
explicit names. Every failure is a :class:`DockerError` (a
:class:`~remediator.ports.runtime.ContainerError`) naming the step and the cause; both
``docker.errors.DockerException`` and ``requests.exceptions.RequestException`` are caught,
because a client pinned to an API version raises the latter when the socket is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import docker.client
import docker.errors

from fleet_contract.labels import DEFAULT_FLEET as DEFAULT_FLEET
from fleet_contract.labels import FLEET_LABEL as FLEET_LABEL
from fleet_contract.labels import ROLE_LABEL as ROLE_LABEL
from remediator.adapters import docker_gpu
from remediator.adapters.docker_errors import ENGINE_ERRORS as _ENGINE_ERRORS
from remediator.adapters.docker_errors import DockerError
from remediator.adapters.docker_errors import cause_of as _cause
from remediator.ports.runtime import ContainerRef, ContainerState, Probe, describe

log = logging.getLogger(__name__)


# What the engine may raise at us: its own errors, and the HTTP layer's when the socket is gone.
class DockerRuntime:
    """Finds, restarts and watches containers through the Docker engine API."""

    def __init__(
        self,
        client: Any = None,
        *,
        base_url: str | None = None,
        version: str | None = None,
        timeout: float = 60.0,
        poll_interval: float = 0.25,
    ) -> None:
        """Use ``client`` if given, else connect lazily (``base_url`` or the environment)."""
        self._client = client
        self._owns_client = client is None
        self._base_url = base_url
        self._version = version
        self._timeout = timeout
        self.poll_interval = poll_interval
        self._client_lock = threading.Lock()

    def close(self) -> None:
        """Close the client this runtime opened itself (a client passed in stays open)."""
        with self._client_lock:
            if self._client is not None and self._owns_client:
                self._client.close()
                self._client = None

    def find(
        self,
        fleet: str,
        role: str,
        names: Iterable[str] = (),
        *,
        use_labels: bool = True,
    ) -> list[ContainerRef]:
        """The fleet's containers of ``role``: labelled ones (if ``use_labels``) and ``names``.

        Stopped containers are included: restarting one starts it. A container without a
        fleet label belongs to fleet ``default``. Names that match no container are logged
        and skipped (the application may be down; it reads the new config when it starts).
        """
        client = self._engine("find")
        found: dict[str, ContainerRef] = {}
        try:
            if use_labels:
                # ignore_removed: a container removed between listing and inspecting is gone.
                role_filter = {"label": f"{ROLE_LABEL}={role}"}
                for c in client.containers.list(all=True, filters=role_filter, ignore_removed=True):
                    labels = c.labels or {}
                    if labels.get(FLEET_LABEL, DEFAULT_FLEET) == fleet:
                        found[c.id] = ContainerRef(c.id, c.name, fleet, role)
            for name in names:
                try:
                    c = client.containers.get(name)
                except docker.errors.NotFound:
                    log.warning("fleet %s: no container named %r (role %s)", fleet, name, role)
                    continue
                found[c.id] = ContainerRef(c.id, c.name, fleet, role)
        except _ENGINE_ERRORS as exc:
            raise DockerError("find", _cause(exc)) from exc
        return sorted(found.values(), key=lambda ref: ref.name)

    def state(self, ref: ContainerRef) -> ContainerState:
        """The container's status, health and start time."""
        attrs = self._inspect("inspect", ref)
        s = attrs.get("State") or {}
        health = s.get("Health") if isinstance(s.get("Health"), dict) else None
        probes = (health or {}).get("Log") or []
        last_probe = str(probes[-1].get("Output", "")).strip() if probes else None
        return ContainerState(
            status=str(s.get("Status", "unknown")),
            health=str(health.get("Status")) if health else None,
            started_at=_parse_time(s.get("StartedAt")),
            exit_code=s.get("ExitCode") if isinstance(s.get("ExitCode"), int) else None,
            restart_count=int(attrs.get("RestartCount") or 0),
            last_probe=last_probe or None,
        )

    def started_at(self, ref: ContainerRef) -> datetime | None:
        """When the container last started (UTC), None if it never did."""
        return self.state(ref).started_at

    def restart(self, ref: ContainerRef, stop_timeout: int = 10) -> datetime | None:
        """Restart (or start, if stopped) with ``stop_timeout`` s before SIGKILL; new start time."""
        client = self._engine("restart", ref)
        try:
            container = client.containers.get(ref.id)
            log.info("restarting container %s (stop timeout %d s)", ref.name, stop_timeout)
            container.restart(timeout=stop_timeout)
        except _ENGINE_ERRORS as exc:
            raise DockerError("restart", _cause(exc), container=ref.name) from exc
        return self.started_at(ref)

    def move(self, ref: ContainerRef, gpu: str, stop_timeout: int = 10) -> ContainerRef:
        """Recreate the container on ``gpu`` (:mod:`remediator.adapters.docker_gpu`): the copy,
        started, under the same name; the old one stays aside until :meth:`finish_move`."""
        new_id = docker_gpu.recreate_on_gpu(self._engine("move", ref), ref.id, gpu, stop_timeout)
        return ContainerRef(new_id, ref.name, ref.fleet, ref.role)

    def finish_move(self, old: ContainerRef, new: ContainerRef | None, *, keep: bool) -> None:
        """Remove the old container of a move (``keep``: the copy is ready), or take the move
        back: the copy (if any: a crash may come before it exists) removed, the old container
        renamed back and started."""
        client = self._engine("move", old)
        if not keep:
            docker_gpu.take_back(client, old.id, None if new is None else new.id)
            return
        try:
            client.api.remove_container(old.id, force=True)
        except _ENGINE_ERRORS as exc:
            raise DockerError("move_cleanup", _cause(exc), container=old.name) from exc

    def wait_ready(
        self, ref: ContainerRef, deadline: float, probe: Probe | None = None
    ) -> ContainerState:
        """Wait until the container is ready by ``deadline`` (a ``time.monotonic()`` value).

        With a ``probe`` (the service's own answer: None when ready, else why not), ready means
        running and the probe passes; Docker's health status is not waited for, since health
        checks run on their own interval and would hold a working switch for up to that long.
        Without one, ready means running and healthy when the container has a health check.
        """
        why_not: str | None = None
        while True:
            state = self.state(ref)
            if probe is None:
                if state.ready:
                    return state
            elif state.status == "running":
                why_not = probe()
                if why_not is None:
                    return state
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = describe(state) + (f"; {why_not}" if why_not else "")
                raise DockerError(
                    "wait_ready", f"not ready before the deadline: {detail}", container=ref.name
                )
            time.sleep(min(self.poll_interval, remaining))

    def still_up(self, ref: ContainerRef, before: ContainerState) -> ContainerState:
        """Check that the run ``before`` described is still up (not crashed, not restarted).

        A container without a health check that crashes on start is "running" for a moment;
        asking again a little later tells a real start from that moment.
        """
        now = self.state(ref)
        if now.ready and now.started_at == before.started_at:
            return now
        raise DockerError(
            "wait_ready",
            f"did not stay up after it started: {describe(now)}",
            container=ref.name,
        )

    def _inspect(self, step: str, ref: ContainerRef) -> dict[str, Any]:
        client = self._engine(step, ref)
        try:
            attrs = client.api.inspect_container(ref.id)
        except _ENGINE_ERRORS as exc:
            raise DockerError(step, _cause(exc), container=ref.name) from exc
        return attrs if isinstance(attrs, dict) else {}

    def _engine(self, step: str, ref: ContainerRef | None = None) -> Any:
        with self._client_lock:
            if self._client is None:
                try:
                    if self._base_url is None:
                        kwargs: dict[str, Any] = {"timeout": int(self._timeout)}
                        if self._version is not None:
                            kwargs["version"] = self._version
                        self._client = docker.client.DockerClient.from_env(**kwargs)
                    else:
                        self._client = docker.client.DockerClient(
                            base_url=self._base_url,
                            version=self._version,
                            timeout=int(self._timeout),
                        )
                except _ENGINE_ERRORS as exc:
                    cause = f"cannot reach the Docker engine: {_cause(exc)}"
                    raise DockerError(step, cause, container=ref.name if ref else None) from exc
            return self._client


def _parse_time(value: object) -> datetime | None:
    """Parse Docker's RFC 3339 time with nanoseconds; the zero time means never."""
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None
    text = value.rstrip("Z")
    offset = "+00:00"
    for sign in ("+", "-"):
        idx = text.rfind(sign, 19)  # a sign after the seconds starts a UTC offset
        if idx != -1:
            text, offset = text[:idx], text[idx:]
            break
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6].ljust(6, '0')}"  # datetime keeps microseconds only
    try:
        return datetime.fromisoformat(text + offset).astimezone(UTC)
    except ValueError:
        return None
