"""A move in the whole loop's timeline (simulator/loop.py: the exporter on the fake NVML, real
Prometheus and Alertmanager with the shipped config and rules, the remediator under gunicorn,
busybox containers, the Ollama stand-in), on a second Docker engine whose dockerd finds a
stand-in for the NVIDIA Container Toolkit's hook on its PATH (simulator/nvidia_hook.py): it
then starts a container with an NVIDIA device request without a GPU, as a GPU host's engine
would, and the hook records the GPUs each start was given.

Two simulated GPUs of 4096 MiB; the fleet (``gpus: [0, 1]``, ``placement: move_first``) starts on
GPU 0, where others leave too little room for its model. Three VRAM errors: the alert fires and
the fleet moves to GPU 1, same model, the app untouched. Then GPU 1 fills up too: three more
errors step the fleet down, since no listed GPU has room. Skipped only where no second dockerd
can run here (not root, no dockerd).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import pytest

from simulator import engines
from simulator.loop import Loop, LoopOptions, sample_values, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

# Shipped intervals: 2 s exporter scrape + 2 s evaluation + 1 s group_wait, plus the move.
ALERT_TIMEOUT = 45.0
MIB = 1024 * 1024
GPU_MIB = 4096  # each simulated GPU
MODEL = "llama3.2:3b"  # 2048 MiB; with the default 512 MiB headroom a GPU needs 2560 MiB free
FULL_MIB = 3072  # used by others: 1024 MiB left, llama3.2:3b does not fit
ROOM_MIB = 1024  # used by others: 3072 MiB left, it fits with its headroom


@dataclass
class MoveBed:
    """The loop on the second engine, and the timings the tests measured."""

    loop: Loop
    engine: engines.SecondEngine
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoveBed]:
    reason = engines.why_not_available()
    if reason:
        pytest.skip(f"the move needs a second dockerd with the stand-in NVIDIA hook: {reason}")
    with engines.second_engine(gpu_hook=True) as engine:
        # The loop's usual 5 s cooldown; the second round waits it out.
        options = LoopOptions(
            docker_host=engine.docker_host,
            gpu_total_mib=GPU_MIB,
            gpus_other_used_mib=(FULL_MIB, ROOM_MIB),
            move_first=True,
        )
        with Loop(tmp_path_factory.mktemp("e2e-move"), options) as loop:
            yield MoveBed(loop, engine)


def requested_gpus(container: Any) -> list[str]:
    """The GPUs a container's NVIDIA device requests name, as its engine keeps them."""
    requests = container.attrs["HostConfig"].get("DeviceRequests") or []
    return [i for r in requests if r["Driver"] == "nvidia" for i in r["DeviceIDs"]]


def free_mib_in_prometheus(loop: Loop, gpu: str) -> float | None:
    """GPU ``gpu``'s free VRAM as Prometheus has it now (what the remediator reads), in MiB."""
    assert loop.prometheus is not None
    found = loop.prometheus.query(f'model_fleet_gpu_memory_free_bytes{{gpu="{gpu}"}}')
    return float(found[0]["value"][1]) / MIB if found else None


def wait_for_free(loop: Loop, gpu: str, mib: int) -> None:
    wait_until(
        lambda: free_mib_in_prometheus(loop, gpu) == mib,
        30,
        f"Prometheus: GPU {gpu} {mib} MiB free",
    )


def switch_lines(loop: Loop, to: str) -> list[str]:
    """The remediator's log lines of its switches (a move too) to model ``to``."""
    lines = loop.log("remediator").splitlines()
    return [line for line in lines if f": switching {MODEL} -> {to} (" in line]


def wait_out_cooldown(loop: Loop) -> None:
    """Until the last switch's cooldown has passed (the remediator's clock is this machine's)."""
    ends = loop.history()[-1]["time"] + loop.options.cooldown_seconds
    wait_until(lambda: time.time() > ends, loop.options.cooldown_seconds + 5, "the cooldown")


def three_errors_until(bed: MoveBed, switches: int, what: str) -> None:
    """Three VRAM errors, then wait until the history holds ``switches`` switches; the time
    from the third error to the commit is kept in ``bed.timings``."""
    loop = bed.loop
    loop.emit_errors(3)
    third = time.monotonic()
    wait_until(
        lambda: len(loop.history()) >= switches,
        ALERT_TIMEOUT,
        f"the {what}",
        interval=0.2,
        diagnose=loop.diagnostics,
    )
    bed.timings[f"third error -> {what} committed"] = time.monotonic() - third


def test_three_errors_move_the_fleet_to_the_gpu_with_room_keeping_its_model(bed: MoveBed) -> None:
    loop, engine = bed.loop, bed.engine
    before = loop.server
    assert requested_gpus(before) == ["0"]
    assert [s.visible_devices for s in engine.hook_starts() if s.container_id == before.id] == ["0"]
    app_config, app_started = loop.app_env.read_text(), loop.started_at(loop.app)
    # What the decision will read: GPU 0 too full for the model, GPU 1 with room.
    wait_for_free(loop, "0", GPU_MIB - FULL_MIB)
    wait_for_free(loop, "1", GPU_MIB - ROOM_MIB)

    three_errors_until(bed, 1, "move")
    [record] = loop.history()
    assert (record.get("action"), record.get("from_gpu"), record.get("to_gpu")) == (
        "move",
        "0",
        "1",
    )
    assert (record["from"], record["to"], record["trigger"]) == (MODEL, MODEL, "alert")
    assert record["alert_key"]
    # Why: GPU 1's free VRAM as Prometheus had it, enough for the model and its headroom.
    [line] = switch_lines(loop, MODEL)
    assert loop.prometheus is not None
    assert "reason=move): llama3.2:3b: GPU 0 -> GPU 1; GPU 1: 3072 MiB free, " in line
    assert f"free VRAM from Prometheus at {loop.prometheus.url}" in line

    # The same model; the app's config and the app itself untouched.
    assert loop.current_model_in_config() == MODEL
    assert loop.app_env.read_text() == app_config
    assert loop.started_at(loop.app) == app_started
    # The model server: a new container under the same name, given GPU 1, started with it.
    after = loop.server
    assert (after.id != before.id, after.name, after.status) == (True, before.name, "running")
    assert requested_gpus(after) == ["1"]
    starts = [s.visible_devices for s in engine.hook_starts() if s.container_id == after.id]
    assert starts == ["1"]
    with pytest.raises(docker.errors.NotFound):  # the old one is gone once the copy served
        loop.docker.containers.get(before.id)
    state = loop.status()
    assert (state["gpu"], state["gpus"], state["current_model"]["name"]) == ("1", ["0", "1"], MODEL)
    gpu_info = loop.remediator_metrics()
    assert sample_values(gpu_info, "model_fleet_fleet_gpu_info", fleet=loop.fleet, gpu="1") == [1]
    assert sample_values(gpu_info, "model_fleet_fleet_gpu_info", fleet=loop.fleet, gpu="0") == []

    # The copy starts from 0 errors; the alert resolves.
    wait_until(lambda: loop.errors_since_start() == 0, 15, "errors since start back to 0")
    wait_until(
        lambda: not loop.firing("ModelFleetVRAMErrors"),
        ALERT_TIMEOUT,
        "the alert to resolve",
        diagnose=loop.diagnostics,
    )
    # NVML shows the model server's process on GPU 1 now, its model loaded there.
    loop.set_vram()
    wait_until(
        lambda: (
            sample_values(
                loop.exporter_metrics(),
                "model_fleet_gpu_process_memory_bytes",
                gpu="1",
                container=after.name,
            )
            == [2048 * MIB]
        ),
        15,
        "the exporter: the model server's memory on GPU 1",
    )
    # No step down follows: past the cooldown no alert waits to be judged again.
    wait_out_cooldown(loop)
    assert len(loop.history()) == 1
    assert loop.status()["deferred_alerts"] == []
    assert loop.current_model_in_config() == MODEL


def test_with_no_listed_gpu_that_fits_three_more_errors_step_the_fleet_down(bed: MoveBed) -> None:
    loop = bed.loop
    assert loop.status()["gpu"] == "1"  # where the first test moved it
    loop.set_vram(FULL_MIB, gpu=1)
    wait_for_free(loop, "1", GPU_MIB - FULL_MIB)
    wait_for_free(loop, "0", GPU_MIB - FULL_MIB)
    wait_out_cooldown(loop)
    server = loop.server
    server_started = loop.started_at(server)

    three_errors_until(bed, 2, "step down")
    record = loop.history()[-1]
    assert "action" not in record  # a switch of model, not a move
    assert (record["from"], record["to"], record["direction"], record["trigger"]) == (
        MODEL,
        "phi3:mini",
        "down",
        "alert",
    )
    assert loop.current_model_in_config() == "phi3:mini"
    # Why it did not move, by the free VRAM in Prometheus: the decision as the remediator logs it.
    [line] = switch_lines(loop, "phi3:mini")
    assert "reason=next): llama3.2:3b -> phi3:mini (next rung); no move (no_gpu_fits): " in line
    assert "fits on no other listed GPU: GPU 0: 1024 MiB free, llama3.2:3b needs 2560 MiB" in line
    # A step down restarts the model server where it runs: the same container, on GPU 1.
    wait_until(
        lambda: loop.started_at(loop.server) > server_started, 30, "the model server restart"
    )
    assert loop.server.id == server.id
    assert requested_gpus(loop.server) == ["1"]
    wait_until(lambda: loop.app_log_tail() == "app running phi3:mini", 30, "the app on phi3:mini")
    assert loop.status()["gpu"] == "1"
    wait_until(lambda: loop.errors_since_start() == 0, 15, "errors since start back to 0")
    wait_until(
        lambda: not loop.firing("ModelFleetVRAMErrors"), ALERT_TIMEOUT, "the alert to resolve"
    )
    print(f"timings: { {k: round(v, 1) for k, v in bed.timings.items()} }")


def test_the_loop_and_the_engine_leave_nothing_behind(bed: MoveBed) -> None:
    loop, engine = bed.loop, bed.engine
    procs = list(loop.procs.values())
    loop.close()
    engine.stop()
    assert engine.leftovers() == []
    assert all(p.poll() is not None for p in procs)
