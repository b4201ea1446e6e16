"""A Runtime kept in memory: the second implementation that proves the seam.

A container is a ref plus a ``start`` function the test gives: it runs at every (re)start, as
the container's process would, and returns None to keep running or an exit code to crash.
Every restart is recorded in order; any step can be made to fail. A move recreates a container
on another GPU as DockerRuntime.move does: the old one stopped and put aside under
``<name>.moving`` until :meth:`MemoryRuntime.finish_move`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from remediator.ports.runtime import (
    ASIDE_SUFFIX,
    ContainerError,
    ContainerRef,
    ContainerState,
    Probe,
    describe,
)

Start = Callable[[], int | None]


@dataclass
class MemoryContainer:
    """One container: what it runs and what it is doing now."""

    ref: ContainerRef
    start: Start
    health: str | None = None
    status: str = "created"
    exit_code: int | None = None
    started_at: datetime | None = None
    restart_count: int = 0
    labelled: bool = True  # False: found only by its name
    gpu: str | None = None  # the GPU a move put it on


class MemoryRuntime:
    """Containers found by fleet and role (or name), restarted and watched with no engine."""

    def __init__(self) -> None:
        self.containers: dict[str, MemoryContainer] = {}
        self.restarts: list[str] = []  # container names, in order
        self.moves: list[tuple[str, str]] = []  # (container name, GPU), in order
        self.failures: dict[str, str] = {}  # step -> cause
        self._clock = datetime(2026, 1, 1, tzinfo=UTC)
        self.closed = False

    def add(
        self, fleet: str, role: str, name: str, start: Start, *, labelled: bool = True
    ) -> ContainerRef:
        """Create and start a container; ``labelled`` False: found only by its name."""
        ref = ContainerRef(f"id-{name}", name, fleet, role)
        self.containers[name] = MemoryContainer(ref, start, labelled=labelled)
        self._start(self.containers[name])
        return ref

    def fail(self, step: str, cause: str) -> None:
        """Make every later call of ``step`` (find, restart, inspect) raise ContainerError."""
        self.failures[step] = cause

    def _check(self, step: str, name: str | None = None) -> None:
        if step in self.failures:
            raise ContainerError(step, self.failures[step], container=name, runtime="memory")

    def _start(self, c: MemoryContainer) -> None:
        self._clock += timedelta(seconds=1)
        c.started_at = self._clock
        c.exit_code = c.start()
        c.status = "running" if c.exit_code is None else "exited"

    def find(
        self, fleet: str, role: str, names: Iterable[str] = (), *, use_labels: bool = True
    ) -> list[ContainerRef]:
        self._check("find")
        wanted = set(names)
        found = [
            ContainerRef(c.ref.id, c.ref.name, fleet, role)
            for c in self.containers.values()
            if c.ref.name in wanted
            or (use_labels and c.labelled and (c.ref.fleet, c.ref.role) == (fleet, role))
        ]
        return sorted(found, key=lambda ref: ref.name)

    def state(self, ref: ContainerRef) -> ContainerState:
        self._check("inspect", ref.name)
        c = self.containers[ref.name]
        return ContainerState(c.status, c.health, c.started_at, c.exit_code, c.restart_count)

    def restart(self, ref: ContainerRef, stop_timeout: int = 10) -> datetime | None:
        self._check("restart", ref.name)
        c = self.containers[ref.name]
        self.restarts.append(ref.name)
        c.restart_count += 1
        self._start(c)
        return c.started_at

    def wait_ready(
        self, ref: ContainerRef, deadline: float, probe: Probe | None = None
    ) -> ContainerState:
        # Nothing changes by itself in memory: ready now, or never.
        state = self.state(ref)
        why_not = probe() if probe is not None and state.status == "running" else None
        ready = state.status == "running" and why_not is None if probe else state.ready
        if ready:
            return state
        detail = describe(state) + (f"; {why_not}" if why_not else "")
        raise ContainerError(
            "wait_ready", f"not ready: {detail}", container=ref.name, runtime="memory"
        )

    def still_up(self, ref: ContainerRef, before: ContainerState) -> ContainerState:
        now = self.state(ref)
        if now.ready and now.started_at == before.started_at:
            return now
        raise ContainerError(
            "wait_ready", f"did not stay up: {describe(now)}", container=ref.name, runtime="memory"
        )

    def move(self, ref: ContainerRef, gpu: str, stop_timeout: int = 10) -> ContainerRef:
        """The copy on ``gpu``, started; ``fail("move_start", ...)`` refuses its start as Docker
        does without the GPU, and the old container is then back under its name, running."""
        self._check("move", ref.name)
        old = self.containers.pop(ref.name)
        old.status, old.ref = "exited", replace(old.ref, name=ref.name + ASIDE_SUFFIX)
        self.containers[old.ref.name] = old
        new_ref = replace(ref, id=f"{ref.id}@gpu{gpu}")
        self.containers[ref.name] = MemoryContainer(new_ref, old.start, old.health, gpu=gpu)
        self.moves.append((ref.name, gpu))
        if "move_start" in self.failures:
            self.finish_move(old.ref, new_ref, keep=False)
            raise ContainerError(
                "move_start", self.failures["move_start"], container=ref.name, runtime="memory"
            )
        self._start(self.containers[ref.name])
        return new_ref

    def finish_move(self, old: ContainerRef, new: ContainerRef | None, *, keep: bool) -> None:
        """Remove the container put aside (``keep``), or the copy, putting the old one back."""
        self._check("finish_move", old.name)
        name = next(n for n, c in self.containers.items() if c.ref.id == old.id)
        kept = self.containers.pop(name)
        if keep:
            return
        plain = name.removesuffix(ASIDE_SUFFIX)
        if new is not None and self.containers.get(plain, kept).ref.id == new.id:
            del self.containers[plain]
        kept.ref = replace(kept.ref, name=plain)
        self.containers[plain] = kept
        self._start(kept)

    def close(self) -> None:
        self.closed = True
