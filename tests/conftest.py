"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import docker_env


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    """A client for the real local Docker engine; fails (never skips) when none runs."""
    try:
        client = docker_env.docker_client()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield client
    docker_env.remove_test_containers(client)
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: object) -> str:
    """Tag of a FROM-scratch busybox image, built once per test session."""
    return docker_env.build_busybox_image(docker_client)  # type: ignore[arg-type]
