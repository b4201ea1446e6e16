"""Live figures from Prometheus, read at the moment they are used: a decision or a status.

Three figures per fleet: the free VRAM of the fleet's GPU, the fleet's VRAM errors as the
downgrade alert counts them (the fleet's ``counting``: since the model server last served a
request, or since it started; the worst container) and the models
loaded in its model server with the bytes of each in VRAM and in system memory (offload).
Each figure carries the time of its sample (the scrape), so its age can be told, or the reason
it is missing: no Prometheus configured (``prometheus.url``), Prometheus did not answer, or it
has no sample. Callers then do what they did without the figure.

This module does the I/O (through :mod:`remediator.adapters.prometheus`);
:mod:`remediator.domain.decisions` gets the figures as arguments and stays pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from fleet_contract import metrics
from remediator.config import FleetConfig, strip_credentials
from remediator.domain.loggers import LIVE as log
from remediator.domain.records import json_form
from remediator.domain.state import FleetState
from remediator.ports.prometheus import PrometheusError, Querier, Sample
from remediator.switch.promql import (
    ERRORS_AGGREGATION,
    ERRORS_METRIC,
    FREE_VRAM_AGGREGATION,
    MODEL_MEMORY,
    MODELS_AGGREGATION,
    errors_selector,
    free_vram_by_gpu_selector,
    free_vram_selector,
    label_value,
    models_selector,
    sampled_at_query,
)

T = TypeVar("T")

SOURCE: Final = "prometheus"
LOCATIONS: Final = ("vram", "system")
NOT_CONFIGURED: Final = "no Prometheus configured (prometheus.url)"


@dataclass(frozen=True)
class Figure(Generic[T]):
    """One live figure: its value and when it was sampled, or why there is none."""

    value: T | None
    sampled_at: float | None = None
    problem: str | None = None

    def age(self, now: float) -> float | None:
        """Seconds since the sample (never below 0: clocks differ a little), or None."""
        return None if self.sampled_at is None else round(max(0.0, now - self.sampled_at), 1)


@dataclass(frozen=True)
class ModelMemory:
    """A loaded model and where its bytes are: VRAM, or system memory (offloaded to the CPU)."""

    name: str
    vram_bytes: int
    system_bytes: int

    @property
    def offloaded_fraction(self) -> float:
        """The share of the model's bytes outside VRAM (0: all on the GPU)."""
        total = self.vram_bytes + self.system_bytes
        return round(self.system_bytes / total, 4) if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """As the status shows it."""
        return {**json_form(self), "offloaded_fraction": self.offloaded_fraction}


@dataclass(frozen=True)
class LiveFigures:
    """One fleet's live figures, read at ``at``; ``url`` None when no Prometheus is configured.

    ``error`` is why Prometheus gave nothing (not configured, did not answer); a figure it had
    no sample of says so in its own ``problem``.
    """

    url: str | None
    at: float
    error: str | None
    free_vram_bytes: Figure[int]
    vram_errors: Figure[int]
    loaded_models: Figure[tuple[ModelMemory, ...]]
    # Free VRAM of each GPU a ``move_first`` fleet lists (remediator.domain.moves); read only for a
    # step down of such a fleet.
    free_by_gpu: Figure[dict[str, int]] = Figure(None, problem="not read")

    def origin(self, figure: Figure[Any]) -> str:
        """Where a figure came from, for a decision's detail: "Prometheus at URL, 3 s old"."""
        age = figure.age(self.at)
        old = f", sample {age:.0f} s old" if age is not None else ""
        return f"Prometheus at {self.url}{old}"

    def vram_note(self) -> str:
        """For a decision's detail: where the free VRAM figure came from, or why it is missing."""
        fig = self.free_vram_bytes
        return self.origin(fig) if fig.value is not None else str(fig.problem)


def unavailable(url: str | None, at: float, why: str) -> LiveFigures:
    """Figures that are all missing for one reason."""
    missing: Figure[Any] = Figure(None, problem=why)
    return LiveFigures(url, at, why, missing, missing, missing, missing)


def _one(
    prom: Querier,
    aggregation: str,
    selector: str,
    parse: Callable[[list[Sample]], T | None],
    what: str,
) -> Figure[T]:
    """Query a figure and its sample time; PrometheusError propagates (the round ends)."""
    value = parse(prom.query(f"{aggregation} ({selector})"))
    if value is None:
        return Figure(None, problem=f"Prometheus at {_shown(prom.url)} has no sample of {what}")
    stamps = prom.query(sampled_at_query(selector))
    return Figure(value, stamps[0].value if stamps else None)


def _count(samples: list[Sample]) -> int | None:
    return int(max(s.value for s in samples)) if samples else None


def _free(samples: list[Sample]) -> int | None:
    return max(0, int(min(s.value for s in samples))) if samples else None


def _free_each(samples: list[Sample]) -> dict[str, int] | None:
    """Free bytes by GPU index; a GPU without a sample is left out (the caller says so)."""
    out = {s.labels["gpu"]: max(0, int(s.value)) for s in samples if "gpu" in s.labels}
    return out or None


def _models(samples: list[Sample]) -> tuple[ModelMemory, ...] | None:
    if not samples:
        return None  # no series: the exporter does not poll the server (or it loaded nothing)
    memory: dict[str, dict[str, int]] = {}
    for s in samples:
        name, where = s.labels.get("model"), s.labels.get("location")
        if name and where in LOCATIONS:
            memory.setdefault(name, dict.fromkeys(LOCATIONS, 0))[where] = int(s.value)
    return tuple(
        ModelMemory(name, m["vram"], m["system"])
        for name, m in sorted(memory.items())
        if m["vram"] + m["system"] > 0  # unloaded by keep_alive: 0 bytes anywhere
    )


def _shown(url: str | None) -> str | None:
    return strip_credentials(url)


class LiveReader:
    """Reads a fleet's live figures through one Prometheus (None: none configured), only the
    series of ``host`` (None: whatever host)."""

    def __init__(
        self,
        prometheus: Querier | None,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
    ):
        self.prometheus = prometheus
        self._clock = clock
        self.host = host

    @property
    def url(self) -> str | None:
        """The Prometheus asked, without credentials; None when none is configured."""
        return _shown(self.prometheus.url) if self.prometheus is not None else None

    def read(
        self,
        fleet: FleetConfig,
        *,
        models: bool = True,
        gpu: str | None = None,
        placement: bool = False,
    ) -> LiveFigures:
        """The fleet's figures now; the first failure of Prometheus ends the round (one timeout,
        not six), and every figure then says why it is missing. ``models`` False: not the
        loaded models (a decision does not use them). ``gpu``: the GPU the fleet runs on now
        (after a move, not ``fleet.gpu``); ``placement``: also each listed GPU's free VRAM."""
        at = self._clock()
        prom = self.prometheus
        if prom is None:
            return unavailable(None, at, NOT_CONFIGURED)
        here = fleet.gpu if gpu is None else gpu
        what = f"GPU {here}'s free VRAM ({metrics.GPU_MEMORY_FREE})"
        errs = f"fleet {fleet.name}'s VRAM errors ({ERRORS_METRIC[fleet.counting]})"
        try:
            on = self.host
            free = _one(prom, FREE_VRAM_AGGREGATION, free_vram_selector(here, on), _free, what)
            errors = _one(
                prom,
                ERRORS_AGGREGATION,
                errors_selector(fleet.name, on, fleet.counting),
                _count,
                errs,
            )
            loaded: Figure[tuple[ModelMemory, ...]] = Figure(None, problem="not read")
            if models:
                what = f"fleet {fleet.name}'s loaded models ({MODEL_MEMORY})"
                selector = models_selector(fleet.name, on)
                loaded = _one(prom, MODELS_AGGREGATION, selector, _models, what)
                if loaded.value is None:  # no series: nothing loaded that the exporter saw
                    loaded = Figure((), problem=loaded.problem)
            each: Figure[dict[str, int]] = Figure(None, problem="not read")
            if placement:
                listed = f"the free VRAM of GPUs {', '.join(fleet.listed_gpus)}"
                selector = free_vram_by_gpu_selector(fleet.listed_gpus, on)
                each = _one(prom, FREE_VRAM_AGGREGATION, selector, _free_each, listed)
        except PrometheusError as exc:
            return unavailable(self.url, at, f"{exc}: no live figures")
        return LiveFigures(self.url, at, None, free, errors, loaded, each)

    def alert_firing(self, labels: Mapping[str, str]) -> bool | None:
        """Whether Prometheus evaluates the alert with these labels as firing now; None when it
        cannot tell (no Prometheus configured, no answer, no ``alertname``).

        ``ALERTS`` carries the rule's labels; an alert as Alertmanager delivers it carries the
        external labels too, so a series matches when each of its labels (but ``__name__`` and
        ``alertstate``) is one of the alert's.
        """
        name = labels.get("alertname")
        if self.prometheus is None or not name:
            return None
        try:
            series = self.prometheus.query(
                f'ALERTS{{alertname="{label_value(name)}",alertstate="firing"}}'
            )
        except PrometheusError as exc:
            log.warning("cannot ask Prometheus whether %s still fires: %s", name, exc)
            return None
        own = {"__name__", "alertstate"}
        return any(
            all(labels.get(k) == v for k, v in s.labels.items() if k not in own) for s in series
        )

    def read_fleets(
        self, fleets: Iterable[FleetConfig], gpus: Mapping[str, str] | None = None
    ) -> dict[str, LiveFigures]:
        """Each fleet's figures (of the GPU ``gpus`` names for it now, by default its configured
        one); once Prometheus has failed, the rest are not asked again."""
        out: dict[str, LiveFigures] = {}
        failed: LiveFigures | None = None
        for fleet in fleets:
            if failed is not None:
                out[fleet.name] = unavailable(failed.url, failed.at, str(failed.error))
                continue
            out[fleet.name] = self.read(fleet, gpu=(gpus or {}).get(fleet.name))
            if out[fleet.name].error is not None:
                failed = out[fleet.name]
        return out


def note_live_errors(fs: FleetState, live: LiveFigures | None) -> None:
    """Keep the live VRAM error count in the state: when Prometheus is away, the status then
    shows the last live count rather than only the last alert's."""
    if live is not None and live.vram_errors.value is not None:
        fs.vram_error_count = live.vram_errors.value
