"""The PromQL the remediator asks Prometheus: the selectors of the contract's series for one
fleet or GPU on one host, and the sample-time query that tells a figure's age."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from fleet_contract import metrics
from fleet_contract.labels import HOST_LABEL

__all__ = [
    "ERRORS_AGGREGATION",
    "ERRORS_METRIC",
    "FREE_VRAM_AGGREGATION",
    "MODELS_AGGREGATION",
    "MODEL_MEMORY",
    "errors_selector",
    "free_vram_by_gpu_selector",
    "free_vram_selector",
    "label_value",
    "models_selector",
    "on_host",
    "sampled_at_query",
]

# The exporter's offload detection (/api/ps): bytes of each loaded model per location.
MODEL_MEMORY: Final = metrics.MODEL_MEMORY


def label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def on_host(host: str | None) -> str:
    """The host matcher: one Prometheus may scrape many GPU hosts, and a remediator reads only
    its own host's series (a GPU "0" or a fleet name may exist on every host)."""
    return f'{HOST_LABEL}="{label_value(host)}", ' if host is not None else ""


def free_vram_selector(gpu: str, host: str | None = None) -> str:
    """The series of the GPU's free VRAM (NVML index ``gpu``) on ``host``."""
    return f'{metrics.GPU_MEMORY_FREE}{{{on_host(host)}gpu="{label_value(gpu)}"}}'


# The exporter's count behind each fleets.*.counting: the one ModelFleetVRAMErrors compares.
ERRORS_METRIC: Final[Mapping[str, str]] = {
    "consecutive": metrics.VRAM_ERRORS_CONSECUTIVE,
    "since_start": metrics.VRAM_ERRORS_SINCE_START,
}


def free_vram_by_gpu_selector(gpus: Iterable[str], host: str | None = None) -> str:
    """The series of the free VRAM of each of ``gpus`` on ``host`` (a fleet's listed GPUs)."""
    alternatives = "|".join(label_value(g) for g in gpus)
    return f'{metrics.GPU_MEMORY_FREE}{{{on_host(host)}gpu=~"{alternatives}"}}'


def errors_selector(fleet: str, host: str | None = None, counting: str = "consecutive") -> str:
    """The series of the fleet's VRAM errors as ``counting`` counts them, per container."""
    return f'{ERRORS_METRIC[counting]}{{{on_host(host)}fleet="{label_value(fleet)}"}}'


def models_selector(fleet: str, host: str | None = None) -> str:
    """The series of the bytes of each model the fleet's server has loaded, by location."""
    return f'{MODEL_MEMORY}{{{on_host(host)}fleet="{label_value(fleet)}"}}'


# How each figure folds its series: two exporters scraping one GPU give the smaller free
# figure; the fleet's errors are its worst container's, as the downgrade alert reads them.
FREE_VRAM_AGGREGATION: Final = "min by (gpu)"
ERRORS_AGGREGATION: Final = "max by (fleet)"
MODELS_AGGREGATION: Final = "max by (model, location)"


def sampled_at_query(selector: str) -> str:
    """When the oldest sample of ``selector`` was scraped (epoch seconds).

    ``timestamp()`` of a selector is the sample's own time, not the query's: the figure's age.
    """
    return f"min(timestamp({selector}))"
