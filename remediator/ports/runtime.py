"""The runtime seam: where a fleet's containers run, and how they are restarted and watched.

The core (actions.py) speaks only to :class:`Runtime`; the Docker engine
(:mod:`remediator.adapters.docker_engine`) and systemd (:mod:`remediator.adapters.systemd_units`,
where a unit plays the part of a container) implement it. Containers are found by fleet and
role: the model server's (``ROLE_SERVER``) and the application's (``ROLE_APP``); a fleet whose
two roles run on different runtimes gets a :class:`RuntimeByRole`. Every failure is a
:class:`ContainerError` naming the step and the cause.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol, runtime_checkable

from fleet_contract import labels
from remediator.ports.errors import StepError

# The role label's values as deployed (model-fleet.role=ollama names the model server,
# whatever its kind): the contract's, re-exported for the runtime's callers.
ROLE_SERVER: Final = labels.ROLE_SERVER
ROLE_APP: Final = labels.ROLE_APP
# A container a move (remediator.switch.moving) put aside, stopped, until its copy on the new GPU is
# ready: ``<name>.moving``. Recovery finds it by this name after a crash.
ASIDE_SUFFIX: Final = ".moving"

# A service's own readiness check: None when ready, else a short reason why not.
Probe = Callable[[], str | None]


class ContainerError(StepError):
    """A runtime operation failed; ``step`` names it, ``container`` is the name if one applies.

    ``kind`` is what the runtime calls the thing (a systemd ``unit``), for the message.
    """

    def __init__(
        self,
        step: str,
        cause: str,
        *,
        container: str | None = None,
        runtime: str = "runtime",
        kind: str = "container",
    ) -> None:
        self.container = container
        super().__init__(runtime, step, cause, f"{kind} {container!r}" if container else None)


@dataclass(frozen=True)
class ContainerRef:
    """A container found for a fleet: its id, name and the role it plays."""

    id: str
    name: str
    fleet: str
    role: str


@dataclass(frozen=True)
class ContainerState:
    """What the runtime says about a container right now."""

    status: str
    health: str | None
    started_at: datetime | None
    exit_code: int | None
    restart_count: int
    last_probe: str | None = None
    # One run of the container, where the runtime names runs (systemd's InvocationID); None:
    # the start time tells runs apart (Docker).
    run_id: str | None = None
    # Why the last run ended, in the runtime's words (systemd's Result: exit-code, signal,
    # oom-kill ...); None where the runtime does not say.
    result: str | None = None

    @property
    def ready(self) -> bool:
        """Running, and healthy when the container has a health check."""
        return self.status == "running" and self.health in (None, "healthy")


def describe(state: ContainerState) -> str:
    """A one-line account of a state, with why it is not ready when that is known."""
    text = f"status={state.status}"
    if state.health is not None:
        text += f" health={state.health}"
    if state.status in ("exited", "dead", "failed") and state.exit_code is not None:
        text += f" exit_code={state.exit_code}"
    if state.status != "running" and state.result not in (None, "success"):
        text += f" result={state.result}"
    if state.health not in (None, "healthy") and state.last_probe:
        # The last probe's output usually says why (connection refused, HTTP 500 ...).
        text += f" last_probe={state.last_probe[:200]!r}"
    return text


@runtime_checkable
class Runtime(Protocol):
    """Finds, restarts and watches a fleet's containers."""

    def find(
        self, fleet: str, role: str, names: Iterable[str] = (), *, use_labels: bool = True
    ) -> list[ContainerRef]:
        """The fleet's containers of ``role``: labelled ones (if ``use_labels``) and ``names``."""
        ...

    def state(self, ref: ContainerRef) -> ContainerState:
        """The container's status, health and start time."""
        ...

    def restart(self, ref: ContainerRef, stop_timeout: int = 10) -> datetime | None:
        """Restart (or start, if stopped) the container; its new start time."""
        ...

    def wait_ready(
        self, ref: ContainerRef, deadline: float, probe: Probe | None = None
    ) -> ContainerState:
        """Wait until the container is ready by ``deadline`` (a ``time.monotonic()`` value).

        With a ``probe``, ready means running and the probe passes; without one, running and
        healthy when the container has a health check. Raises ContainerError at the deadline.
        """
        ...

    def still_up(self, ref: ContainerRef, before: ContainerState) -> ContainerState:
        """Check that the run ``before`` described is still up (not crashed, not restarted)."""
        ...

    def close(self) -> None:
        """Release the connection to the runtime."""
        ...


class RuntimeByRole:
    """One fleet's runtime when its roles run on different runtimes (the model server a
    systemd unit, the application a Docker container): each call goes to the role's runtime.

    A ref carries its role, so state, restart and the waits follow the runtime that found it.
    """

    def __init__(self, runtimes: Mapping[str, Runtime]) -> None:
        self.runtimes = dict(runtimes)

    def _of(self, role: str) -> Runtime:
        return self.runtimes[role]

    def find(
        self, fleet: str, role: str, names: Iterable[str] = (), *, use_labels: bool = True
    ) -> list[ContainerRef]:
        """The fleet's containers of ``role``, as the role's runtime finds them."""
        return self._of(role).find(fleet, role, names, use_labels=use_labels)

    def state(self, ref: ContainerRef) -> ContainerState:
        """The state, from the runtime of the ref's role."""
        return self._of(ref.role).state(ref)

    def restart(self, ref: ContainerRef, stop_timeout: int = 10) -> datetime | None:
        """Restart through the runtime of the ref's role."""
        return self._of(ref.role).restart(ref, stop_timeout)

    def wait_ready(
        self, ref: ContainerRef, deadline: float, probe: Probe | None = None
    ) -> ContainerState:
        """Wait through the runtime of the ref's role."""
        return self._of(ref.role).wait_ready(ref, deadline, probe)

    def still_up(self, ref: ContainerRef, before: ContainerState) -> ContainerState:
        """Check through the runtime of the ref's role."""
        return self._of(ref.role).still_up(ref, before)

    def close(self) -> None:
        """Close each runtime once (two roles may share one)."""
        for runtime in {id(r): r for r in self.runtimes.values()}.values():
            runtime.close()
