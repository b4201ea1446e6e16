"""Placement before downgrade: the pure decision to move a fleet's model server to another GPU.

With ``placement: move_first`` a VRAM alert first looks for another of the fleet's ``gpus``
where the current model fits with the fleet's ``headroom_mb`` to spare, and moves there
(the same rung on another GPU) instead of stepping down; only when none fits does it step down
(:func:`remediator.domain.decisions.choose_downgrade`). The figures are Prometheus' free VRAM per
GPU, read by the caller; without them there is no move, since a move onto a GPU of unknown room
could fail in the very way the alert reports.

Other fleets of the host count by the GPU they run on now and their own headroom: their models
are loaded, so the free figure already leaves out their bytes, and a move must leave each of
them its headroom as well as the mover's. A move is judged after the gates every switch passes
(duplicate, stale alert, cooldown, hourly cap): it restarts the model server as a switch does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from remediator.config import MIB, FleetConfig
from remediator.domain.decisions import AlertRef, Decision, refusal
from remediator.domain.kinds import Trigger
from remediator.domain.state import FleetState

__all__ = ["STEP_DOWN_INSTEAD", "Neighbour", "choose_move", "neighbours"]

# The refusals after which the fleet steps down as it would without placement: no move was
# asked, none could be judged, none fits. Any other refusal (a gate) refuses the step down too.
STEP_DOWN_INSTEAD: Final = frozenset({"placement_stay", "no_vram_measurement", "no_gpu_fits"})


@dataclass(frozen=True)
class Neighbour:
    """Another fleet of the host: the GPU its model server runs on now and its headroom."""

    fleet: str
    gpu: str
    headroom_mb: int


def neighbours(
    fleet: FleetConfig,
    configs: Mapping[str, FleetConfig],
    states: Mapping[str, FleetState],
) -> list[Neighbour]:
    """The host's other fleets where they run now (after their own moves), for ``fleet``'s move:
    one remediator serves one host, so every other fleet of its config shares the GPUs."""
    return [
        Neighbour(name, states[name].current_gpu(other), other.headroom_mb)
        for name, other in configs.items()
        if name != fleet.name and name in states
    ]


def _no(reason: str, detail: str) -> Decision:
    return Decision(None, reason, detail)


def _needed_mb(fleet: FleetConfig, gpu: str, neighbours: Sequence[Neighbour]) -> tuple[int, str]:
    """The headroom ``gpu`` must keep after the move: the largest of the mover's and of the
    fleets already there, and whose it is (for the detail)."""
    there = [n for n in neighbours if n.gpu == gpu and n.fleet != fleet.name]
    widest = max(there, key=lambda n: n.headroom_mb, default=None)
    if widest is None or widest.headroom_mb <= fleet.headroom_mb:
        return fleet.headroom_mb, f"{fleet.name}'s"
    return widest.headroom_mb, f"fleet {widest.fleet}'s"


def choose_move(
    fleet: FleetConfig,
    state: FleetState,
    now: float,
    *,
    free_by_gpu: Mapping[str, int | None] | None,
    neighbours: Sequence[Neighbour] = (),
    trigger: str = Trigger.ALERT,
    alert: AlertRef | None = None,
    vram_source: str | None = None,
) -> Decision:
    """A move of the current rung to the listed GPU with the most free VRAM where it fits with
    headroom, or why not (the caller then steps down).

    ``free_by_gpu`` is each listed GPU's free VRAM in bytes (None for a GPU without a sample;
    the whole mapping None: no live figures, ``vram_source`` says why).
    """
    if fleet.placement != "move_first":
        return _no("placement_stay", f"fleet {fleet.name} has placement {fleet.placement}")
    gate = refusal(fleet, state, now, trigger, alert)
    if gate is not None:
        return gate
    here = state.current_gpu(fleet)
    if free_by_gpu is None:
        why = f" ({vram_source})" if vram_source else ""
        return _no("no_vram_measurement", f"free VRAM per GPU unknown{why}: no move")
    rung = fleet.ladder[state.index]
    fitting: list[tuple[int, str, str]] = []
    refused: list[str] = []
    for gpu in fleet.listed_gpus:
        free = free_by_gpu.get(gpu)
        if gpu == here:
            continue
        if free is None:
            refused.append(f"GPU {gpu} has no free VRAM sample")
            continue
        headroom, whose = _needed_mb(fleet, gpu, neighbours)
        need = rung.size_mb + headroom
        line = (
            f"GPU {gpu}: {free // MIB} MiB free, {rung.name} needs {need} MiB "
            f"({rung.size_mb} MiB + {headroom} MiB, {whose} headroom)"
        )
        (fitting.append((free, gpu, line)) if free >= need * MIB else refused.append(line))
    source = f"; free VRAM from {vram_source}" if vram_source else ""
    if not fitting:
        others = "; ".join(refused) or "no other GPU is listed"
        return _no("no_gpu_fits", f"{rung.name} fits on no other listed GPU: {others}{source}")
    free, gpu, line = max(fitting, key=lambda f: (f[0], -fleet.listed_gpus.index(f[1])))
    return Decision(
        state.index,
        "move",
        f"{rung.name}: GPU {here} -> GPU {gpu}; {line}{source}",
        gpu=gpu,
    )
