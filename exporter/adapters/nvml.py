"""GPU memory from NVML, read when Prometheus scrapes (no polling thread).

Without NVML (no library, no driver, a lost GPU) the collector reports
``model_fleet_nvml_up 0`` and nothing else, logs the cause once (again only when the cause
changes), and initialises NVML afresh at the next scrape, so it recovers by itself.

Only this module talks to NVML.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.adapters.procfs import container_id_of
from exporter.metrics import gauge
from fleet_contract import metrics

log = logging.getLogger(__name__)

# NVML return codes (nvml.h) that mean "this call is not available here", as opposed to
# "NVML is not usable": NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND, ARGUMENT_VERSION_MISMATCH.
_UNAVAILABLE: Final = frozenset({3, 4, 13, 25})

ContainerNamer = Callable[[str], "str | None"]


@dataclass(frozen=True)
class GpuReading:
    """One GPU's memory at one scrape; ``processes`` maps PID to bytes used on this GPU."""

    index: str
    name: str
    uuid: str
    total: int
    used: int
    free: int
    processes: dict[int, int] = field(default_factory=dict)


class NvmlDown(RuntimeError):
    """NVML cannot be used right now; the message says why."""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _load_pynvml() -> Any:
    import pynvml  # imported here so that a broken install only costs the GPU metrics

    return pynvml


class NvmlCollector(Collector):
    """Exports GPU and per-process memory; ``model_fleet_nvml_up`` says whether NVML answered."""

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        container_name: ContainerNamer | None = None,
        nvml: Any = None,
    ) -> None:
        self._nvml = nvml
        self._proc_root = proc_root
        self._container_name = container_name or (lambda _cid: None)
        self._lock = threading.Lock()
        self._initialized = False
        self._memory_v2 = True
        self._down_reason: str | None = None
        self._noted: set[str] = set()
        self.up = False

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Read every GPU now and return the metric families."""
        up = gauge(metrics.NVML_UP)
        with self._lock:
            try:
                gpus = self.read()
            except NvmlDown as exc:
                self._went_down(str(exc))
                up.add_metric([], 0)
                return [up]
            self._came_up(len(gpus))
        up.add_metric([], 1)
        return [*self._families(gpus), up]

    def read(self) -> list[GpuReading]:
        """Read every GPU; raise NvmlDown when NVML cannot be used."""
        try:
            nv = self._nvml or _load_pynvml()
        except ImportError as exc:
            raise NvmlDown(f"pynvml is not installed: {exc}") from exc
        self._nvml = nv
        if not self._initialized:
            try:
                nv.nvmlInit()
            except nv.NVMLError as exc:
                raise NvmlDown(f"NVML initialisation failed: {exc}") from exc
            self._initialized = True
            self._memory_v2 = hasattr(nv, "nvmlMemory_v2")
        try:
            gpus = []
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                total, used, free = self._memory(nv, handle)
                gpus.append(
                    GpuReading(
                        index=str(i),
                        name=_text(nv.nvmlDeviceGetName(handle)),
                        uuid=_text(nv.nvmlDeviceGetUUID(handle)),
                        total=total,
                        used=used,
                        free=free,
                        processes=self._processes(nv, handle, i),
                    )
                )
            return gpus
        except nv.NVMLError as exc:
            self._shutdown(nv)
            raise NvmlDown(f"NVML query failed: {exc}") from exc

    def _memory(self, nv: Any, handle: Any) -> tuple[int, int, int]:
        if self._memory_v2:
            try:
                m = nv.nvmlDeviceGetMemoryInfo(handle, version=nv.nvmlMemory_v2)
                return int(m.total), int(m.used), int(m.free)
            except nv.NVMLError as exc:
                if exc.value not in _UNAVAILABLE:
                    raise
                # old drivers: version 1, whose "used" includes the driver's reserved memory
                self._memory_v2 = False
                self._note("memory-v1", f"NVML memory info v2 unavailable ({exc}); using v1")
        m = nv.nvmlDeviceGetMemoryInfo(handle)
        return int(m.total), int(m.used), int(m.free)

    def _processes(self, nv: Any, handle: Any, index: int) -> dict[int, int]:
        procs: dict[int, int] = {}
        for kind in ("Compute", "Graphics"):
            items = None
            for version in ("_v3", "_v2"):
                fn = getattr(nv, f"nvmlDeviceGet{kind}RunningProcesses{version}", None)
                if fn is None:
                    continue
                try:
                    items = fn(handle)
                    break
                except nv.NVMLError as exc:
                    if exc.value not in _UNAVAILABLE:
                        raise
                    self._note(
                        f"procs-{kind}{version}-{index}",
                        f"GPU {index}: {kind} processes unavailable through NVML ({exc})",
                    )
            for p in items or ():
                if p.usedGpuMemory is None:  # NVML cannot tell (e.g. Windows WDDM)
                    continue
                pid = int(p.pid)
                procs[pid] = max(procs.get(pid, 0), int(p.usedGpuMemory))
        return procs

    def _shutdown(self, nv: Any) -> None:
        self._initialized = False
        with contextlib.suppress(nv.NVMLError):  # unusable anyway: the next scrape starts afresh
            nv.nvmlShutdown()

    def _went_down(self, reason: str) -> None:
        self.up = False
        if reason != self._down_reason:
            log.warning(
                "GPU metrics unavailable: %s (log metrics continue; retrying at each scrape)",
                reason,
            )
            self._down_reason = reason

    def _came_up(self, count: int) -> None:
        if not self.up:
            if self._down_reason is not None:
                log.info("NVML is available again: %d GPU(s)", count)
            else:
                log.info("NVML is available: %d GPU(s)", count)
        self._down_reason = None
        self.up = True

    def _note(self, key: str, message: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            log.info("%s", message)

    def _families(self, gpus: list[GpuReading]) -> list[GaugeMetricFamily]:
        total = gauge(metrics.GPU_MEMORY_TOTAL)
        used = gauge(metrics.GPU_MEMORY_USED)
        free = gauge(metrics.GPU_MEMORY_FREE)
        procs = gauge(metrics.GPU_PROCESS_MEMORY)
        names: dict[int, str] = {}
        for g in gpus:
            values = [g.index, g.uuid, g.name]
            total.add_metric(values, g.total)
            used.add_metric(values, g.used)
            free.add_metric(values, g.free)
            for pid, nbytes in sorted(g.processes.items()):
                if pid not in names:
                    names[pid] = self._container_of(pid)
                procs.add_metric([g.index, str(pid), names[pid]], nbytes)
        return [total, used, free, procs]

    def _container_of(self, pid: int) -> str:
        cid = container_id_of(pid, self._proc_root)
        if cid is None:
            return ""
        return self._container_name(cid) or cid[:12]
