"""The Docker adapter on the real engine, with FROM-scratch busybox containers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from remediator.adapters.docker_engine import FLEET_LABEL, ROLE_LABEL, DockerRuntime
from remediator.ports.runtime import ContainerError, ContainerRef
from tests.support import docker_env

pytestmark = pytest.mark.docker

# Unique per run, so containers of other tests (or other runs) never match.
FLEET = f"t{docker_env.RUN_ID}"
# Exits at once on SIGTERM, so a restart does not wait for the stop timeout.
IDLE = "trap 'exit 0' TERM; sleep 3600 & wait"
SECOND = 1_000_000_000  # health check durations are in nanoseconds


@pytest.fixture(scope="module")
def runtime(docker_client: Any, busybox_image: str) -> Iterator[DockerRuntime]:
    rt = DockerRuntime(docker_client, poll_interval=0.1)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def fleet_containers(runtime: DockerRuntime, docker_client: Any) -> dict[str, Any]:
    """One labelled app and ollama in FLEET, one in another fleet, one unlabelled by name."""
    run = docker_env.run_busybox
    return {
        "ollama": run(docker_client, IDLE, labels={FLEET_LABEL: FLEET, ROLE_LABEL: "ollama"}),
        "app": run(docker_client, IDLE, labels={FLEET_LABEL: FLEET, ROLE_LABEL: "app"}),
        "other_fleet_app": run(
            docker_client, IDLE, labels={FLEET_LABEL: FLEET + "-other", ROLE_LABEL: "app"}
        ),
        "named": run(docker_client, IDLE, name=f"mf-named-{docker_env.RUN_ID}"),
    }


def _ref(container: Any, role: str = "app") -> ContainerRef:
    return ContainerRef(container.id, container.name, FLEET, role)


def test_find_by_labels_and_by_name(
    runtime: DockerRuntime, fleet_containers: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    apps = runtime.find(FLEET, "app")
    assert [r.id for r in apps] == [fleet_containers["app"].id]
    assert apps[0].role == "app" and apps[0].fleet == FLEET
    assert [r.id for r in runtime.find(FLEET, "ollama")] == [fleet_containers["ollama"].id]
    assert [r.id for r in runtime.find(FLEET + "-other", "app")] == [
        fleet_containers["other_fleet_app"].id
    ]

    named = fleet_containers["named"].name
    both = runtime.find(FLEET, "app", [named, fleet_containers["app"].name, "mf-no-such-one"])
    assert sorted(r.id for r in both) == sorted(
        [fleet_containers["app"].id, fleet_containers["named"].id]
    )
    assert "no container named 'mf-no-such-one'" in caplog.text

    only_names = runtime.find(FLEET, "app", [named], use_labels=False)
    assert [r.name for r in only_names] == [named]
    assert runtime.find(FLEET, "app", use_labels=False) == []


def test_container_without_fleet_label_belongs_to_default(
    runtime: DockerRuntime, docker_client: Any, busybox_image: str
) -> None:
    c = docker_env.run_busybox(docker_client, IDLE, labels={ROLE_LABEL: "app"})
    try:
        assert c.id in [r.id for r in runtime.find("default", "app")]
        assert c.id not in [r.id for r in runtime.find(FLEET, "app")]
    finally:
        c.remove(force=True)


def test_restart_changes_started_at(
    runtime: DockerRuntime, fleet_containers: dict[str, Any]
) -> None:
    ref = _ref(fleet_containers["app"])
    before = runtime.started_at(ref)
    assert before is not None
    started = time.monotonic()
    after = runtime.restart(ref, stop_timeout=5)
    elapsed = time.monotonic() - started
    assert after is not None and after > before
    assert runtime.started_at(ref) == after
    assert runtime.wait_ready(ref, time.monotonic() + 10).status == "running"
    # The container honours SIGTERM, so the restart does not sit out the stop timeout.
    assert elapsed < 4, elapsed


def test_restart_starts_a_stopped_container(
    runtime: DockerRuntime, fleet_containers: dict[str, Any]
) -> None:
    container = fleet_containers["ollama"]
    container.stop(timeout=1)
    ref = _ref(container, "ollama")
    assert runtime.state(ref).status == "exited"
    assert ref in runtime.find(FLEET, "ollama")  # stopped containers are found too
    runtime.restart(ref, stop_timeout=1)
    assert runtime.wait_ready(ref, time.monotonic() + 10).status == "running"


def test_wait_ready_waits_for_the_health_check(
    runtime: DockerRuntime, docker_client: Any, busybox_image: str
) -> None:
    script = f"rm -f /ready; (sleep 1; touch /ready) & {IDLE}"
    health = {"test": ["CMD", "test", "-f", "/ready"], "interval": SECOND // 5, "retries": 50}
    c = docker_env.run_busybox(docker_client, script, healthcheck=health)
    ref = _ref(c)
    try:
        state = runtime.wait_ready(ref, time.monotonic() + 15)
        assert state.health == "healthy"

        runtime.restart(ref, stop_timeout=2)
        # Docker resets health on start and the ready file only comes back after a second.
        assert runtime.state(ref).health == "starting"
        started = time.monotonic()
        state = runtime.wait_ready(ref, time.monotonic() + 15)
        assert state.status == "running" and state.health == "healthy"
        assert time.monotonic() - started > 0.5
    finally:
        c.remove(force=True)


def test_never_healthy_fails_within_the_deadline(
    runtime: DockerRuntime, docker_client: Any, busybox_image: str
) -> None:
    health = {
        "test": ["CMD-SHELL", "echo model not loaded; exit 1"],
        "interval": SECOND // 5,
        "retries": 1,
    }
    c = docker_env.run_busybox(docker_client, IDLE, healthcheck=health)
    ref = _ref(c)
    try:
        started = time.monotonic()
        with pytest.raises(ContainerError) as err:
            runtime.wait_ready(ref, time.monotonic() + 2)
        elapsed = time.monotonic() - started
        assert 1.9 < elapsed < 3, elapsed
        assert err.value.step == "wait_ready"
        assert err.value.container == c.name
        assert "status=running" in str(err.value)
        # One failed probe (0.2 s in) makes it unhealthy; the probe's output says why.
        assert "health=unhealthy" in str(err.value)
        assert "last_probe='model not loaded'" in str(err.value)
    finally:
        c.remove(force=True)


def test_exited_container_is_not_ready(
    runtime: DockerRuntime, docker_client: Any, busybox_image: str
) -> None:
    c = docker_env.run_busybox(docker_client, "exit 3")
    c.wait(timeout=10)
    with pytest.raises(ContainerError, match="status=exited exit_code=3"):
        runtime.wait_ready(_ref(c), time.monotonic() + 0.5)


def test_removed_container_is_a_container_error(
    runtime: DockerRuntime, docker_client: Any, busybox_image: str
) -> None:
    c = docker_env.run_busybox(docker_client, IDLE)
    ref = _ref(c)
    c.remove(force=True)
    with pytest.raises(ContainerError) as err:
        runtime.restart(ref, stop_timeout=1)
    assert err.value.step == "restart"
    assert "NotFound" in err.value.cause


@pytest.mark.parametrize("version", [None, "1.41"])
def test_engine_unreachable_is_a_container_error(version: str | None) -> None:
    # Unpinned, the SDK asks the engine for its API version and raises DockerException;
    # pinned, the first request raises requests' ConnectionError. Both must be ours.
    rt = DockerRuntime(base_url="unix:///nonexistent/docker.sock", version=version, timeout=5)
    ref = ContainerRef("0" * 64, "mf-gone", FLEET, "app")
    with pytest.raises(ContainerError, match="find failed") as err:
        rt.find(FLEET, "app")
    assert "nonexistent" in str(err.value) or "No such file" in str(err.value)
    for call in (
        lambda: rt.restart(ref, stop_timeout=1),
        lambda: rt.wait_ready(ref, time.monotonic() + 1),
    ):
        with pytest.raises(ContainerError, match="mf-gone"):
            call()
    rt.close()
