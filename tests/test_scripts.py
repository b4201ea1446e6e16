"""scripts/up, scripts/down and scripts/bootstrap: what they check, create, run and decide.

The scripts run for real, on a copy of the files they read (so the token and .env they write
land in tmp_path). The outside commands they call (docker, nvidia-smi, dpkg-query, apt-get)
are replaced at that seam by small fakes first on PATH: tests/support/fake_docker.py answers
from a scenario and logs each call. Where a test must prove a command is absent, PATH holds
only the fakes and a few real tools. The run of scripts/up against a real engine and real
compose is the compose stack test's.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"
FAKE_DOCKER = REPO / "tests" / "support" / "fake_docker.py"
LADDER = ["llama3.2:3b", "phi3:mini", "tinyllama:1.1b", "qwen2.5:0.5b"]
# The tools scripts/up --check and scripts/bootstrap --dry-run use besides the faked ones.
HERMETIC_TOOLS = ("dirname", "grep", "python3")

EXIT_FAILED, EXIT_USAGE, EXIT_MISSING, EXIT_NO_GPU = 1, 2, 3, 4


def status_json(ladder: list[str] = LADDER, fleet: str = "default") -> dict[str, Any]:
    """The remediator's status for one fleet, trimmed to what the scripts read and print."""
    return {
        "current_model": {"name": ladder[0], "index": 0},
        "available_models": ladder,
        "fleet": fleet,
        "notices": [],
    }


@dataclass
class Host:
    """A checkout copy and the fake commands that stand in for this host's tools."""

    root: Path
    fakes: Path
    tools: Path
    log: Path
    scenario: dict[str, Any] = field(default_factory=dict)

    def command(self, name: str, body: str) -> None:
        """A fake command: a /bin/sh script first on PATH."""
        path = self.fakes / name
        path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        path.chmod(0o755)

    def run(
        self,
        script: str,
        *args: str,
        env: dict[str, str] | None = None,
        hermetic: bool = False,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run scripts/SCRIPT of the copy; hermetic: PATH is the fakes and HERMETIC_TOOLS only."""
        scenario_file = self.log.with_name("scenario.json")
        scenario_file.write_text(json.dumps(self.scenario), encoding="utf-8")
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MODEL_FLEET_", "COMPOSE_", "DOCKER_"))
        }
        path = f"{self.fakes}:{self.tools}" if hermetic else f"{self.fakes}:{base['PATH']}"
        full_env = {
            **base,
            "PATH": path,
            "FAKE_DOCKER_SCENARIO": str(scenario_file),
            "FAKE_DOCKER_LOG": str(self.log),
            **(env or {}),
        }
        return subprocess.run(
            [BASH, str(self.root / "scripts" / script), *args],
            cwd=cwd or self.root,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def calls(self) -> list[dict[str, Any]]:
        """Each docker call the scripts made: {"argv": [...], "files": {...}}."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]

    def compose_calls(self) -> list[list[str]]:
        """The compose calls, without their global options (-f, -p, --env-file)."""
        result = []
        for call in self.calls():
            argv = call["argv"]
            if argv[:1] != ["compose"]:
                continue
            rest = argv[1:]
            while rest and rest[0] in ("-f", "-p", "--env-file"):
                rest = rest[2:]
            result.append(rest)
        return result


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """A copy of the files the scripts read, a GPU host's fakes, and a hermetic tool dir."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "scripts", root / "scripts")
    for name in ("docker-compose.gpu.yml", "docker-compose.monitoring.yml", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    (root / "secrets").mkdir()
    (root / "secrets").chmod(0o755)  # as a checkout has it
    shutil.copy(REPO / "secrets" / "README.md", root / "secrets" / "README.md")
    (root / "deploy").mkdir()
    fakes, tools = tmp_path / "fakes", tmp_path / "tools"
    fakes.mkdir()
    tools.mkdir()
    for tool in HERMETIC_TOOLS:
        # This Python, not PATH's python3: that may be a shim that needs more of PATH.
        found = sys.executable if tool == "python3" else shutil.which(tool)
        assert found, f"{tool} is needed by the scripts under test"
        (tools / tool).symlink_to(found)
    h = Host(root=root, fakes=fakes, tools=tools, log=tmp_path / "docker-calls.jsonl")
    h.command("docker", f'exec "{sys.executable}" "{FAKE_DOCKER}" "$@"')
    h.command("nvidia-smi", 'echo "GPU 0: NVIDIA GeForce RTX 3060 (UUID: GPU-1234)"')
    h.scenario = {
        "engine": "27.3.1",
        "runtimes": {"runc": {"path": "runc"}, "nvidia": {"path": "nvidia-container-runtime"}},
        "compose": "2.29.1",
        "status": status_json(),
        "ollama_list": ["llama3.2:3b", "tinyllama:1.1b"],
        "ports": {
            "grafana 3000": "0.0.0.0:3000",
            "prometheus 9090": "0.0.0.0:9090",
            "alertmanager 9093": "0.0.0.0:9093",
            "remediator 8080": "127.0.0.1:8080",
            "app 8000": "0.0.0.0:18000",
        },
    }
    yield h


# ---- scripts/up: prerequisites ------------------------------------------------------------

OK_REPORT = [
    "ok       NVIDIA driver: GPU 0: NVIDIA GeForce RTX 3060",
    "ok       Docker engine: 27.3.1",
    "ok       Docker Compose v2: 2.29.1",
    "ok       NVIDIA container runtime: docker info lists the nvidia runtime",
]
HOW_COMPOSE = (
    "install the Compose v2 plugin: docker-compose-plugin from Docker's apt repository"
    " (https://docs.docker.com/compose/install/linux/), or docker-compose-v2 on Ubuntu"
)
HOW_TOOLKIT = (
    "install the NVIDIA Container Toolkit, then: sudo nvidia-ctk runtime configure"
    " --runtime=docker && sudo systemctl restart docker"
)
NO_GPU_LINES = [
    "This host has no usable NVIDIA GPU, and model-fleet's stack needs one.",
    "To watch the whole loop without a GPU, run the simulated demo: scripts/demo",
]


@pytest.mark.docker
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host has nvidia-smi")
def test_up_on_a_host_without_gpu_names_the_driver_and_points_to_the_demo(host: Host) -> None:
    # This very machine, no fakes: the real docker, no NVIDIA driver.
    env = {"PATH": os.environ["PATH"]}
    result = host.run("up", env=env)
    assert result.returncode == EXIT_NO_GPU, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "MISSING  NVIDIA driver: nvidia-smi not found; on a host with an NVIDIA GPU, install the"
        " driver (Debian: apt-get install nvidia-driver, from non-free) until nvidia-smi lists"
        " the GPU"
    )
    assert lines[1].startswith("ok       Docker engine: "), lines
    assert lines[-2:] == NO_GPU_LINES
    # It stopped before creating anything.
    assert not (host.root / ".env").exists()
    assert not (host.root / "secrets" / "model_fleet_token").exists()


def test_up_check_passes_on_a_gpu_host_with_everything(host: Host) -> None:
    result = host.run("up", "--check", hermetic=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == OK_REPORT
    assert lines[4].startswith("ok       python3: 3."), lines
    assert len(lines) == 5
    assert [c[:1] for c in host.compose_calls()] == [["version"]], "--check must start nothing"


@pytest.mark.parametrize(
    ("case", "expected_line", "code"),
    [
        (
            "no nvidia-smi",
            "MISSING  NVIDIA driver: nvidia-smi not found; on a host with an NVIDIA GPU, install"
            " the driver (Debian: apt-get install nvidia-driver, from non-free) until nvidia-smi"
            " lists the GPU",
            EXIT_NO_GPU,
        ),
        (
            "nvidia-smi fails",
            "MISSING  NVIDIA driver: nvidia-smi failed (NVIDIA-SMI has failed because it couldn't"
            " communicate with the NVIDIA driver.); install or load the driver (reboot after"
            " installing it) until nvidia-smi lists the GPU",
            EXIT_NO_GPU,
        ),
        (
            "no docker",
            "MISSING  Docker engine: no docker command; install Docker Engine"
            " (Debian: apt-get install docker.io)",
            EXIT_MISSING,
        ),
        (
            "engine down",
            "MISSING  Docker engine: none answers (Cannot connect to the Docker daemon at"
            " unix:///var/run/docker.sock. Is the docker daemon running?); start it:"
            " sudo systemctl start docker",
            EXIT_MISSING,
        ),
        (
            "permission denied",
            "MISSING  Docker engine: permission denied on its socket; join the docker group (sudo"
            ' usermod -aG docker "$USER") and log in again',
            EXIT_MISSING,
        ),
        (
            "compose v1 only",
            "MISSING  Docker Compose v2: only docker-compose 1.29.2 (Compose v1) is installed,"
            f" which rejects the compose files' top-level name:; {HOW_COMPOSE}",
            EXIT_MISSING,
        ),
        (
            "no compose",
            f"MISSING  Docker Compose v2: docker compose is not installed; {HOW_COMPOSE}",
            EXIT_MISSING,
        ),
        (
            "standalone compose v2",
            "MISSING  Docker Compose v2: docker-compose 2.24.6 is installed, but not as a docker"
            " plugin; link it: mkdir -p ~/.docker/cli-plugins && ln -s"
            ' "$(command -v docker-compose)" ~/.docker/cli-plugins/docker-compose',
            EXIT_MISSING,
        ),
        (
            "no nvidia runtime",
            "MISSING  NVIDIA container runtime: docker info lists no nvidia runtime and no CDI"
            f" spec names nvidia.com/gpu; {HOW_TOOLKIT}",
            EXIT_MISSING,
        ),
    ],
)
def test_up_check_says_what_is_missing_and_how_to_get_it(
    host: Host, case: str, expected_line: str, code: int
) -> None:
    if case == "no nvidia-smi":
        (host.fakes / "nvidia-smi").unlink()
    elif case == "nvidia-smi fails":
        host.command(
            "nvidia-smi",
            "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA"
            ' driver."\nexit 9',
        )
    elif case == "no docker":
        (host.fakes / "docker").unlink()
    elif case == "engine down":
        host.scenario["engine"] = None
        host.scenario["engine_error"] = (
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker"
            " daemon running?"
        )
    elif case == "permission denied":
        host.scenario["engine"] = None
        host.scenario["engine_error"] = (
            "permission denied while trying to connect to the Docker daemon socket at"
            " unix:///var/run/docker.sock"
        )
    elif case in ("compose v1 only", "no compose", "standalone compose v2"):
        host.scenario["compose"] = None
        if case == "compose v1 only":
            host.command("docker-compose", 'echo "1.29.2"')
        elif case == "standalone compose v2":
            host.command("docker-compose", 'echo "v2.24.6"')
    elif case == "no nvidia runtime":
        host.scenario["runtimes"] = {"runc": {"path": "runc"}}
    empty_cdi = host.root / "no-cdi"
    result = host.run("up", "--check", env={"MODEL_FLEET_CDI_DIRS": str(empty_cdi)}, hermetic=True)
    assert result.returncode == code, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert expected_line in lines, "\n".join(lines)
    if code == EXIT_NO_GPU:
        assert lines[-2:] == NO_GPU_LINES
    else:
        assert lines[-1] == "Install what is MISSING above, then run scripts/up again."
    if case in ("no docker", "engine down", "permission denied"):
        assert "skipped  NVIDIA container runtime: no Docker engine to ask" in lines
    if case == "no docker":
        assert "skipped  Docker Compose v2: no docker command" in lines


def test_up_check_accepts_a_cdi_spec_or_the_toolkit_hook_for_the_nvidia_runtime(
    host: Host, tmp_path: Path
) -> None:
    host.scenario["runtimes"] = {"runc": {"path": "runc"}}
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "other.yaml").write_text("kind: example.com/fpga\n", encoding="utf-8")
    (cdi / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n", "utf-8")
    env = {"MODEL_FLEET_CDI_DIRS": f"{tmp_path / 'absent'}:{cdi}"}
    result = host.run("up", "--check", env=env, hermetic=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"ok       NVIDIA container runtime: CDI spec {cdi / 'nvidia.yaml'} names nvidia.com/gpu"
        in result.stdout.splitlines()
    )

    (cdi / "nvidia.yaml").unlink()
    host.command("nvidia-container-runtime-hook", "exit 0")
    result = host.run("up", "--check", env=env, hermetic=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "ok       NVIDIA container runtime: nvidia-container-runtime-hook is installed"
        in result.stdout.splitlines()
    )


def test_up_check_without_gpu_allowed_skips_the_nvidia_checks(host: Host) -> None:
    (host.fakes / "nvidia-smi").unlink()
    host.scenario["runtimes"] = {"runc": {"path": "runc"}}
    result = host.run("up", "--check", env={"MODEL_FLEET_ALLOW_NO_GPU": "1"}, hermetic=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "skipped  NVIDIA driver: MODEL_FLEET_ALLOW_NO_GPU=1" in lines
    assert "skipped  NVIDIA container runtime: MODEL_FLEET_ALLOW_NO_GPU=1" in lines


@pytest.mark.parametrize("args", [["--bogus"], ["--check", "--prepare"]])
def test_up_rejects_unknown_arguments(host: Host, args: list[str]) -> None:
    result = host.run("up", *args)
    assert result.returncode == EXIT_USAGE
    assert "see scripts/up --help" in result.stderr
    assert host.calls() == []


# What scripts/up writes into .env for Ollama, and what the compose file falls back to.
OLLAMA_SETTINGS = {
    "OLLAMA_KEEP_ALIVE": "5m",
    "OLLAMA_MAX_LOADED_MODELS": "1",
    "OLLAMA_NUM_PARALLEL": "1",
    "OLLAMA_GPU_OVERHEAD": "536870912",
    "OLLAMA_NEW_ENGINE": "false",
    "OLLAMA_DEBUG": "0",
}


def test_the_compose_file_passes_ollamas_vram_settings_with_the_same_defaults() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text(encoding="utf-8"))
    environment = compose["services"]["ollama"]["environment"]
    assert environment == {k: f"${{{k}:-{v}}}" for k, v in OLLAMA_SETTINGS.items()}


# ---- scripts/up: token and .env -----------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_prepare_creates_the_token_and_env_when_absent(host: Host) -> None:
    result = host.run("up", "--prepare")
    assert result.returncode == 0, result.stderr
    token = host.root / "secrets" / "model_fleet_token"
    text = token.read_text(encoding="utf-8")
    assert text.endswith("\n") and len(text.strip()) >= 40 and "\n" not in text.strip()
    # Alertmanager (nobody) reads the bind-mounted file: world-readable, in a private dir.
    assert mode(token) == 0o644
    assert mode(token.parent) == 0o700
    env_file = host.root / ".env"
    assert mode(env_file) == 0o600
    values = dict(
        line.split("=", 1)
        for line in env_file.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    socket = Path("/var/run/docker.sock")
    if socket.is_socket():
        assert values["DOCKER_GID"] == str(socket.stat().st_gid)
    assert values["COMPOSE_FILE"] == "docker-compose.gpu.yml:docker-compose.monitoring.yml"
    assert values["MODEL_FLEET_GPU"] == "0"
    assert values["OLLAMA_VERSION"] == "0.12.6"
    assert len(values["GRAFANA_ADMIN_PASSWORD"]) >= 16
    # Ollama's VRAM settings, with the defaults docker-compose.gpu.yml falls back to.
    assert {k: values[k] for k in OLLAMA_SETTINGS} == OLLAMA_SETTINGS
    assert values.keys() == {
        "COMPOSE_FILE",
        "DOCKER_GID",
        "MODEL_FLEET_GPU",
        "OLLAMA_VERSION",
        "GRAFANA_ADMIN_PASSWORD",
        *OLLAMA_SETTINGS,
    }
    # Every variable the compose files read is there or shown commented out.
    env_text = env_file.read_text(encoding="utf-8")
    for name in ("APP_PORT", "PROMETHEUS_VERSION", "ALERTMANAGER_VERSION", "GRAFANA_VERSION"):
        assert f"# {name}=" in env_text
    assert f"created the token {token}" in result.stderr

    # Again: nothing is rewritten.
    before = (text, env_text)
    result = host.run("up", "--prepare")
    assert result.returncode == 0, result.stderr
    assert (token.read_text(encoding="utf-8"), env_file.read_text(encoding="utf-8")) == before
    assert f"keeping the token in {token}" in result.stderr
    assert f"keeping {env_file}" in result.stderr


def test_up_prepare_never_overwrites_existing_files(host: Host) -> None:
    token = host.root / "secrets" / "model_fleet_token"
    token.write_text("the operator's token\n", encoding="utf-8")
    token.chmod(0o640)
    env_file = host.root / ".env"
    env_file.write_text("DOCKER_GID=1234\n", encoding="utf-8")
    result = host.run("up", "--prepare")
    assert result.returncode == 0, result.stderr
    assert token.read_text(encoding="utf-8") == "the operator's token\n"
    assert mode(token) == 0o640
    assert env_file.read_text(encoding="utf-8") == "DOCKER_GID=1234\n"


def test_up_prepare_refuses_an_empty_token_file(host: Host) -> None:
    token = host.root / "secrets" / "model_fleet_token"
    token.touch()
    result = host.run("up", "--prepare")
    assert result.returncode == EXIT_FAILED
    assert f"{token} is empty: remove it and run scripts/up again" in result.stderr
    assert token.read_text(encoding="utf-8") == ""


def test_up_prepare_writes_where_the_environment_says(host: Host, tmp_path: Path) -> None:
    # Relative paths are taken from where the command runs, not from the checkout.
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "MODEL_FLEET_TOKEN_FILE": "state/secrets/token",
        "MODEL_FLEET_ENV_FILE": "state/compose.env",
        "DOCKER_GID": "4242",
    }
    result = host.run("up", "--prepare", env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    token = work / "state" / "secrets" / "token"
    assert mode(token) == 0o644
    assert mode(token.parent) == 0o700
    assert "DOCKER_GID=4242\n" in (work / "state" / "compose.env").read_text(encoding="utf-8")
    assert mode(work / "state" / "compose.env") == 0o600
    assert not (host.root / ".env").exists()
    assert not (host.root / "secrets" / "model_fleet_token").exists()


# ---- scripts/up: the stack ----------------------------------------------------------------


def test_up_builds_starts_pulls_the_missing_models_and_prints_urls_and_status(
    host: Host,
) -> None:
    host.run("up", "--prepare")
    result = host.run("up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert host.compose_calls() == [
        ["version", "--short"],
        ["build"],
        ["build", "remediator"],
        ["run", "--rm", "--no-deps", "-T", "remediator", "model-fleet", "check-config"],
        ["up", "-d", "--wait"],
        ["exec", "-T", "remediator", "model-fleet", "status"],
        ["exec", "-T", "ollama", "ollama", "list"],
        ["exec", "-T", "ollama", "ollama", "pull", "phi3:mini"],
        ["exec", "-T", "ollama", "ollama", "pull", "qwen2.5:0.5b"],
        ["port", "grafana", "3000"],
        ["port", "prometheus", "9090"],
        ["port", "alertmanager", "9093"],
        ["port", "remediator", "8080"],
        ["port", "app", "8000"],
        ["port", "exporter", "9842"],
        ["port", "ollama", "11434"],
        ["exec", "-T", "remediator", "model-fleet", "status"],
    ]
    out = result.stdout
    assert "pulling phi3:mini 100%" in out  # Ollama's progress reaches the user
    assert "model llama3.2:3b: already pulled" in result.stderr
    summary = out[out.index("model-fleet is up:") :].splitlines()
    assert summary[:6] == [
        "model-fleet is up:",
        "  Grafana       http://localhost:3000/",
        "  Prometheus    http://localhost:9090/",
        "  Alertmanager  http://localhost:9093/",
        "  remediator    http://127.0.0.1:8080/status",
        "  app           http://localhost:18000/",
    ]
    assert summary[7:10] == [
        "Watch the fleet live (Ctrl-C ends it):",
        "  docker compose exec remediator model-fleet watch",
        "Status (docker compose exec remediator model-fleet status):",
    ]
    assert json.loads("\n".join(summary[10:])) == status_json()

    # Idempotent: a second run keeps the files and pulls nothing.
    host.log.unlink()
    host.scenario["ollama_list"] = LADDER
    result = host.run("up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [c for c in host.compose_calls() if "pull" in c]


def test_up_uses_the_hooks_for_a_test_stack(host: Host, tmp_path: Path) -> None:
    # What the compose stack test runs: a CPU-only override, its own project, token and env.
    (host.fakes / "nvidia-smi").unlink()
    host.scenario["runtimes"] = {"runc": {"path": "runc"}}
    host.scenario["status"] = {
        "fleets": {
            "a": status_json(["llama3.2:3b", "tinyllama:1.1b"], "a"),
            "b": status_json(["tinyllama:1.1b", "qwen2.5:0.5b"], "b"),
        },
        "notices": [],
    }
    host.scenario["ollama_list"] = []
    (host.root / "deploy" / "compose.start-interval.yml").write_text("services: {}\n", "utf-8")
    overrides = [tmp_path / "cpu.yml", tmp_path / "images.yml"]
    token = tmp_path / "state" / "token"
    env_file = tmp_path / "state" / "compose.env"
    env = {
        "MODEL_FLEET_ALLOW_NO_GPU": "1",
        "MODEL_FLEET_COMPOSE_OVERRIDE": ":".join(map(str, overrides)),
        "COMPOSE_PROJECT_NAME": "mf-test",
        "MODEL_FLEET_TOKEN_FILE": str(token),
        "MODEL_FLEET_ENV_FILE": str(env_file),
        "DOCKER_GID": "4242",
    }
    result = host.run("up", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    compose = [c for c in host.calls() if c["argv"][:1] == ["compose"]]
    build = next(c for c in compose if "build" in c["argv"])
    argv = build["argv"]
    files = [argv[i + 1] for i, a in enumerate(argv) if a == "-f"]
    overlay = files[3]
    assert files == [
        "docker-compose.gpu.yml",
        "docker-compose.monitoring.yml",
        "deploy/compose.start-interval.yml",  # engine 27 takes start_interval
        overlay,
        *map(str, overrides),
    ]
    # The shipped file names secrets/model_fleet_token; the overlay points compose at ours.
    assert build["files"][overlay] == f'secrets:\n  model_fleet_token:\n    file: "{token}"\n'
    assert not Path(overlay).exists(), "the overlay is removed when scripts/up exits"
    assert argv[argv.index("-p") + 1] == "mf-test"
    assert argv[argv.index("--env-file") + 1] == str(env_file)
    assert (
        "COMPOSE_FILE=docker-compose.gpu.yml:docker-compose.monitoring.yml"
        ":deploy/compose.start-interval.yml\n"
    ) in env_file.read_text(encoding="utf-8")
    # Several fleets: each model once, in ladder order.
    pulls = [c[-1] for c in host.compose_calls() if c[:4] == ["exec", "-T", "ollama", "ollama"]]
    assert pulls == ["list", "llama3.2:3b", "tinyllama:1.1b", "qwen2.5:0.5b"]

    # MODEL_FLEET_SKIP_PULL, and an engine too old for start_interval.
    host.log.unlink()
    host.scenario["engine"] = "24.0.7"
    result = host.run("up", env={**env, "MODEL_FLEET_SKIP_PULL": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not pulling models (MODEL_FLEET_SKIP_PULL=1)" in result.stderr
    assert not [c for c in host.compose_calls() if c[:3] == ["exec", "-T", "ollama"]]
    build_argv = next(c["argv"] for c in host.calls() if "build" in c["argv"])
    assert "deploy/compose.start-interval.yml" not in build_argv


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("build", "build failed (see above)"),
        ("run", "config/model-fleet.yaml is invalid (see above)"),
        (
            "up",
            "the stack did not become healthy: docker compose ps, docker compose logs SERVICE",
        ),
        ("pull", "pulling phi3:mini failed (a ladder name must match Ollama's library exactly)"),
    ],
)
def test_up_names_the_step_that_failed(host: Host, step: str, message: str) -> None:
    host.scenario["fail"] = {step: 17}
    result = host.run("up")
    assert result.returncode == EXIT_FAILED, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == f"[up] {message}"
    assert "model-fleet is up:" not in result.stdout


def test_up_stops_at_a_missing_prerequisite_before_touching_anything(host: Host) -> None:
    host.scenario["compose"] = None
    result = host.run("up")
    assert result.returncode == EXIT_MISSING
    assert host.compose_calls() == [["version", "--short"]]
    assert not (host.root / ".env").exists()


# ---- scripts/down -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"), [([], ["down"]), (["--volumes"], ["down", "--volumes"])]
)
def test_down_keeps_volumes_unless_asked(host: Host, args: list[str], expected: list[str]) -> None:
    env = {"COMPOSE_PROJECT_NAME": "mf-test", "MODEL_FLEET_COMPOSE_OVERRIDE": "cpu.yml"}
    result = host.run("down", *args, env=env)
    assert result.returncode == 0, result.stderr
    [call] = host.calls()
    argv = call["argv"]
    assert argv[argv.index("-p") + 1] == "mf-test"
    files = [argv[i + 1] for i, a in enumerate(argv) if a == "-f"]
    assert files == [
        "docker-compose.gpu.yml",
        "docker-compose.monitoring.yml",
        f"{host.root}/cpu.yml",
    ]
    assert host.compose_calls() == [expected]
    kept = "volumes kept (scripts/down --volumes removes them)"
    assert (kept in result.stderr) == (not args)


def test_down_works_without_env_file_and_reports_failure(host: Host) -> None:
    # Compose interpolates DOCKER_GID even for down; scripts/down supplies a stand-in.
    host.command("docker", 'echo "DOCKER_GID=${DOCKER_GID-unset}" >&2\nexit 3')
    result = host.run("down")
    assert result.returncode == 1
    assert "DOCKER_GID=0" in result.stderr
    assert "[down] docker compose down failed (see above)" in result.stderr


# ---- scripts/bootstrap ---------------------------------------------------------------------

BOOTSTRAP_PACKAGES = [
    "busybox-static",
    "prometheus",
    "prometheus-alertmanager",
    "mtail",
    "gcc",
    "curl",
    "debootstrap",
    "zsh",
]


def fake_dpkg(host: Host, installed: list[str]) -> None:
    """dpkg-query that knows exactly these packages as installed."""
    cases = "|".join(installed) or "__none__"
    host.command(
        "dpkg-query",
        f'for p; do :; done\ncase "$p" in {cases}) printf "install ok installed";; '
        "*) exit 1;; esac",
    )


def venv_ready(host: Host) -> None:
    """A .venv the bootstrap takes as up to date (so no test installs anything)."""
    python = host.root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n", encoding="utf-8")
    python.chmod(0o755)
    stamp = host.root / ".venv" / ".model-fleet-installed"
    stamp.touch()
    os.utime(host.root / "pyproject.toml", (1, 1))


@pytest.mark.parametrize(
    ("case", "engine_line", "docker_io"),
    [
        ("engine answers", "engine: a Docker engine answers; would use it", False),
        (
            "dockerd installed, not running",
            "engine: none answers; would start the installed {fakes}/dockerd",
            False,
        ),
        (
            "docker client only",
            "engine: no Docker engine here (a docker client alone is not one); would install"
            " docker.io and start it",
            True,
        ),
        (
            "nothing",
            "engine: no Docker engine here (a docker client alone is not one); would install"
            " docker.io and start it",
            True,
        ),
    ],
)
def test_bootstrap_uses_the_engine_the_host_has(
    host: Host, case: str, engine_line: str, docker_io: bool
) -> None:
    fake_dpkg(host, BOOTSTRAP_PACKAGES)
    venv_ready(host)
    if case != "engine answers":
        host.scenario["engine"] = None
    if case == "dockerd installed, not running":
        host.command("dockerd", "exit 0")
    if case == "nothing":
        (host.fakes / "docker").unlink()
    result = host.run("bootstrap", "--dry-run", hermetic=True)
    assert result.returncode == 0, result.stderr
    lines = [line.removeprefix("[bootstrap] ") for line in result.stderr.splitlines()]
    packages = "packages: would install docker.io (service starts blocked by /usr/sbin/policy-rc.d)"
    assert lines == [
        engine_line.format(fakes=host.fakes),
        packages if docker_io else "packages: all installed",
        "venv: up to date",
    ]
    # A dry run asks and changes nothing.
    assert all(c["argv"][:1] == ["version"] for c in host.calls())


def test_bootstrap_dry_run_lists_the_missing_packages(host: Host) -> None:
    fake_dpkg(host, ["gcc", "curl", "mtail"])
    result = host.run("bootstrap", "--dry-run", hermetic=True)
    assert result.returncode == 0, result.stderr
    assert (
        "[bootstrap] packages: would install busybox-static prometheus prometheus-alertmanager"
        " debootstrap zsh (service starts blocked by /usr/sbin/policy-rc.d)"
    ) in result.stderr.splitlines()
    assert (
        "[bootstrap] venv: would create .venv and install model-fleet with its dev extras"
        in result.stderr.splitlines()
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="bootstrap installs packages only as root")
@pytest.mark.parametrize("existing", [None, "#!/bin/sh\n# the host's own policy\nexit 0\n"])
@pytest.mark.parametrize("apt_exit", [0, 100])
def test_bootstrap_blocks_service_starts_only_during_the_install(
    host: Host, tmp_path: Path, existing: str | None, apt_exit: int
) -> None:
    policy = tmp_path / "policy-rc.d"
    if existing is not None:
        policy.write_text(existing, encoding="utf-8")
    seen = tmp_path / "apt-saw"
    fake_dpkg(host, [p for p in BOOTSTRAP_PACKAGES if p != "prometheus"])
    # apt-get records what policy-rc.d answers while it installs.
    host.command(
        "apt-get",
        f'echo "$*" >> "{seen}"\n'
        f'case "$*" in *install*) "{policy}" prometheus start; echo "policy $?" >> "{seen}"\n'
        f"  exit {apt_exit};; esac",
    )
    venv_ready(host)
    result = host.run("bootstrap", env={"MODEL_FLEET_POLICY_RC_D": str(policy)})
    assert result.returncode == (0 if apt_exit == 0 else apt_exit), result.stderr
    calls = seen.read_text(encoding="utf-8").splitlines()
    assert calls == ["update -qq", "install -y -qq prometheus", "policy 101"]
    if existing is None:
        assert not policy.exists()
    else:
        assert policy.read_text(encoding="utf-8") == existing
    assert not policy.with_name("policy-rc.d.model-fleet-saved").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="bootstrap installs packages only as root")
def test_bootstrap_recovers_from_a_run_killed_during_the_install(
    host: Host, tmp_path: Path
) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text(
        "#!/bin/sh\n# written by model-fleet's scripts/bootstrap\nexit 101\n", "utf-8"
    )
    saved = tmp_path / "policy-rc.d.model-fleet-saved"
    saved.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    fake_dpkg(host, [p for p in BOOTSTRAP_PACKAGES if p != "debootstrap"])
    host.command("apt-get", "exit 0")
    venv_ready(host)
    result = host.run("bootstrap", env={"MODEL_FLEET_POLICY_RC_D": str(policy)})
    assert result.returncode == 0, result.stderr
    assert "removing the policy-rc.d an interrupted run left" in result.stderr
    assert policy.read_text(encoding="utf-8") == "#!/bin/sh\nexit 0\n"
    assert not saved.exists()
