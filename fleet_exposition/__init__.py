"""The exposition side of the contract that both services share: prometheus_client only.

``fleet_contract`` stays free of every outside library; what both services need from
prometheus_client to publish the contract lives here, once. Neither service is imported.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from fleet_contract import version
from fleet_contract.labels import HOST_LABEL
from fleet_contract.metrics import BUILD_INFO, spec


class HostRegistry(CollectorRegistry):
    """A registry whose every sample carries the ``host`` label (fleet_contract.labels).

    The one place a service adds the label: the collectors and the contract's specs stay
    host-free, and a metric added later carries it without a change of its own.
    """

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host

    def collect(self) -> Iterator[Metric]:
        """Every family of the registered collectors, each sample labelled with the host."""
        for family in super().collect():
            yield with_host(family, self.host)


def with_host(family: Metric, host: str) -> Metric:
    """A copy of ``family`` whose samples carry ``host=<host>`` first."""
    labelled = Metric(family.name, family.documentation, family.type, family.unit)
    labelled.samples = [s._replace(labels={HOST_LABEL: host, **s.labels}) for s in family.samples]
    return labelled


class BuildInfoCollector(Collector):
    """``model_fleet_build_info{version,revision} 1``: which model-fleet answers (both services)."""

    def __init__(self) -> None:
        self._labels = [version.version(), version.revision()]  # fixed for the process

    def collect(self) -> Iterator[Metric]:
        """The one sample."""
        info = spec(BUILD_INFO)
        family = GaugeMetricFamily(info.name, info.help, labels=list(info.labels))
        family.add_metric(self._labels, 1)
        yield family
