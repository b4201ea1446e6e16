"""A switch to a custom rung on real parts: a Docker engine, busybox containers, the Ollama
stand-in over HTTP and real files. The model is created before anything restarts, and the
restarted app reads the created model's name; a refused create changes nothing."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from remediator.adapters.ollama import OllamaServer
from remediator.app.remediator import Remediator
from remediator.app.wiring import fleet_actions
from remediator.config import Config, FleetConfig, parse_config
from remediator.store.state import StateStore
from remediator.switch.actions import FleetActions
from simulator.fake_ollama import FakeOllama
from tests.support import docker_env
from tests.test_switch_real import APP_SCRIPT, SERVER_SCRIPT, wait_log

pytestmark = pytest.mark.docker

CUSTOM = "acme-brief:0.5b-ctx2k"


@pytest.fixture
def rig(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> Iterator[tuple[Config, FleetConfig, FakeOllama, Any, Any, Path]]:
    name = f"t{uuid.uuid4().hex[:8]}"
    cfg_dir = tmp_path / "appcfg"
    cfg_dir.mkdir()
    env_file = cfg_dir / "app.env"
    env_file.write_text("OLLAMA_MODEL=llama3.2:3b\n")
    create = {"from": "qwen2.5:0.5b", "parameters": {"num_ctx": 2048}, "system": "Be brief."}
    config = parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "fleets": {
                name: {
                    "cooldown_seconds": 0,
                    "ladder": [
                        {"name": "llama3.2:3b", "size_mb": 2048},
                        {"name": CUSTOM, "size_mb": 420, "create": create},
                    ],
                    "containers": {"stop_timeout_seconds": 2, "ready_timeout_seconds": 5},
                    "app_config": [{"path": str(env_file), "format": "env"}],
                }
            },
        },
        "test",
    )
    labels = {"model-fleet.fleet": name}
    server = docker_env.run_busybox(
        docker_client, SERVER_SCRIPT, labels={**labels, "model-fleet.role": "ollama"}
    )
    app = docker_env.run_busybox(
        docker_client,
        APP_SCRIPT,
        labels={**labels, "model-fleet.role": "app"},
        volumes={str(cfg_dir): {"bind": "/config", "mode": "ro"}},
        environment={"CRASH_ON": "none"},
    )
    with FakeOllama({"llama3.2:3b": 2048 << 20}, registry={"qwen2.5:0.5b": 397 << 20}) as fake:
        fake.load("llama3.2:3b")
        yield config, config.fleets[name], fake, server, app, env_file
    for c in (server, app):
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)


def remediator(config: Config, fake: FakeOllama) -> Remediator:
    def actions(fc: FleetConfig) -> FleetActions:
        return fleet_actions(fc, server=OllamaServer(fake.url))

    return Remediator(config, StateStore(config), actions)


def started(container: Any) -> str:
    container.reload()
    return str(container.attrs["State"]["StartedAt"])


def test_the_app_restarts_on_the_model_the_switch_created(rig: Any) -> None:
    config, fleet, fake, _, app, env_file = rig
    wait_log(app, "app running llama3.2:3b")
    outcome = remediator(config, fake).request(fleet.name, "down", reason="test")
    assert outcome.switched, outcome.to_dict()
    assert outcome.steps[:2] == ["pulled qwen2.5:0.5b", f"created {CUSTOM}"]
    created = fake.calls_to("/api/create")
    pulled = fake.calls_to("/api/pull")
    assert [c.body["model"] for c in pulled] == ["qwen2.5:0.5b"]
    assert created[0].body["parameters"] == {"num_ctx": 2048}
    # Made before anything changed: the unload and both restarts come after the create.
    unload = fake.calls_to("/api/generate")[0]
    assert pulled[0].at < created[0].at < unload.at
    assert env_file.read_text() == f"OLLAMA_MODEL={CUSTOM}\n"
    wait_log(app, f"app running {CUSTOM}")  # the restarted app read the created model
    state = StateStore(config).read().fleets[fleet.name]
    assert (state.current_model, state.index) == (CUSTOM, 1)
    print(f"switch to a custom rung (pull, create, 2 restarts): {outcome.duration_seconds:.2f} s")


def test_a_refused_create_restarts_nothing(rig: Any) -> None:
    config, fleet, fake, server, app, env_file = rig
    before = (started(server), started(app))
    fake.fail_create_mid_stream("write /root/.ollama/models/blobs: no space left on device")
    outcome = remediator(config, fake).request(fleet.name, "down")
    assert outcome.failure is not None and outcome.failure.step == "create"
    assert f"create {CUSTOM} from qwen2.5:0.5b: Ollama reported" in str(outcome.failure)
    assert (started(server), started(app)) == before
    assert env_file.read_text() == "OLLAMA_MODEL=llama3.2:3b\n"
    state = StateStore(config).read().fleets[fleet.name]
    assert (state.current_model, state.journal) == ("llama3.2:3b", None)
    assert state.last_failure is not None and state.last_failure["step"] == "create"
