"""The seams hold: a whole switch through FleetActions on an in-memory model server and runtime.

No Docker and no HTTP: the server and the runtime are tests/support's second implementations of
remediator.ports.model_server.ModelServer and remediator.ports.runtime.Runtime. The app-config file
is a real file, and the "app" reads it each time it starts, as the real one does.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from remediator.adapters.docker_engine import DockerRuntime
from remediator.adapters.ollama import OllamaServer
from remediator.app import wiring
from remediator.app.remediator import Remediator
from remediator.config import Config, ConfigError, FleetConfig, ServerSettings, parse_config
from remediator.ports.model_server import SERVER_KINDS, ModelServer
from remediator.ports.runtime import ROLE_APP, ROLE_SERVER, Runtime
from remediator.store.state import StateStore
from remediator.switch.actions import FleetActions
from remediator.switch.plan import Outcome
from tests.support.memory_runtime import MemoryRuntime
from tests.support.memory_server import MemoryServer

MIB = 1024 * 1024
FLEET = "mem"


@dataclass
class App:
    """The application: reads its env file when it starts; crashes on ``crash_on``."""

    env_file: Path
    crash_on: str | None = None
    model: str | None = None
    starts: list[str] = field(default_factory=list)

    def start(self) -> int | None:
        text = self.env_file.read_text()
        self.model = text.split("OLLAMA_MODEL=", 1)[1].splitlines()[0]
        self.starts.append(self.model)
        return 3 if self.model == self.crash_on else None

    def probe(self, url: str, model: str) -> str | None:
        """The app's health endpoint, answered in memory: does it run on ``model``?"""
        return None if self.model == model else f"app health {url} reports {self.model!r}"


@dataclass
class Bench:
    config: Config
    fleet: FleetConfig
    server: MemoryServer
    runtime: MemoryRuntime
    app: App

    def request(self, direction: str = "down", *, dry_run: bool = False) -> Outcome:
        actions = FleetActions(self.fleet, self.server, self.runtime, app_probe=self.app.probe)
        remediator = Remediator(self.config, StateStore(self.config), lambda fc: actions)
        return remediator.request(FLEET, direction, reason="test", dry_run=dry_run)

    def current_model(self) -> str:
        return StateStore(self.config).read().fleets[FLEET].current_model


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    env_file = tmp_path / "app.env"
    env_file.write_text("# the app's settings\nOLLAMA_MODEL=llama3.2:3b\nOTHER=kept\n")
    config = parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "fleets": {
                FLEET: {
                    "cooldown_seconds": 0,
                    "server": {"kind": "ollama", "url": "http://model-server.invalid:11434"},
                    "containers": {
                        "ready_timeout_seconds": 1,
                        # Never contacted: the in-memory app answers for it.
                        "app_health_url": "http://app.invalid/healthz",
                    },
                    "app_config": [{"path": str(env_file), "format": "env"}],
                }
            },
        },
        "test",
    )
    server = MemoryServer({"llama3.2:3b": 2048 * MIB}, registry={"phi3:mini": 2200 * MIB})
    server.load("llama3.2:3b")
    runtime = MemoryRuntime()
    app = App(env_file)
    runtime.add(FLEET, ROLE_SERVER, "mem-server", lambda: None)
    runtime.add(FLEET, ROLE_APP, "mem-app", app.start)
    runtime.add("other", ROLE_APP, "other-app", lambda: None)
    return Bench(config, config.fleets[FLEET], server, runtime, app)


def test_the_implementations_satisfy_the_protocols() -> None:
    assert isinstance(MemoryServer(), ModelServer)
    assert isinstance(OllamaServer("http://127.0.0.1:1"), ModelServer)
    assert isinstance(MemoryRuntime(), Runtime)
    assert isinstance(DockerRuntime(base_url="unix:///nonexistent.sock"), Runtime)


def test_a_whole_switch_through_the_protocols(bench: Bench) -> None:
    outcome = bench.request()
    assert outcome.ok and outcome.switched, outcome.to_dict()
    assert outcome.steps == [
        "pulled phi3:mini",
        "unloaded llama3.2:3b",
        f"wrote {bench.app.env_file} (env OLLAMA_MODEL)",
        "restarted mem-server",
        "restarted mem-app",
    ]
    # Pull before anything changes; unload; then the server before the app that calls it.
    steps = [(s, m) for s, m in bench.server.calls if s in ("pull", "unload")]
    assert steps == [("pull", "phi3:mini"), ("unload", "llama3.2:3b")]
    assert bench.server.loaded() == []
    assert bench.runtime.restarts == ["mem-server", "mem-app"]  # never the other fleet's
    assert bench.app.env_file.read_text() == (
        "# the app's settings\nOLLAMA_MODEL=phi3:mini\nOTHER=kept\n"
    )
    assert bench.app.starts == ["llama3.2:3b", "phi3:mini"]
    assert bench.current_model() == "phi3:mini"


def test_an_app_that_crashes_on_the_new_model_is_rolled_back(bench: Bench) -> None:
    bench.app.crash_on = "phi3:mini"
    outcome = bench.request()
    assert outcome.failure is not None, outcome.to_dict()
    assert outcome.failure.step == "verify"
    assert "memory wait_ready of container 'mem-app' failed" in outcome.failure.cause
    assert "status=exited exit_code=3" in outcome.failure.cause
    assert outcome.failure.rollback_errors == []
    # Rolled back: the file says the old model again, and both containers were restarted
    # on it (the server first), the app now running it.
    assert "OLLAMA_MODEL=llama3.2:3b" in bench.app.env_file.read_text()
    assert bench.runtime.restarts == ["mem-server", "mem-app", "mem-server", "mem-app"]
    assert bench.app.starts == ["llama3.2:3b", "phi3:mini", "llama3.2:3b"]
    assert bench.runtime.state(bench.runtime.containers["mem-app"].ref).ready
    state = StateStore(bench.config).read().fleets[FLEET]
    assert (state.current_model, state.history) == ("llama3.2:3b", [])
    assert state.last_failure is not None


def test_a_model_server_failure_changes_nothing(bench: Bench) -> None:
    bench.server.fail("pull", "registry unreachable")
    outcome = bench.request()
    assert outcome.failure is not None
    assert (outcome.failure.step, outcome.failure.cause) == (
        "pull",
        "memory pull of 'phi3:mini' failed: registry unreachable",
    )
    assert bench.runtime.restarts == []
    assert "OLLAMA_MODEL=llama3.2:3b" in bench.app.env_file.read_text()
    assert bench.current_model() == "llama3.2:3b"


def test_a_runtime_failure_before_the_rewrite_changes_nothing(bench: Bench) -> None:
    bench.runtime.fail("find", "engine gone")
    outcome = bench.request()
    assert outcome.failure is not None and outcome.failure.step == "find_containers"
    assert ("unload", "llama3.2:3b") not in bench.server.calls
    assert "OLLAMA_MODEL=llama3.2:3b" in bench.app.env_file.read_text()


def test_a_server_that_never_lists_the_model_fails_verify(bench: Bench) -> None:
    # The server restarts but its store lost the new model: its own probe says so.
    def forget() -> int | None:
        bench.server.models.pop("phi3:mini", None)
        return None

    bench.runtime.containers["mem-server"].start = forget
    outcome = bench.request()
    assert outcome.failure is not None and outcome.failure.step == "verify"
    assert "model server does not list phi3:mini" in outcome.failure.cause


def test_dry_run_through_the_protocols_changes_nothing(bench: Bench) -> None:
    outcome = bench.request(dry_run=True)
    assert outcome.dry_run and not outcome.switched
    assert outcome.steps == [
        "would pull phi3:mini",
        "would unload llama3.2:3b",
        f"would write phi3:mini to {bench.app.env_file} (env OLLAMA_MODEL)",
        "would restart mem-server (ollama)",
        "would restart mem-app (app)",
    ]
    assert bench.runtime.restarts == []
    assert [s for s, _ in bench.server.calls] == ["list_models"]


def test_containers_named_in_the_config_are_found_without_labels(tmp_path: Path) -> None:
    runtime = MemoryRuntime()
    runtime.add("default", ROLE_SERVER, "srv", lambda: None, labelled=False)
    runtime.add("default", ROLE_APP, "web", lambda: None, labelled=False)
    fleet = parse_config(
        {"fleets": {"default": {"containers": {"use_labels": False, "server": ["srv"]}}}}
    ).fleets["default"]
    actions = FleetActions(fleet, MemoryServer(), runtime, app_probe=None)
    servers, apps = actions._find()
    assert ([r.name for r in servers], apps) == (["srv"], [])


def test_the_core_loads_no_docker_and_no_http_client() -> None:
    code = (
        "import sys, remediator.switch.actions, remediator.switch.engine; "
        "print(sorted(m for m in ('docker', 'requests', 'urllib3') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_wiring_builds_the_kind_the_config_names() -> None:
    assert set(wiring.SERVER_BUILDERS) == set(SERVER_KINDS)
    fleet = parse_config({"fleets": {"a": {"server": {"url": "http://10.0.0.2:11434"}}}}).fleets[
        "a"
    ]
    server = wiring.model_server(fleet)
    assert isinstance(server, OllamaServer) and server.base_url == "http://10.0.0.2:11434"
    actions = wiring.fleet_actions(fleet)
    assert isinstance(actions.server, OllamaServer)
    assert isinstance(actions.runtime, DockerRuntime)
    assert actions.app_probe is not None
    odd = FleetConfig(name="a", server=ServerSettings(kind="llamacpp"))
    with pytest.raises(ConfigError, match=r"^fleets\.a\.server\.kind: unknown server kind"):
        wiring.model_server(odd)
