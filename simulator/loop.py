"""The whole model-fleet loop on one machine, without a GPU or Ollama.

Real parts: the Docker engine (a model-server container that prints Ollama's VRAM error lines
and an application container that reads its model from a mounted file), the exporter (its
real NVML code path against the fake libnvidia-ml.so), Prometheus with the shipped config and
rules, Alertmanager with the shipped config (one replica or a cluster), and the remediator
under gunicorn with a bearer token. Only Ollama's HTTP API is a stand-in. Everything listens
on 127.0.0.1. Used by the end-to-end tests, the live demo and the benchmarks.

With ``LoopOptions.move_first`` the fake NVML shows several GPUs and the fleet may move its model
server between them (``placement: move_first``, live figures from the loop's Prometheus): the
model server's container carries an NVIDIA device request, so the loop's engine must be one that
starts such a container without a GPU (simulator.engines, ``gpu_hook=True``). A move recreates
the container under the same name: ``Loop.server`` finds it by that name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

from simulator import fake_nvml, prom_env
from simulator.expositions import sample_values
from simulator.fake_ollama import FakeOllama
from simulator.images import BUSYBOX_IMAGE, build_busybox_image
from simulator.local_http import http_get, http_post, wait_until
from simulator.loop_setup import (
    APP_HEALTH_PORT,
    APP_HEALTH_SCRIPT,
    APP_SCRIPT,
    ERROR_SPACING_SECONDS,
    LOAD_FAILED_LINE,
    LOOP_LABEL,
    MODEL_MIB,
    MODEL_SERVER_LOG_CONFIG,
    OOM_LINE,
    OWNER_LABEL,
    LoopOptions,
    base_env,
    container_gpu,
    engine_client,
    gpu_request,
    model_server_script,
    process_owner,
    remediator_config,
    simulated_gpus,
    stop_group,
)
from simulator.stop_signals import held_back

# Where the e2e tests, the demo and the benchmarks import them from.
__all__ = [
    "ERROR_SPACING_SECONDS",
    "MODEL_MIB",
    "Loop",
    "LoopOptions",
    "http_get",
    "http_post",
    "running_loop",
    "sample_values",
    "wait_until",
]

MIB = 1024 * 1024


class Loop:
    """Starts every part of the loop on 127.0.0.1 and stops them all on close()."""

    def __init__(self, workdir: Path, options: LoopOptions | None = None) -> None:
        self.workdir = workdir
        self.options = options or LoopOptions()
        self.fleet = self.options.fleet
        self.token = secrets.token_urlsafe(24)
        self._stack = contextlib.ExitStack()
        self.docker = engine_client(self.options)
        self.app_env = workdir / "app" / "app.env"
        self.ctl = workdir / "ctl"
        self.sim = workdir / "sim"
        self.nvml_state = workdir / "nvml.state"
        self.ollama = FakeOllama(models={"llama3.2:3b": 2048 * MIB}, line_delay=0.02)
        self.server_name = f"{self.fleet}-ollama"
        self._server: Any = None  # the model server's container as last found (Loop.server)
        self.app: Any = None
        self._others_mib = self.options.others_mib()  # VRAM used by others, by GPU
        # Prometheus' address, fixed before the remediator starts when its config names it.
        self._prometheus_listen: str | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.prometheus: prom_env.Prometheus | None = None
        self.alertmanagers: list[prom_env.Alertmanager] = []
        self.exporter_url = ""
        self.remediator_url = ""
        self.app_health_url = ""  # with LoopOptions.app_health: the app's /healthz
        self._last_error = -ERROR_SPACING_SECONDS  # time.monotonic() of the last emit_errors line

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Loop:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start every part and wait until Prometheus scrapes both services."""
        self.start_host()
        self._start_alertmanagers()
        self._start_prometheus()

    def start_host(self) -> None:
        """Start one host's parts: containers, Ollama stand-in, NVML, remediator, exporter."""
        for d in (self.app_env.parent, self.ctl, self.sim):
            d.mkdir(parents=True, exist_ok=True)
        self.app_env.write_text(f"OLLAMA_MODEL={self.options.initial_model}\n")
        (self.workdir / "token").write_text(self.token + "\n")
        build_busybox_image(self.docker)
        self._stack.callback(self._remove_containers)
        self.ollama.start()
        self._stack.callback(self.ollama.stop)
        self.ollama.load(self.options.initial_model)
        self._start_containers()
        self._start_nvml()
        if self.options.move_first:
            self._prometheus_listen = f"127.0.0.1:{prom_env.free_port()}"
        self._start_remediator()
        self._start_exporter()

    def close(self) -> None:
        """Stop everything that was started, newest first."""
        for name, proc in reversed(list(self.procs.items())):
            stop_group(proc)
            self.procs.pop(name)
        self._stack.close()

    # -- parts ----------------------------------------------------------------------------

    def _labels(self, role: str) -> dict[str, str]:
        # The owner: what a later run may remove once this process has ended (a SIGKILL).
        return {
            "model-fleet.fleet": self.fleet,
            "model-fleet.role": role,
            LOOP_LABEL: self.fleet,
            OWNER_LABEL: process_owner(),
        }

    def _start_containers(self) -> None:
        # A stop signal waits until both exist: the clean-up then finds and removes them.
        with held_back():
            self._create_containers()

    @property
    def server(self) -> Any:
        """The model server's container, found by its name: a move replaces it with a new
        container of the same name (None before the loop made it)."""
        if self._server is not None:
            # Mid-move the name is free for a moment: the container last found, then.
            with contextlib.suppress(docker.errors.NotFound):
                self._server = self.docker.containers.get(self.server_name)
        return self._server

    def _create_containers(self) -> None:
        config = {str(self.app_env.parent): {"bind": "/config", "mode": "ro"}}
        # On GPU 0 as the fleet's config says; the engine must accept the request (the hook).
        gpu = {"device_requests": [gpu_request(0)]} if self.options.move_first else {}
        self._server = self.docker.containers.run(
            BUSYBOX_IMAGE,
            ["sh", "-c", model_server_script()],
            name=self.server_name,
            labels=self._labels("ollama"),
            log_config=MODEL_SERVER_LOG_CONFIG,
            volumes={
                **config,
                str(self.ctl): {"bind": "/ctl", "mode": "rw"},
                str(self.sim): {"bind": "/sim", "mode": "ro"},
            },
            detach=True,
            **gpu,
        )
        app: dict[str, Any] = {}
        if self.options.app_health:
            # A fixed host port: an ephemeral one would change with every restart.
            port = prom_env.free_port()
            self.app_health_url = f"http://127.0.0.1:{port}/healthz"
            app["ports"] = {f"{APP_HEALTH_PORT}/tcp": ("127.0.0.1", port)}
        self.app = self.docker.containers.run(
            BUSYBOX_IMAGE,
            ["sh", "-c", APP_HEALTH_SCRIPT if self.options.app_health else APP_SCRIPT],
            name=f"{self.fleet}-app",
            labels=self._labels("app"),
            volumes=config,
            detach=True,
            **app,
        )

    def _remove_containers(self) -> None:
        for c in self.docker.containers.list(
            all=True, filters={"label": f"{LOOP_LABEL}={self.fleet}"}
        ):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)

    def _start_nvml(self) -> None:
        self.nvml_lib = fake_nvml.build(self.workdir / "nvml")
        self.set_vram()

    def set_vram(self, other_used_mib: int | None = None, gpu: int = 0) -> None:
        """Simulate VRAM used by others on ``gpu`` (None: as before, e.g. after a switch or a
        move); the model server's process holds its model's size on the GPU its container was
        given, if the model fits there."""
        if other_used_mib is not None:
            self._others_mib[gpu] = other_used_mib
        total = self.options.gpu_total_mib
        model = self.current_model_in_config()
        model_mib = MODEL_MIB.get(model, 1000)
        pid, on = 0, 0
        server = self.server
        if server is not None:
            pid = int(server.attrs["State"].get("Pid") or 0)
            on = container_gpu(server.attrs)
        free_for_model = total - self._others_mib[on]
        simulated_gpus(total, self._others_mib, model_mib, pid, on).write(self.nvml_state)
        if self.options.simulate_vram:
            tmp = self.sim / ".free_mib"
            tmp.write_text(f"{free_for_model}\n")
            os.replace(tmp, self.sim / "free_mib")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # Appended: a part started again (a scenario's restart) keeps its earlier log.
        log = (self.workdir / f"{name}.log").open("ab")
        self._stack.callback(log.close)
        proc = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def _start_remediator(self) -> None:
        cfg = self.workdir / "model-fleet.yaml"
        cfg.write_text(
            yaml.safe_dump(
                remediator_config(
                    self.options,
                    self.workdir,
                    self.app_env,
                    self.ollama.url,
                    f"http://{self._prometheus_listen}" if self._prometheus_listen else None,
                ),
                sort_keys=False,
            )
        )
        port = prom_env.free_port()
        self.remediator_url = f"http://127.0.0.1:{port}"
        env = {**base_env(self.options), "MODEL_FLEET_TOKEN_FILE": str(self.workdir / "token")}
        exe = [sys.executable, "-m", "remediator.cli"]
        argv = [*exe, "serve", "--config", str(cfg), "--bind", f"127.0.0.1:{port}"]
        argv += ["--workers", str(self.options.remediator_workers)]
        proc = self._spawn("remediator", argv, env)
        self._wait_http(self.remediator_url + "/healthz", proc, "the remediator")

    def _start_exporter(self) -> None:
        port = prom_env.free_port()
        self.exporter_url = f"http://127.0.0.1:{port}"
        env = {**base_env(self.options), **fake_nvml.env_for(self.nvml_lib, self.nvml_state)}
        argv = [sys.executable, "-m", "exporter.cli", "serve", "--bind", f"127.0.0.1:{port}"]
        proc = self._spawn("exporter", argv, env)
        self._wait_http(self.exporter_url + "/healthz", proc, "the exporter")

    def _start_alertmanagers(self) -> None:
        config = prom_env.render_alertmanager_config(
            webhook_url=f"{self.remediator_url}/webhook/alertmanager",
            credentials_file=self.workdir / "token",
            # Alerts for people reach the remediator too: it logs them and shows them in status.
            notify_url=f"{self.remediator_url}/webhook/notify",
        )
        replicas = self.options.alertmanager_replicas
        cluster = (
            [f"127.0.0.1:{prom_env.free_port()}" for _ in range(replicas)] if replicas > 1 else []
        )
        for i in range(replicas):
            am = self._stack.enter_context(
                prom_env.start_alertmanager(
                    config,
                    cluster_listen=cluster[i] if cluster else None,
                    peers=[p for j, p in enumerate(cluster) if j != i],
                )
            )
            self.alertmanagers.append(am)

    def _rules_file(self) -> Path:
        """The shipped rules, or a copy with the ``for`` of ``options.alert_for`` changed."""
        rules = prom_env.RULES_FILE
        if self.options.alert_for:
            rules = self.workdir / "rules" / rules.name
            rules.parent.mkdir(exist_ok=True)
            rendered = prom_env.render_rules(self.options.alert_for)
            rules.write_text(yaml.safe_dump(rendered, sort_keys=False))
        return rules

    def _start_prometheus(self) -> None:
        rules = self._rules_file()
        config = prom_env.render_prometheus_config(
            exporter=self.exporter_url.removeprefix("http://"),
            remediator=self.remediator_url.removeprefix("http://"),
            rule_files=[rules],
        )
        targets = [am.url.removeprefix("http://") for am in self.alertmanagers]
        config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": targets}]
        self.prometheus = self._stack.enter_context(
            prom_env.start_prometheus(config, listen=self._prometheus_listen)
        )
        self.prometheus.wait_targets_up(60)

    def _wait_http(self, url: str, proc: subprocess.Popen[bytes], what: str) -> None:
        def up() -> bool:
            if proc.poll() is not None:
                log = self.workdir / f"{next(n for n, p in self.procs.items() if p is proc)}.log"
                raise RuntimeError(
                    f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
            return bool(http_get(url, timeout=1))

        wait_until(up, 60, f"{what} at {url}", interval=0.1)

    # -- driving and observing ----------------------------------------------------------

    def emit(self, lines: list[str], timeout: float = 10.0) -> None:
        """Make the model server print ``lines`` (waits until it has)."""
        target = self.ctl / "emit"
        wait_until(lambda: not target.exists(), timeout, "the model server to take earlier lines")
        tmp = self.ctl / ".emit"
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, target)
        wait_until(lambda: not target.exists(), timeout, "the model server to print the lines")

    def emit_errors(self, count: int) -> None:
        """Print ``count`` failed model loads (two matching lines each), one VRAM error each.

        Each comes ERROR_SPACING_SECONDS after the previous one (the exporter groups the lines
        of one failure on their timestamps); the last returns as soon as it was printed.
        """
        for _ in range(count):
            time.sleep(max(0.0, self._last_error + ERROR_SPACING_SECONDS - time.monotonic()))
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
            self.emit([OOM_LINE, f"time={stamp}Z {LOAD_FAILED_LINE}"])
            self._last_error = time.monotonic()

    def current_model_in_config(self) -> str:
        """The model the application's config names now."""
        for raw in self.app_env.read_text().splitlines():
            if raw.startswith("OLLAMA_MODEL="):
                return raw.split("=", 1)[1].strip()
        return ""

    def status(self) -> dict[str, Any]:
        """The remediator's /status for the loop's fleet."""
        return dict(json.loads(http_get(f"{self.remediator_url}/status?fleet={self.fleet}")))

    def history(self) -> list[dict[str, Any]]:
        """The remediator's switch history."""
        return list(json.loads(http_get(f"{self.remediator_url}/history?fleet={self.fleet}")))

    def exporter_metrics(self) -> str:
        """The exporter's /metrics text."""
        return http_get(self.exporter_url + "/metrics").decode()

    def remediator_metrics(self) -> str:
        """The remediator's /metrics text."""
        return http_get(self.remediator_url + "/metrics").decode()

    def errors_since_start(self) -> float:
        """What the exporter says now (-1 when the series is missing)."""
        values = sample_values(
            self.exporter_metrics(), "model_fleet_vram_errors_since_start", fleet=self.fleet
        )
        return max(values) if values else -1.0

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        """Prometheus' firing alerts called ``alertname`` for the loop's fleet."""
        assert self.prometheus is not None
        return [
            a
            for a in self.prometheus.firing_alerts()
            if a["labels"].get("alertname") == alertname
            and a["labels"].get("fleet") in (self.fleet, None)
        ]

    def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """POST to the remediator with the token."""
        return http_post(
            self.remediator_url + path, {"fleet": self.fleet, **(body or {})}, self.token
        )

    def started_at(self, container: Any) -> datetime:
        """When ``container`` last started."""
        container.reload()
        text = str(container.attrs["State"]["StartedAt"])
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00")

    def app_log_tail(self) -> str:
        """The last line the application printed."""
        lines = self.app.logs().decode().strip().splitlines()
        return lines[-1] if lines else ""

    def diagnostics(self) -> str:
        """Where every part stands: for the message of a failed wait."""
        parts = []
        for what, get in (
            ("status", lambda: json.dumps(self.status())),
            ("history", lambda: json.dumps(self.history())),
            ("errors since start", lambda: str(self.errors_since_start())),
            (
                "firing",
                lambda: str(
                    [a["labels"] for a in self.prometheus.firing_alerts()]
                    if self.prometheus
                    else []
                ),
            ),
            (
                "alertmanager",
                lambda: str(
                    [
                        (a["labels"].get("alertname"), a["status"]["state"])
                        for am in self.alertmanagers
                        for a in am.alerts()
                    ]
                ),
            ),
        ):
            try:
                parts.append(f"{what}: {get()}")
            except Exception as exc:  # diagnostics must never hide the original failure
                parts.append(f"{what}: <{exc}>")
        # Without gunicorn's access lines for reads: a waiting test polls /history and /status.
        lines = [line for line in self.log("remediator").splitlines() if '"GET /' not in line]
        tail = "\n".join(lines[-40:])
        # The exporter's too: a count that does not move is the exporter's to explain.
        exporter = "\n".join(self.log("exporter").splitlines()[-20:])
        return "\n".join([*parts, "remediator log:", tail, "exporter log:", exporter])

    def log(self, name: str) -> str:
        """A process's log, for failure messages."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def running_loop(workdir: Path, options: LoopOptions | None = None) -> Iterator[Loop]:
    """A started Loop, closed on exit."""
    with Loop(workdir, options) as loop:
        yield loop
