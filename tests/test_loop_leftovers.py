"""A loop's containers name the process that made them; only a gone owner's are removed."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid

import docker
import pytest

from simulator.loop_setup import LOOP_LABEL, OWNER_LABEL, owner_gone, process_owner, remove_orphans
from tests.support.docker_env import run_busybox


def _gone_owner() -> str:
    """The owner value of a process that has ended."""
    proc = subprocess.Popen(["sleep", "60"])
    owner = process_owner(proc.pid)
    proc.kill()
    proc.wait()
    return owner


def test_an_owner_is_gone_only_when_its_process_has_ended_on_this_host() -> None:
    mine = process_owner()
    assert mine.startswith(f"{socket.gethostname()}:{os.getpid()}:")
    assert not owner_gone(mine)
    assert owner_gone(_gone_owner())
    # This PID, but a process started at another time: the PID was reused.
    assert owner_gone(f"{socket.gethostname()}:{os.getpid()}:1")
    # Another machine's process, or a value it cannot read: it cannot tell, so not gone.
    assert not owner_gone(f"elsewhere-{uuid.uuid4().hex[:6]}:1:1")
    assert not owner_gone("garbage")


@pytest.mark.docker
def test_only_the_demo_containers_of_a_gone_owner_are_removed(
    docker_client: docker.DockerClient, busybox_image: str
) -> None:
    gone = _gone_owner()

    def container(fleet: str, owner: str | None) -> str:
        labels = {LOOP_LABEL: fleet, **({OWNER_LABEL: owner} if owner else {})}
        return str(run_busybox(docker_client, "sleep 60", labels=labels).name)

    tag = uuid.uuid4().hex[:6]
    killed = container(f"demo-{tag}", gone)
    running = container(f"demo-{tag}b", process_owner())
    not_a_demo = container(f"demox-{tag}", gone)
    older = container(f"demo-{tag}c", None)  # made before owners were recorded

    removed, unknown = remove_orphans(docker_client, "demo")

    assert killed in removed
    assert {running, not_a_demo, older}.isdisjoint(removed)
    assert older in unknown
    left = {c.name for c in docker_client.containers.list(all=True)}
    assert killed not in left
    assert {running, not_a_demo, older} <= left
