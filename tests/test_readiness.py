"""A switch commits when the services answer on the new model, not when Docker's health next runs.

Real Docker: the "app" is busybox httpd whose /healthz names the model of its mounted env file
(read when it starts), with a Docker health check whose first probe is a minute away, so the
container stays "starting" for the whole test. The model server is the Ollama stand-in.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from remediator.adapters.probes import app_reports_model
from remediator.app.remediator import Remediator
from remediator.app.wiring import fleet_actions
from remediator.config import Config, FleetConfig, ServerSettings, parse_config
from remediator.store.state import StateStore
from simulator.fake_ollama import FakeOllama
from tests.support import docker_env

pytestmark = pytest.mark.docker

SECOND = 1_000_000_000
SERVER_SCRIPT = "trap 'exit 0' TERM; while true; do sleep 0.1; done"
# /healthz names the model the app started with; FROZEN_MODEL pins it (an app that ignores
# its config, so the new model never shows).
APP_SCRIPT = (
    "trap 'exit 0' TERM; mkdir -p /www; . /config/app.env; "
    'echo "{\\"model\\": \\"${FROZEN_MODEL:-$OLLAMA_MODEL}\\"}" > /www/healthz; '
    "httpd -f -p 8000 -h /www & wait"
)
# The first probe runs after `interval`: the container is "starting" throughout the test.
SLOW_HEALTH = {"test": ["CMD", "true"], "interval": 60 * SECOND, "retries": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    config: Config
    fleet: FleetConfig
    ollama: FakeOllama
    app: Any
    health_url: str

    def remediator(self) -> Remediator:
        return Remediator(self.config, StateStore(self.config), fleet_actions)

    def health(self) -> str:
        self.app.reload()
        return str(self.app.attrs["State"]["Health"]["Status"])


def _stack(
    tmp_path: Path,
    client: docker.DockerClient,
    *,
    use_health_url: bool,
    frozen_model: str = "",
) -> Iterator[Stack]:
    name = f"r{uuid.uuid4().hex[:8]}"
    cfg_dir = tmp_path / "appcfg"
    cfg_dir.mkdir()
    env_file = cfg_dir / "app.env"
    env_file.write_text("OLLAMA_MODEL=llama3.2:3b\n")
    port = _free_port()
    health_url = f"http://127.0.0.1:{port}/healthz"
    containers: dict[str, Any] = {"stop_timeout_seconds": 2, "ready_timeout_seconds": 6}
    if use_health_url:
        containers["app_health_url"] = health_url
    config = parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "fleets": {
                name: {
                    "cooldown_seconds": 0,
                    "containers": containers,
                    "app_config": [{"path": str(env_file), "format": "env"}],
                }
            },
        },
        "test",
    )
    labels = {"model-fleet.fleet": name}
    server = docker_env.run_busybox(
        client, SERVER_SCRIPT, labels={**labels, "model-fleet.role": "ollama"}
    )
    app = docker_env.run_busybox(
        client,
        APP_SCRIPT,
        labels={**labels, "model-fleet.role": "app"},
        volumes={str(cfg_dir): {"bind": "/config", "mode": "ro"}},
        environment={"FROZEN_MODEL": frozen_model},
        # A fixed host port: an ephemeral one would change with every restart.
        ports={"8000/tcp": ("127.0.0.1", port)},
        healthcheck=SLOW_HEALTH,
    )
    try:
        with FakeOllama(models={"llama3.2:3b": 2048 << 20}) as ollama:
            fleet = config.fleets[name]
            fleet = FleetConfig(**{**fleet.__dict__, "server": ServerSettings(url=ollama.url)})
            config = Config(**{**config.__dict__, "fleets": {name: fleet}})
            stack = Stack(config, fleet, ollama, app, health_url)
            deadline = time.monotonic() + 10
            while app_reports_model(health_url, "llama3.2:3b") is not None:
                assert time.monotonic() < deadline, "the app never answered"
                time.sleep(0.05)
            yield stack
    finally:
        for c in (server, app):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)


@pytest.fixture
def probed(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> Iterator[Stack]:
    yield from _stack(tmp_path, docker_client, use_health_url=True)


@pytest.fixture
def unprobed(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> Iterator[Stack]:
    yield from _stack(tmp_path, docker_client, use_health_url=False)


@pytest.fixture
def frozen(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> Iterator[Stack]:
    yield from _stack(tmp_path, docker_client, use_health_url=True, frozen_model="llama3.2:3b")


def test_the_switch_commits_when_the_app_names_the_new_model(probed: Stack) -> None:
    started = time.monotonic()
    outcome = probed.remediator().request(None, "down", trigger="manual", reason="test")
    took = time.monotonic() - started
    assert outcome.switched, outcome
    assert app_reports_model(probed.health_url, "phi3:mini") is None
    # Docker's health check has not run once: the switch did not wait for it.
    assert probed.health() == "starting"
    assert took < 6, f"the switch took {took:.1f} s"
    # The server counted as ready only once its API listed the pulled model.
    assert probed.ollama.calls_to("/api/tags")


def test_without_a_probe_docker_health_decides(unprobed: Stack) -> None:
    outcome = unprobed.remediator().request(None, "down", trigger="manual", reason="test")
    # Health stays "starting" beyond ready_timeout_seconds: the switch is rolled back.
    assert outcome.failure is not None, outcome
    assert outcome.failure.step == "verify"
    assert "health=starting" in outcome.failure.cause


def test_an_app_that_keeps_the_old_model_rolls_the_switch_back(frozen: Stack) -> None:
    outcome = frozen.remediator().request(None, "down", trigger="manual", reason="test")
    assert outcome.failure is not None, outcome
    assert outcome.failure.step == "verify"
    assert "reports 'llama3.2:3b'" in outcome.failure.cause
    assert outcome.failure.rollback_errors == []
    # Rolled back: the app is up again and ready on the old model by its own probe.
    assert app_reports_model(frozen.health_url, "llama3.2:3b") is None
    state = StateStore(frozen.config).read()
    assert state.fleets[frozen.fleet.name].current_model == "llama3.2:3b"


def test_app_reports_model_reasons(probed: Stack) -> None:
    assert app_reports_model(probed.health_url, "llama3.2:3b") is None
    assert "reports 'llama3.2:3b'" in str(app_reports_model(probed.health_url, "phi3:mini"))
    closed = f"http://127.0.0.1:{_free_port()}/healthz"
    assert "unreachable" in str(app_reports_model(closed, "phi3:mini"))
    missing = probed.health_url.replace("/healthz", "/nope")
    assert "HTTP 404" in str(app_reports_model(missing, "phi3:mini"))
