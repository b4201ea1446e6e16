"""The Prometheus port: what live figures are read through (an instant query), its samples and
its one error. :class:`remediator.adapters.prometheus.PrometheusAPI` implements it over HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class PrometheusError(RuntimeError):
    """Prometheus did not answer, or its answer was not an instant vector; says which."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector: its labels and its value."""

    labels: dict[str, str]
    value: float


class Querier(Protocol):
    """What the figures are read through: PrometheusAPI, or a test's stand-in."""

    url: str

    def query(self, expr: str) -> list[Sample]:
        """An instant query's samples; PrometheusError when Prometheus does not answer."""
        ...
