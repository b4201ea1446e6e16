"""A switch on real parts: a Docker engine, busybox containers, the Ollama stand-in, real files.

Each test builds a fleet of two labelled containers: a "model server" and an "app" that
prints the model named by its mounted config file when it starts. A switch must pull, unload,
rewrite the file and restart both for real; a failure at any step must put everything back.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from remediator.adapters.docker_engine import DockerRuntime
from remediator.adapters.ollama import OllamaServer
from remediator.app.remediator import Remediator
from remediator.app.wiring import fleet_actions
from remediator.config import Config, FleetConfig, parse_config
from remediator.store.state import StateStore
from remediator.switch.actions import FleetActions
from simulator.fake_ollama import FakeOllama
from tests.support import docker_env

pytestmark = pytest.mark.docker

# Stops at once on SIGTERM, so restarts take well under a second.
SERVER_SCRIPT = "trap 'exit 0' TERM; echo model server up; while true; do sleep 0.1; done"
# Prints the model it was started with; crashes when that model is the one it cannot run.
APP_SCRIPT = (
    "trap 'exit 0' TERM; . /config/app.env; echo app running $OLLAMA_MODEL; "
    '[ "$OLLAMA_MODEL" = "$CRASH_ON" ] && exit 3; while true; do sleep 0.1; done'
)


@dataclass
class Fleet:
    config: Config
    fleet: FleetConfig
    ollama: FakeOllama
    server: Any
    app: Any
    env_file: Path
    json_file: Path

    def started(self, container: Any) -> str:
        container.reload()
        return str(container.attrs["State"]["StartedAt"])

    def remediator(self, runtime: DockerRuntime | None = None) -> Remediator:
        def actions(fc: FleetConfig) -> FleetActions:
            return fleet_actions(fc, server=OllamaServer(self.ollama.url), runtime=runtime)

        return Remediator(self.config, StateStore(self.config), actions)


@pytest.fixture
def fleet(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> Iterator[Fleet]:
    name = f"t{uuid.uuid4().hex[:8]}"
    cfg_dir = tmp_path / "appcfg"
    cfg_dir.mkdir()
    env_file = cfg_dir / "app.env"
    env_file.write_text("# the app's settings\nOLLAMA_MODEL=llama3.2:3b\nOTHER=kept\n")
    json_file = cfg_dir / "app.json"
    json_file.write_text('{"llm": {"model": "llama3.2:3b", "temperature": 0.2}}\n')
    config = parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "fleets": {
                name: {
                    "cooldown_seconds": 0,
                    "server": {"url": "http://127.0.0.1:1"},  # replaced by the stand-in below
                    "containers": {"stop_timeout_seconds": 2, "ready_timeout_seconds": 5},
                    "app_config": [
                        {"path": str(env_file), "format": "env", "key": "OLLAMA_MODEL"},
                        {"path": str(json_file), "format": "json", "key": "llm.model"},
                    ],
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
    with FakeOllama(models={"llama3.2:3b": 2048 << 20}) as ollama:
        ollama.load("llama3.2:3b")
        f = Fleet(config, config.fleets[name], ollama, server, app, env_file, json_file)
        yield f
    for c in {server, app, f.server, f.app}:
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)


def wait_log(container: Any, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in container.logs().decode():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in the logs of {container.name}")
        time.sleep(0.05)


def test_a_switch_pulls_unloads_rewrites_and_restarts_for_real(fleet: Fleet) -> None:
    wait_log(fleet.app, "app running llama3.2:3b")
    before = (fleet.started(fleet.server), fleet.started(fleet.app))
    outcome = fleet.remediator().request(fleet.fleet.name, "down", reason="test")
    assert outcome.ok and outcome.switched, outcome.to_dict()
    after = (fleet.started(fleet.server), fleet.started(fleet.app))
    assert after[0] != before[0] and after[1] != before[1]
    assert [c.body["model"] for c in fleet.ollama.calls_to("/api/pull")] == ["phi3:mini"]
    unloads = fleet.ollama.calls_to("/api/generate")
    assert [(c.body["model"], c.body["keep_alive"]) for c in unloads] == [("llama3.2:3b", 0)]
    assert (
        fleet.env_file.read_text() == "# the app's settings\nOLLAMA_MODEL=phi3:mini\nOTHER=kept\n"
    )
    assert '"model": "phi3:mini"' in fleet.json_file.read_text()
    wait_log(fleet.app, "app running phi3:mini")  # the restarted app read the new file
    state = StateStore(fleet.config).read().fleets[fleet.fleet.name]
    assert (state.current_model, state.index) == ("phi3:mini", 1)
    print(
        "switch duration (pull, unload, write, 2 restarts, verify): "
        f"{outcome.duration_seconds:.2f} s"
    )


def test_an_already_pulled_model_is_not_pulled_again(fleet: Fleet) -> None:
    fleet.ollama.models["phi3:mini"] = 2200 << 20
    assert fleet.remediator().request(fleet.fleet.name, "down").switched
    assert fleet.ollama.calls_to("/api/pull") == []


def assert_rolled_back(fleet: Fleet, before: tuple[str, str], *, restarted: bool) -> None:
    state = StateStore(fleet.config).read().fleets[fleet.fleet.name]
    assert (state.current_model, state.index) == ("llama3.2:3b", 0)
    assert state.history == []
    assert state.last_failure is not None
    assert "OLLAMA_MODEL=llama3.2:3b" in fleet.env_file.read_text()
    assert '"model": "llama3.2:3b"' in fleet.json_file.read_text()
    after = (fleet.started(fleet.server), fleet.started(fleet.app))
    if restarted:
        assert after != before
    else:
        assert after == before
    for c in (fleet.server, fleet.app):
        c.reload()
        assert c.status == "running", c.name


@pytest.mark.parametrize(
    ("breakage", "step", "cause"),
    [
        ("refuse_pull", "pull", "pull refused"),
        ("pull_mid_stream", "pull", "download interrupted"),
        ("ollama_down", "pull", "ollama unreachable"),
    ],
)
def test_ollama_failures_roll_back_before_anything_changes(
    fleet: Fleet, breakage: str, step: str, cause: str
) -> None:
    before = (fleet.started(fleet.server), fleet.started(fleet.app))
    if breakage == "refuse_pull":
        fleet.ollama.refuse_pull()
    elif breakage == "pull_mid_stream":
        fleet.ollama.fail_pull_mid_stream()
    else:
        fleet.ollama.go_down()
    outcome = fleet.remediator().request(fleet.fleet.name, "down")
    assert outcome.failure is not None and outcome.failure.step == step
    assert cause in str(outcome.failure).lower()
    assert_rolled_back(fleet, before, restarted=False)


def test_the_docker_socket_gone_fails_before_configs_are_touched(
    fleet: Fleet, tmp_path: Path
) -> None:
    before = (fleet.started(fleet.server), fleet.started(fleet.app))
    gone = DockerRuntime(base_url=f"unix://{tmp_path}/no-docker.sock")
    outcome = fleet.remediator(gone).request(fleet.fleet.name, "down")
    assert outcome.failure is not None and outcome.failure.step == "find_containers"
    assert_rolled_back(fleet, before, restarted=False)
    assert fleet.ollama.calls_to("/api/generate") == []  # nothing unloaded either


def test_an_app_that_never_comes_back_is_restarted_on_the_old_model(
    fleet: Fleet, docker_client: docker.DockerClient
) -> None:
    # Recreate the app so that it crashes on phi3:mini, the model the switch moves to.
    fleet.app.remove(force=True)
    fleet.app = docker_env.run_busybox(
        docker_client,
        APP_SCRIPT,
        labels={"model-fleet.fleet": fleet.fleet.name, "model-fleet.role": "app"},
        volumes={str(fleet.env_file.parent): {"bind": "/config", "mode": "ro"}},
        environment={"CRASH_ON": "phi3:mini"},
    )
    wait_log(fleet.app, "app running llama3.2:3b")
    before = (fleet.started(fleet.server), fleet.started(fleet.app))
    outcome = fleet.remediator().request(fleet.fleet.name, "down")
    assert outcome.failure is not None and outcome.failure.step == "verify"
    assert "exit_code=3" in str(outcome.failure)
    assert outcome.failure.rollback_errors == []
    assert_rolled_back(fleet, before, restarted=True)
    logs = fleet.app.logs().decode()
    assert logs.rstrip().endswith("app running llama3.2:3b"), logs


def test_an_unwritable_config_path_rolls_back_the_files_already_written(
    fleet: Fleet, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    fc = fleet.fleet
    broken = FleetConfig(
        **{
            **fc.__dict__,
            "app_config": (
                *fc.app_config,
                type(fc.app_config[0])(str(blocker / "model.txt"), "text"),
            ),
        }
    )
    fleet.config = parse_config({"state_file": str(fleet.config.state_file)}, "t")
    fleet.config = type(fleet.config)(**{**fleet.config.__dict__, "fleets": {fc.name: broken}})
    fleet.fleet = broken
    before = (fleet.started(fleet.server), fleet.started(fleet.app))
    outcome = fleet.remediator().request(fc.name, "down")
    assert outcome.failure is not None and outcome.failure.step == "write_config"
    assert "not-a-dir" in str(outcome.failure)
    assert_rolled_back(fleet, before, restarted=False)


def test_no_container_found_still_rewrites_config_and_state(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    fleet.server.remove(force=True)
    fleet.app.remove(force=True)
    outcome = fleet.remediator().request(fleet.fleet.name, "down")
    assert outcome.switched
    assert "no containers found" in outcome.steps
    assert "no container found" in caplog.text
    assert "OLLAMA_MODEL=phi3:mini" in fleet.env_file.read_text()


def test_dry_run_lists_the_steps_and_changes_nothing(fleet: Fleet) -> None:
    before = (fleet.started(fleet.server), fleet.started(fleet.app))
    outcome = fleet.remediator().request(fleet.fleet.name, "down", dry_run=True)
    assert outcome.dry_run and not outcome.switched
    text = "\n".join(outcome.steps)
    assert "would pull phi3:mini" in text
    assert "would unload llama3.2:3b" in text
    assert f"would write phi3:mini to {fleet.env_file}" in text
    assert f"would restart {fleet.server.name} (ollama)" in text
    assert f"would restart {fleet.app.name} (app)" in text
    assert (fleet.started(fleet.server), fleet.started(fleet.app)) == before
    assert "OLLAMA_MODEL=llama3.2:3b" in fleet.env_file.read_text()
    assert fleet.ollama.calls_to("/api/pull") == [] and fleet.ollama.calls_to("/api/generate") == []
    assert not fleet.config.state_file.exists()
