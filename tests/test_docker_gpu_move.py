"""A move through a real Docker engine: the model server's container recreated with another
NVIDIA device request and the rest of its configuration, and put back when the copy will not
start. Without a GPU the engine creates a container with a device request (its HostConfig
reads back) but refuses to start it ("could not select device driver"): that refusal is the
rollback path here; the start on a GPU is the ``gpu``-marked test."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from remediator.adapters.docker_engine import DockerRuntime
from remediator.adapters.docker_errors import DockerError
from remediator.adapters.docker_gpu import (
    ASIDE_SUFFIX,
    copy_on_gpu,
    device_gpus,
    recreate_on_gpu,
    start_copy,
    take_back,
)
from tests.support.docker_env import RUN_ID, TEST_LABEL, run_busybox

SAME: tuple[str, ...] = ("Env", "Cmd", "Labels", "Image", "WorkingDir", "StopSignal")
SAME_HOST: tuple[str, ...] = ("RestartPolicy", "Binds", "Memory", "NetworkMode", "ShmSize")


@pytest.fixture
def network(docker_client: docker.DockerClient) -> Any:
    net = docker_client.networks.create(
        f"mf-move-{uuid.uuid4().hex[:8]}", labels={TEST_LABEL: RUN_ID}
    )
    yield net
    for c in docker_client.containers.list(all=True, filters={"network": net.name}):
        c.remove(force=True)
    net.remove()


def server(client: docker.DockerClient, busybox_image: str, network: Any, tmp: str) -> Any:
    """A model server stand-in as compose would run it: labels, env, a bind, a restart policy,
    a memory limit, a network with an alias; it runs without a GPU, as if on GPU 0."""
    labels = {"model-fleet.role": "ollama", "com.docker.compose.service": "ollama"}
    return run_busybox(
        client,
        "sleep 600",
        labels=labels,
        environment={"OLLAMA_KEEP_ALIVE": "5m"},
        volumes={tmp: {"bind": "/models", "mode": "rw"}},
        restart_policy={"Name": "unless-stopped"},
        mem_limit="64m",
        network=network.name,
        stop_signal="SIGTERM",
    )


def test_the_copy_names_gpu_1_and_keeps_the_rest_then_the_failed_start_puts_the_old_back(
    docker_client: docker.DockerClient, busybox_image: str, network: Any, tmp_path: Any
) -> None:
    old = server(docker_client, busybox_image, network, str(tmp_path))
    network.reload()
    before = docker_client.api.inspect_container(old.id)
    new_id = copy_on_gpu(docker_client, old.id, "1", stop_timeout=1)
    after = docker_client.api.inspect_container(new_id)
    assert device_gpus(after) == ["1"]
    assert after["HostConfig"]["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["1"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert after["Name"] == before["Name"]
    assert {k: after["Config"][k] for k in SAME} == {k: before["Config"][k] for k in SAME}
    assert {k: after["HostConfig"][k] for k in SAME_HOST} == {
        k: before["HostConfig"][k] for k in SAME_HOST
    }
    assert list(after["NetworkSettings"]["Networks"]) == [network.name]
    aside = docker_client.api.inspect_container(old.id)
    assert (aside["Name"], aside["State"]["Status"]) == (before["Name"] + ASIDE_SUFFIX, "exited")

    with pytest.raises(DockerError) as err:
        start_copy(docker_client, old.id, new_id)
    assert err.value.step == "move_start"
    assert "could not select device driver" in str(err.value)
    back = docker_client.api.inspect_container(old.id)
    assert (back["Name"], back["State"]["Status"]) == (before["Name"], "running")
    assert device_gpus(back) == []
    with pytest.raises(docker.errors.NotFound):
        docker_client.api.inspect_container(new_id)


def test_recreate_without_a_gpu_fails_at_the_start_and_leaves_the_server_running(
    docker_client: docker.DockerClient, busybox_image: str, network: Any, tmp_path: Any
) -> None:
    old = server(docker_client, busybox_image, network, str(tmp_path))
    with pytest.raises(DockerError, match="move_start"):
        recreate_on_gpu(docker_client, old.id, "1", stop_timeout=1)
    old.reload()
    assert (old.status, old.name.endswith(ASIDE_SUFFIX)) == ("running", False)
    take_back(docker_client, old.id, None)  # idempotent on a container already back
    old.reload()
    assert old.status == "running"


def host_gpus() -> list[str]:
    """The NVIDIA device nodes of this host, by index (none: no GPU, the test is skipped)."""
    nodes = [p.name for p in Path("/dev").glob("nvidia*")]
    return sorted(m.group(1) for n in nodes if (m := re.fullmatch(r"nvidia(\d+)", n)))


@pytest.mark.gpu
@pytest.mark.skipif(not host_gpus(), reason="no NVIDIA GPU on this host")
def test_the_nvidia_runtime_honours_the_moved_device_request(
    docker_client: docker.DockerClient, busybox_image: str, network: Any, tmp_path: Any
) -> None:
    """On a GPU host: the copy starts and sees only the GPU it was moved to (its device node);
    with two GPUs it moves to the second, so the first must be absent."""
    gpu = host_gpus()[-1]
    old = server(docker_client, busybox_image, network, str(tmp_path))
    new_id = recreate_on_gpu(docker_client, old.id, gpu, stop_timeout=1)
    out = docker_client.api.exec_start(docker_client.api.exec_create(new_id, ["ls", "/dev"]))
    nodes = set(re.findall(rb"nvidia\d+", out))
    assert nodes == {f"nvidia{gpu}".encode()}
    assert device_gpus(docker_client.api.inspect_container(new_id)) == [gpu]
    docker_client.api.remove_container(old.id, force=True)


def test_the_runtime_move_names_its_step_and_the_fleet_finds_its_server_again(
    docker_client: docker.DockerClient, busybox_image: str, network: Any, tmp_path: Any
) -> None:
    old = server(docker_client, busybox_image, network, str(tmp_path))
    runtime = DockerRuntime(docker_client)
    (ref,) = [r for r in runtime.find("default", "ollama") if r.id == old.id]
    with pytest.raises(DockerError) as err:
        runtime.move(ref, "1", stop_timeout=1)
    assert (err.value.step, err.value.container) == ("move_start", ref.name)
    assert [r.id for r in runtime.find("default", "ollama") if r.name == ref.name] == [old.id]
    assert runtime.state(ref).status == "running"
