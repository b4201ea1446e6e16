"""Carrying out a move: the model server's containers recreated on another GPU, same model.

:mod:`remediator.domain.moves` decides; this module acts, as
:class:`~remediator.switch.actions.FleetActions` does for a switch, and through the same
transaction (:meth:`Remediator.carry_out`): the journal records each step
(:data:`remediator.switch.journal.MOVE_PLANNED`), the model server's own probe says when the copy
is ready on the model it ran, and a failure puts the old container back under its name, running,
before :class:`~remediator.switch.engine.SwitchFailed` is raised. Nothing else is touched: the
model and the app configs stay, and the applications reach the copy by the same name and network
aliases, so they are not restarted.

The runtime moves a container by recreating it (``DockerRuntime.move``); the old one stays
aside, stopped and renamed ``<name>.moving`` (:data:`ASIDE_SUFFIX`), until the copy is ready.
An interrupted move is resolved by :func:`resolve_move`: forward when the copy was verified,
else back to the container put aside.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from remediator import appconfig
from remediator.appconfig import AppConfigError, ConfigSnapshot
from remediator.config import FleetConfig
from remediator.domain.loggers import MOVING as log
from remediator.ports.runtime import (
    ASIDE_SUFFIX,
    ROLE_SERVER,
    ContainerError,
    ContainerRef,
    Probe,
    Runtime,
    RuntimeByRole,
)
from remediator.switch.plan import Done, SwitchFailed, SwitchPlan

__all__ = ["Mover", "aside", "move_servers", "resolve_move", "write_gpu_config"]


@runtime_checkable
class Mover(Protocol):
    """A runtime that can recreate a container on another GPU (DockerRuntime)."""

    def move(self, ref: ContainerRef, gpu: str, stop_timeout: int = 10) -> ContainerRef:
        """The container's copy on ``gpu``, started; the old one put aside."""
        ...

    def finish_move(self, old: ContainerRef, new: ContainerRef | None, *, keep: bool) -> None:
        """Remove the old container (``keep``), or take the move back to it."""
        ...


def _mover(runtime: Runtime) -> Mover | None:
    """The runtime that runs the model server, when it can move a container."""
    if isinstance(runtime, RuntimeByRole):
        runtime = runtime.runtimes[ROLE_SERVER]
    return runtime if isinstance(runtime, Mover) else None


def aside(refs: Sequence[ContainerRef]) -> tuple[list[ContainerRef], list[ContainerRef]]:
    """Split found containers into those in service and those a move put aside."""
    kept = [r for r in refs if r.name.endswith(ASIDE_SUFFIX)]
    return [r for r in refs if r not in kept], kept


def move_servers(
    fleet: FleetConfig,
    runtime: Runtime,
    plan: SwitchPlan,
    servers: list[ContainerRef],
    probe: Probe | None,
) -> Iterator[Done]:
    """Move each model server container to ``plan.to_gpu`` and find it ready on the same model,
    yielding each step once it is done. Raises SwitchFailed once everything is back where it
    ran."""
    gpu, model = plan.to_gpu, plan.from_rung.name
    assert gpu is not None
    servers, _ = aside(servers)
    mover = _mover(runtime)
    if not servers:
        raise SwitchFailed("find_containers", "no model server container found to move")
    if mover is None:
        why = f"the model server's runtime ({type(runtime).__name__}) cannot move a container"
        raise SwitchFailed("move", why)
    yield Done("found", " ".join(ref.name for ref in servers))
    try:
        snap = appconfig.write_all(fleet.gpu_config, gpu)
    except AppConfigError as exc:
        raise SwitchFailed("write_gpu_config", str(exc)) from exc
    wrote = tuple(f"wrote GPU {gpu} into {t.describe()}" for t in fleet.gpu_config)
    yield Done("gpu_config_written", gpu, wrote)
    c = fleet.containers
    moved: list[tuple[ContainerRef, ContainerRef]] = []
    step = "move"
    try:
        for ref in servers:
            moved.append((ref, mover.move(ref, gpu, c.stop_timeout_seconds)))
            yield Done("moved_ollama", ref.name, (f"moved {ref.name} to GPU {gpu}",))
        step = "verify"
        deadline = time.monotonic() + c.ready_timeout_seconds
        for _, new in moved:
            runtime.wait_ready(new, deadline, probe)
        yield Done("verified_ollama", model)
    except ContainerError as exc:
        # A copy that would not start was removed and its old container started by the move.
        problems = _restore(snap) + _take_back(fleet, runtime, mover, moved, servers, probe)
        raise SwitchFailed(step, str(exc), problems) from exc
    for old, new in moved:
        try:
            mover.finish_move(old, new, keep=True)
        except ContainerError as exc:  # the copy serves; a stopped leftover harms nothing
            log.warning("fleet %s: the moved container's old one stays: %s", fleet.name, exc)
    yield Done("move_finished")


def _restore(snap: ConfigSnapshot) -> list[str]:
    """Put the GPU config files back as they were; what could not be undone."""
    try:
        snap.restore()
    except AppConfigError as exc:
        return [str(exc)]
    return []


def write_gpu_config(fleet: FleetConfig, gpu: str) -> list[str]:
    """Make every ``gpu_config`` file name ``gpu`` (an interrupted move resolved forward names
    the new GPU, taken back the old one); what could not be written."""
    try:
        appconfig.write_all(fleet.gpu_config, gpu)
    except AppConfigError as exc:
        return [str(exc)]
    return []


def _take_back(
    fleet: FleetConfig,
    runtime: Runtime,
    mover: Mover,
    moved: list[tuple[ContainerRef, ContainerRef]],
    servers: list[ContainerRef],
    probe: Probe | None,
) -> list[str]:
    """Put every moved container back and find the old ones ready; what could not be undone."""
    problems: list[str] = []
    for old, new in moved:
        try:
            mover.finish_move(old, new, keep=False)
        except ContainerError as exc:
            problems.append(str(exc))
    problems += _wait_all(fleet, runtime, servers, probe)
    log.warning(
        "fleet %s: move taken back (%d container(s) on their old GPU)%s",
        fleet.name,
        len(servers),
        f"; could not undo: {'; '.join(problems)}" if problems else "",
    )
    return problems


def resolve_move(
    fleet: FleetConfig,
    runtime: Runtime,
    found: list[ContainerRef],
    probe: Probe | None,
    *,
    forward: bool,
) -> list[str]:
    """Finish an interrupted move (``forward``: its copy was verified; the containers put aside
    are removed) or take it back (the copies removed, the old containers back and ready).
    Returns what could not be done; idempotent: without containers aside there is nothing left
    to undo, since a move renames its old container back before anything else."""
    serving, kept = aside(found)
    mover = _mover(runtime)
    if not kept:
        return []  # the GPU config, if written, is resolved by the caller (write_gpu_config)
    if mover is None:
        return [f"{type(runtime).__name__} cannot finish a move"]
    by_name = {ref.name: ref for ref in serving}
    problems: list[str] = []
    restored: list[ContainerRef] = []
    for old in kept:
        copy = by_name.get(old.name[: -len(ASIDE_SUFFIX)])
        try:
            mover.finish_move(old, copy, keep=forward and copy is not None)
            name = old.name[: -len(ASIDE_SUFFIX)]
            restored.append(ContainerRef(old.id, name, old.fleet, old.role))
        except ContainerError as exc:
            problems.append(str(exc))
    if not forward and not problems:
        problems += _wait_all(fleet, runtime, restored, probe)
    return problems


def _wait_all(
    fleet: FleetConfig, runtime: Runtime, refs: list[ContainerRef], probe: Probe | None
) -> list[str]:
    """Wait until each container is ready, within the fleet's one deadline; what was not."""
    problems: list[str] = []
    deadline = time.monotonic() + fleet.containers.ready_timeout_seconds
    for ref in refs:
        try:
            runtime.wait_ready(ref, deadline, probe)
        except ContainerError as exc:
            problems.append(str(exc))
    return problems
