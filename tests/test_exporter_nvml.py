"""GPU metrics through pynvml's real ctypes bindings, against the fake libnvidia-ml.so.1
(simulator/fake_nvml.c) and, where one exists, a real GPU."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from exporter.adapters.procfs import container_id_from_cgroup, container_id_of
from simulator import fake_nvml
from simulator.fake_nvml import MIB, FakeGpu, FakeNvmlState
from tests.support import docker_env
from tests.support.exporter_env import ExporterProcess, http_get, sample, samples_named, wait_for
from tests.support.nvml_gpu import real_nvml_problem

GIB = 1024 * MIB
TWO_GPUS = FakeNvmlState(
    gpus=(
        FakeGpu(
            name="NVIDIA GeForce RTX 3060",
            uuid="GPU-11111111-2222-3333-4444-555555555555",
            total=12 * GIB,
            reserved=300 * MIB,
            used=5 * GIB,
        ),
        FakeGpu(
            name="NVIDIA RTX A4000",
            uuid="GPU-66666666-7777-8888-9999-000000000000",
            total=16 * GIB,
            reserved=400 * MIB,
            used=1 * GIB,
        ),
    )
)


@pytest.fixture(scope="module")
def nvml_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_nvml.build(tmp_path_factory.mktemp("fake-nvml"))


Start = Callable[..., tuple[ExporterProcess, Path]]


@pytest.fixture
def start_exporter(nvml_lib: Path, tmp_path: Path) -> Iterator[Start]:
    """Start `serve` against the fake library with a given state (or no library at all)."""
    procs: list[ExporterProcess] = []

    def start(
        state: FakeNvmlState | None, *args: str, lib_dir: Path | None = None
    ) -> tuple[ExporterProcess, Path]:
        state_file = tmp_path / "nvml.state"
        if state is not None:
            state.write(state_file)
        env = fake_nvml.env_for(lib_dir or nvml_lib, state_file)
        args = args or ("--no-docker",)
        proc = ExporterProcess(list(args), log_path=tmp_path / "exporter.log", env=env)
        procs.append(proc)
        return proc.wait_ready(), state_file

    yield start
    for p in procs:
        with p:
            assert p.stop() == 0, p.log()


def gpu_labels(state: FakeNvmlState, i: int) -> dict[str, str]:
    g = state.gpus[i]
    return {"gpu": str(i), "uuid": g.uuid, "name": g.name}


def test_memory_of_every_gpu_from_memory_info_v2(start_exporter: Start) -> None:
    exporter, _ = start_exporter(TWO_GPUS)
    m = exporter.metrics()
    assert sample(m, "model_fleet_nvml_up") == 1
    for i, g in enumerate(TWO_GPUS.gpus):
        labels = gpu_labels(TWO_GPUS, i)
        assert sample(m, "model_fleet_gpu_memory_total_bytes", **labels) == g.total
        assert sample(m, "model_fleet_gpu_memory_used_bytes", **labels) == g.used
        assert sample(m, "model_fleet_gpu_memory_free_bytes", **labels) == (
            g.total - g.reserved - g.used
        )
    assert len(samples_named(m, "model_fleet_gpu_memory_total_bytes")) == 2


def test_values_follow_the_gpu_between_scrapes(start_exporter: Start) -> None:
    exporter, state_file = start_exporter(TWO_GPUS)
    labels = gpu_labels(TWO_GPUS, 0)
    assert sample(exporter.metrics(), "model_fleet_gpu_memory_used_bytes", **labels) == 5 * GIB
    fake_nvml.main(["set", str(state_file), "--gpu", "0", "--used-mib", "9000"])  # the demo's way
    assert sample(exporter.metrics(), "model_fleet_gpu_memory_used_bytes", **labels) == 9000 * MIB


def test_an_old_driver_without_memory_info_v2_falls_back_to_v1(start_exporter: Start) -> None:
    old = FakeNvmlState(
        gpus=TWO_GPUS.gpus,
        function_errors={"nvmlDeviceGetMemoryInfo_v2": 13},  # not found
    )
    exporter, _ = start_exporter(old)
    m = exporter.metrics()
    g = old.gpus[0]
    labels = gpu_labels(old, 0)
    assert sample(m, "model_fleet_nvml_up") == 1
    # version 1 counts the driver's reserved memory as used
    assert sample(m, "model_fleet_gpu_memory_used_bytes", **labels) == g.used + g.reserved
    assert sample(m, "model_fleet_gpu_memory_free_bytes", **labels) == g.total - g.reserved - g.used
    exporter.metrics()
    assert exporter.log().count("memory info v2 unavailable") == 1


@pytest.mark.docker
def test_without_a_driver_log_metrics_stay_and_nvml_recovers(
    start_exporter: Start, docker_client: Any
) -> None:
    absent = f"absent-{uuid.uuid4().hex[:8]}"
    no_driver = FakeNvmlState(gpus=TWO_GPUS.gpus, init_error=fake_nvml.NVML_ERROR_DRIVER_NOT_LOADED)
    exporter, state_file = start_exporter(
        no_driver,
        "--label",
        f"model-fleet.exporter-test={uuid.uuid4().hex}",  # watch nothing else
        "--container",
        f"{absent}=f1",
    )
    for _ in range(3):
        m = exporter.metrics()
        assert sample(m, "model_fleet_nvml_up") == 0
        assert samples_named(m, "model_fleet_gpu_memory_total_bytes") == {}
        labels = {"fleet": "f1", "container": absent}
        assert sample(m, "model_fleet_vram_errors_total", **labels, kind="oom") == 0
    assert exporter.log().count("GPU metrics unavailable") == 1
    assert "Driver Not Loaded" in exporter.log()

    TWO_GPUS.write(state_file)  # the driver is back
    m = exporter.metrics()
    assert sample(m, "model_fleet_nvml_up") == 1
    assert len(samples_named(m, "model_fleet_gpu_memory_total_bytes")) == 2
    assert exporter.log().count("NVML is available again") == 1


def test_a_lost_gpu_marks_nvml_down_until_it_is_back(start_exporter: Start) -> None:
    exporter, state_file = start_exporter(TWO_GPUS)
    assert sample(exporter.metrics(), "model_fleet_nvml_up") == 1
    gpus = list(TWO_GPUS.gpus)
    gpus[1] = replace(gpus[1], error=fake_nvml.NVML_ERROR_GPU_IS_LOST)
    FakeNvmlState(gpus=tuple(gpus)).write(state_file)
    for _ in range(3):
        assert sample(exporter.metrics(), "model_fleet_nvml_up") == 0
    assert exporter.log().count("GPU is lost") == 1
    TWO_GPUS.write(state_file)
    m = exporter.metrics()
    assert sample(m, "model_fleet_nvml_up") == 1
    assert len(samples_named(m, "model_fleet_gpu_memory_used_bytes")) == 2


def test_no_library_at_all_then_it_appears(
    start_exporter: Start, nvml_lib: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "no-nvml-here"
    empty.mkdir()
    exporter, _ = start_exporter(TWO_GPUS, lib_dir=empty)
    for _ in range(3):
        assert sample(exporter.metrics(), "model_fleet_nvml_up") == 0
    assert exporter.log().count("NVML Shared Library Not Found") == 1
    shutil.copy(nvml_lib / fake_nvml.LIB_NAME, empty / fake_nvml.LIB_NAME)  # driver installed
    assert sample(exporter.metrics(), "model_fleet_nvml_up") == 1


@pytest.mark.docker
def test_gpu_processes_are_named_by_their_container(
    start_exporter: Start, docker_client: Any, busybox_image: str
) -> None:
    c = docker_env.run_busybox(docker_client, "exec sleep 3600")
    c.reload()
    pid = int(c.attrs["State"]["Pid"])
    me = os.getpid()  # a host process: no container
    state = FakeNvmlState(
        gpus=(FakeGpu(used=3 * GIB, processes={pid: 2 * GIB}, graphics_processes={me: 5 * MIB}),)
    )
    # Docker on (it names the container), watching no container's log
    exporter, _ = start_exporter(state, "--label", f"model-fleet.exporter-test={uuid.uuid4().hex}")
    # names come from Docker once the watcher is connected (/healthz answers before that)
    wait_for(lambda: json.loads(http_get(exporter.url + "/healthz")[1])["docker_up"], "Docker")
    m = exporter.metrics()
    procs = samples_named(m, "model_fleet_gpu_process_memory_bytes")
    assert procs == {
        frozenset({"gpu": "0", "pid": str(pid), "container": c.name}.items()): 2 * GIB,
        frozenset({"gpu": "0", "pid": str(me), "container": ""}.items()): 5 * MIB,
    }
    c.remove(force=True)


def test_cgroup_files_name_the_innermost_container(tmp_path: Path) -> None:
    cid = "1ac36636792e88ce5f5d1ecc9fa83bcc83ea51d0a17e4ba688c3294f6e0fb709"
    outer = "f" * 64
    cases = {
        101: f"12:memory:/docker/{cid}\n0::/docker/{cid}\n",  # cgroup v1, cgroupfs
        102: f"0::/system.slice/docker-{cid}.scope\n",  # cgroup v2, systemd
        103: f"0::/docker/{outer}/docker/{cid}\n",  # Docker in Docker
        104: "0::/user.slice/user-1000.slice/session-2.scope\n",  # a host process
        105: "0::/system.slice/ollama.service\n",  # a systemd service: its unit
        106: "12:memory:/system.slice/ollama.service\n0::/system.slice/ollama.service/runner\n",
    }
    for pid, text in cases.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(text)
    found = [container_id_of(pid, str(tmp_path)) for pid in cases]
    assert found == [cid, cid, cid, None, "ollama.service", "ollama.service"]
    assert container_id_of(999, str(tmp_path)) is None  # gone, or another PID namespace
    assert container_id_from_cgroup("garbage") is None


@pytest.mark.gpu
def test_a_real_gpu(tmp_path: Path) -> None:
    problem = real_nvml_problem()
    if problem:
        pytest.skip(f"no usable NVIDIA GPU: {problem}")
    with ExporterProcess(["--no-docker"], log_path=tmp_path / "exporter.log") as exporter:
        exporter.wait_ready()
        m = exporter.metrics()
        assert sample(m, "model_fleet_nvml_up") == 1, exporter.log()
        totals = samples_named(m, "model_fleet_gpu_memory_total_bytes")
        assert totals and all(v > 0 for v in totals.values())
        for labels, total in totals.items():
            used = m[("model_fleet_gpu_memory_used_bytes", labels)]
            free = m[("model_fleet_gpu_memory_free_bytes", labels)]
            assert 0 <= used <= total and 0 <= free <= total
        started = time.monotonic()
        assert exporter.stop() == 0
        assert time.monotonic() - started < 5
