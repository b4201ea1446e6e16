"""The GPUs a fleet may run on (``gpus``) and whether it moves before it steps down
(``placement``).

``placement: stay`` (the default, the original system) keeps the model server on ``gpu``;
``move_first`` lets a VRAM alert first move it to another of ``gpus`` where the current model
fits (:mod:`remediator.domain.moves`). A move recreates the model server's Docker container with
another device request, so a model server that is a systemd unit cannot move: the parsing
refuses ``move_first`` there rather than accept a setting that would never act.
"""

from __future__ import annotations

from typing import Any, Final

from remediator.config.model import GPU_PLACEMENTS, ServerSettings
from remediator.config.reader import Reader, key_path

__all__ = ["parse_gpus"]

# Two GPUs at least: with one there is nowhere to move to.
MOVE_MIN_GPUS: Final = 2


def _gpu_index(value: Any) -> str | None:
    """An NVML index as the metrics' ``gpu`` label writes it ("0"), or None if it is none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.isdigit():
        return str(int(value))
    return None


def parse_gpus(
    r: Reader, m: dict[str, Any], where: str, gpu: str, server: ServerSettings
) -> tuple[tuple[str, ...], str]:
    """``(gpus, placement)`` of one fleet; ``gpus`` defaults to ``(gpu,)``."""
    raw = m.get("gpus")
    gpus: tuple[str, ...] = (gpu,)
    if raw is not None:
        indexes = [_gpu_index(v) for v in raw] if isinstance(raw, list) else [None]
        if not raw or None in indexes:
            raise r.fail(
                key_path(where, "gpus"),
                f"must be a list of GPU indexes (NVML: 0, 1, ...), got {raw!r}",
            )
        gpus = tuple(dict.fromkeys(str(i) for i in indexes))
        if gpu not in gpus:
            raise r.fail(
                key_path(where, "gpus"),
                f"must contain the fleet's gpu {gpu!r} (where its model server starts), "
                f"got {list(gpus)}",
            )
    placement = r.string(m, "placement", where, "stay")
    if placement not in GPU_PLACEMENTS:
        raise r.fail(
            key_path(where, "placement"),
            f"must be one of {', '.join(GPU_PLACEMENTS)}, got {placement!r}",
        )
    if placement == "move_first" and len(gpus) < MOVE_MIN_GPUS:
        raise r.fail(
            key_path(where, "placement"),
            f"move_first needs gpus with at least {MOVE_MIN_GPUS} GPUs to move between, "
            f"got {list(gpus)}",
        )
    if placement == "move_first" and server.runtime != "docker":
        raise r.fail(
            key_path(where, "placement"),
            f"move_first recreates the model server's Docker container on another GPU; "
            f"{server.unit} is a systemd unit (server.runtime: systemd), which is not moved: "
            "use placement: stay",
        )
    return gpus, placement
