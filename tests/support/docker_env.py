"""A real Docker engine for the tests, and small busybox images built FROM scratch.

No image can be pulled on the test machines, so every test image is built from the host's
static busybox. Containers are labelled ``model-fleet.test=<run id>`` so teardown removes
exactly what this test run created.
"""

from __future__ import annotations

import contextlib
import uuid

import docker
import docker.errors

from simulator.images import BUSYBOX_IMAGE, build_busybox_image

TEST_LABEL = "model-fleet.test"
RUN_ID = uuid.uuid4().hex[:12]


def docker_client() -> docker.DockerClient:
    """Return a client for the local engine, or raise with what to do."""
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        raise RuntimeError(
            f"no Docker engine answers ({exc}); scripts/bootstrap starts dockerd"
        ) from exc
    return client


def remove_test_containers(client: docker.DockerClient, run_id: str = RUN_ID) -> None:
    """Force-remove every container this test run created."""
    for container in client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={run_id}"}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def run_busybox(
    client: docker.DockerClient,
    script: str,
    *,
    name: str | None = None,
    labels: dict[str, str] | None = None,
    **kwargs: object,
) -> docker.models.containers.Container:
    """Start a detached busybox container running ``sh -c script``, labelled for cleanup."""
    all_labels = {TEST_LABEL: RUN_ID, **(labels or {})}
    return client.containers.run(
        BUSYBOX_IMAGE,
        ["sh", "-c", script],
        name=name or f"mf-test-{uuid.uuid4().hex[:10]}",
        labels=all_labels,
        detach=True,
        **kwargs,
    )


__all__ = [
    "BUSYBOX_IMAGE",
    "build_busybox_image",
    "docker_client",
    "remove_test_containers",
    "run_busybox",
]
