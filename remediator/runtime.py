"""The runtime seam: where a fleet's containers run, and how they are restarted and watched.

The core (actions.py) speaks only to :class:`Runtime`; the Docker engine
(:mod:`remediator.adapters.docker_engine`) is the implementation today. Containers are found by
fleet and role: the model server's (``ROLE_SERVER``) and the application's (``ROLE_APP``).
Every failure is a :class:`ContainerError` naming the step and the cause.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol, runtime_checkable

from fleet_contract import labels
from remediator.errors import StepError

# The role label's values as deployed (model-fleet.role=ollama names the model server,
# whatever its kind): the contract's, re-exported for the runtime's callers.
ROLE_SERVER: Final = labels.ROLE_SERVER
ROLE_APP: Final = labels.ROLE_APP

# A service's own readiness check: None when ready, else a short reason why not.
Probe = Callable[[], str | None]


class ContainerError(StepError):
    """A runtime operation failed; ``step`` names it, ``container`` is the name if one applies."""

    def __init__(
        self, step: str, cause: str, *, container: str | None = None, runtime: str = "runtime"
    ) -> None:
        self.container = container
        super().__init__(runtime, step, cause, f"container {container!r}" if container else None)


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

    @property
    def ready(self) -> bool:
        """Running, and healthy when the container has a health check."""
        return self.status == "running" and self.health in (None, "healthy")


def describe(state: ContainerState) -> str:
    """A one-line account of a state, with why it is not ready when that is known."""
    text = f"status={state.status}"
    if state.health is not None:
        text += f" health={state.health}"
    if state.status in ("exited", "dead") and state.exit_code is not None:
        text += f" exit_code={state.exit_code}"
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
