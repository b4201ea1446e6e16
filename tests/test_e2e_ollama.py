"""The whole loop on Ollama's real texts: the model server stand-in prints the failed load of
the new engine (no CUDA text: "memory layout cannot be allocated", then "Load failed") and the
fleet steps down; errors between served requests never do under ``counting: consecutive``.

Real exporter, Prometheus (the shipped rules), Alertmanager and remediator, and the busybox
model server of simulator.loop_setup with ``$SIM_OLLAMA=0.13.5/new`` (simulator.ollama_corpus).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from simulator import ollama_corpus
from simulator.loop import Loop, LoopOptions, sample_values, wait_until
from simulator.loop_setup import LOAD_FAILED_LINE, OOM_LINE

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

ALERT_TIMEOUT = 45.0
SERVED = '| 200 |    1.234567s |      172.17.0.1 | POST     "/api/chat"'


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ollama_corpus.ENV, "0.13.5/new")
        options = LoopOptions(simulate_vram=True, gpu_total_mib=4096, other_used_mib=1024)
        with Loop(tmp_path_factory.mktemp("e2e-ollama"), options) as running:
            yield running


def _consecutive(loop: Loop) -> float:
    values = sample_values(
        loop.exporter_metrics(), "model_fleet_vram_errors_consecutive", fleet=loop.fleet
    )
    return max(values) if values else -1.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_errors_between_served_requests_never_step_the_fleet_down(loop: Loop) -> None:
    # error, served, error, served, ... each 2.5 s apart (past the incident window): four
    # errors since the start, never two in a row.
    for _ in range(4):
        loop.emit([OOM_LINE, f"time={_now()} {LOAD_FAILED_LINE}"])
        time.sleep(2.5)
        loop.emit([f"[GIN] {datetime.now(UTC):%Y/%m/%d - %H:%M:%S} {SERVED}"])
        time.sleep(2.5)
    wait_until(lambda: loop.errors_since_start() >= 4, 15, "the exporter to count 4 errors")
    assert _consecutive(loop) == 0
    time.sleep(8)  # several evaluations of the rule (every 2 s) and an Alertmanager flush
    assert loop.firing("ModelFleetVRAMErrors") == []
    assert loop.history() == []
    status = loop.status()
    assert (status["counting"], status["current_model"]["name"]) == ("consecutive", "llama3.2:3b")


def test_the_new_engines_failed_loads_step_the_fleet_down(loop: Loop) -> None:
    # Others take VRAM: llama3.2:3b (2048 MiB) no longer fits 4096 - 2600 MiB, and the
    # server's load fails every 2.5 s as Ollama 0.13.5's new engine prints it.
    loop.set_vram(2600)
    wait_until(
        lambda: len(loop.history()) >= 1,
        ALERT_TIMEOUT + 30,
        "the first switch",
        interval=0.2,
        diagnose=loop.diagnostics,
    )
    record = loop.history()[0]
    assert (record["from"], record["direction"], record["trigger"]) == (
        "llama3.2:3b",
        "down",
        "alert",
    )
    text = loop.server.logs().decode() if loop.server is not None else ""
    assert "memory layout cannot be allocated" in text  # the new engine: no CUDA text of its own
    lines = sample_values(
        loop.exporter_metrics(), "model_fleet_vram_error_lines_total", fleet=loop.fleet, kind="oom"
    )
    assert lines and max(lines) >= 2  # the WARN and "Load failed" of one load: one error
