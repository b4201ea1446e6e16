"""Log rotation trials: a busybox model server prints numbered OOM lines under a rotating log
driver while the exporter's log watcher (in this process) follows it; the counts come back.

Used by tests/test_exporter_rotation.py and bench/bench_rotation.py. ``paced`` prints a line
about every 1.5 ms (about 650 lines/s on the test machine), ``burst`` as fast as the shell can
(tens of thousands of lines/s).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from exporter.adapters.docker_logs import DockerLogSource
from exporter.classifier import LogClassifier
from exporter.config import ContainerSelection
from exporter.metrics import LogStore, SeriesSnapshot
from exporter.watcher import LogWatcher
from simulator.images import BUSYBOX_IMAGE
from simulator.loop_setup import OOM_LINE

Mode = Literal["paced", "burst"]
TRIAL_LABEL = "model-fleet.rotation-trial"


@dataclass(frozen=True)
class RotationResult:
    """One trial: lines written, what the exporter counted and reported, what Docker kept."""

    mode: Mode
    log_opts: str
    written: int
    counted: int  # model_fleet_log_lines_total
    error_lines: int  # model_fleet_vram_error_lines_total{kind="oom"}: every line is one
    recovered: int  # model_fleet_log_lines_recovered_total
    gaps: int  # model_fleet_log_gaps_total
    retained: int  # lines Docker still holds when the container ended
    seconds: float

    @property
    def exact(self) -> bool:
        """Every line written counted once, nothing reported lost."""
        return self.counted == self.written == self.error_lines and self.gaps == 0

    @property
    def accounted(self) -> bool:
        """Never more counted than written, and any shortfall reported as a gap."""
        return self.counted <= self.written and (self.counted == self.written or self.gaps > 0)


def printer(mode: Mode, lines: int, pad: int) -> str:
    """The container's script: numbered lines of ``pad`` + about 110 bytes, then exit."""
    pause = "usleep 500; " if mode == "paced" else ""
    text = f"n=$i {'x' * pad} {OOM_LINE}"
    return (
        f'sleep 1; i=0; while [ $i -lt {lines} ]; do echo "{text}"; {pause}i=$((i+1)); done; '
        "sleep 0.5"
    )


def _series(store: LogStore, name: str) -> SeriesSnapshot | None:
    return next((s for s in store.snapshot() if s.container == name), None)


def rotation_trial(
    client: Any,
    mode: Mode,
    lines: int,
    *,
    log_opts: Mapping[str, str],
    driver: str = "json-file",
    pad: int = 400,
    labels: Mapping[str, str] | None = None,
    image: str = BUSYBOX_IMAGE,
    timeout: float = 90.0,
) -> RotationResult:
    """Run one trial; the container is removed afterwards."""
    tag = uuid.uuid4().hex[:10]
    classifier = LogClassifier()
    store = LogStore(classifier.kinds)
    watcher = LogWatcher(
        ContainerSelection(labels={TRIAL_LABEL: tag}, names={}),
        classifier,
        store,
        DockerLogSource(),
        incident_window_seconds=0,
    )
    watcher.start()
    started = time.monotonic()
    container = None
    try:
        if not watcher.ready.wait(20):
            raise RuntimeError("the log watcher did not connect to Docker")
        container = client.containers.run(
            image,
            ["sh", "-c", printer(mode, lines, pad)],
            name=f"mf-rotation-{tag}",
            labels={**(labels or {}), TRIAL_LABEL: tag},
            log_config={"type": driver, "config": dict(log_opts)},
            detach=True,
        )
        container.wait(timeout=timeout)
        # the follower reads the run's end, then reads it again once (a check): wait until
        # the counters stay still for a second
        last: tuple[int, int, int] | None = None
        still = 0
        deadline = time.monotonic() + timeout
        while still < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
            s = _series(store, container.name)
            now = None if s is None else (s.lines, s.recovered, s.gaps)
            still = still + 1 if now is not None and now == last else 0
            last = now
        s = _series(store, container.name)
        if s is None:
            raise RuntimeError(f"{container.name} was never followed")
        kept = client.api.logs(container.id, stdout=True, stderr=True).count(b"\n")
        return RotationResult(
            mode=mode,
            log_opts=",".join(f"{k}={v}" for k, v in log_opts.items()),
            written=lines,
            counted=s.lines,
            error_lines=s.error_lines.get("oom", 0),
            recovered=s.recovered,
            gaps=s.gaps,
            retained=kept,
            seconds=time.monotonic() - started,
        )
    finally:
        watcher.stop()
        if container is not None:
            container.remove(force=True)
