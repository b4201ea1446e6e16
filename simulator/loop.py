"""The whole model-fleet loop on one machine, without a GPU or Ollama.

Real parts: the Docker engine (a model-server container that prints Ollama's VRAM error lines
and an application container that reads its model from a mounted file), the exporter (its
real NVML code path against the fake libnvidia-ml.so), Prometheus with the shipped config and
rules, Alertmanager with the shipped config (one replica or a cluster), and the remediator
under gunicorn with a bearer token. Only Ollama's HTTP API is a stand-in. Everything listens
on 127.0.0.1. Used by the end-to-end tests, the live demo and the benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import yaml

from exporter.incidents import DEFAULT_WINDOW_SECONDS
from simulator import fake_nvml, prom_env
from simulator.fake_ollama import FakeOllama
from simulator.images import BUSYBOX_IMAGE, build_busybox_image

T = TypeVar("T")
MIB = 1024 * 1024
LOOP_LABEL = "model-fleet.sim"

# The default ladder's sizes, for the model server's "does my model fit?" check.
MODEL_MIB = {"llama3.2:3b": 2048, "phi3:mini": 2200, "tinyllama:1.1b": 637, "qwen2.5:0.5b": 397}

# An Ollama-like model server. Lines written by the host into /ctl/emit are printed as they
# are (the tests choose the exact lines). With /sim/free_mib present it also behaves like a
# server short of VRAM: when its model (from the app's config) does not fit what is free, its
# load fails every 2.5 s (more than the exporter's incident window: one error each), printed
# as Ollama does: llama.cpp's allocation failure, then the server's "error loading" line.
MODEL_SERVER_SCRIPT = r"""
trap 'exit 0' TERM
LISTEN='level=INFO source=routes.go:1475 msg="Listening on [::]:11434 (version 0.12.6)"'
ALLOC="ggml_backend_cuda_buffer_type_alloc_buffer: allocating"
OOM="MiB on device 0: cudaMalloc failed: out of memory"
FAILED='level=ERROR source=sched.go:456 msg="error loading llama server" error="llama runner'
FAILED="$FAILED process has terminated: cudaMalloc failed: out of memory\""
echo "time=$(date -u +%Y-%m-%dT%H:%M:%S.000Z) $LISTEN"
while true; do
  if [ -f /ctl/emit ]; then cat /ctl/emit; rm -f /ctl/emit; fi
  if [ -f /sim/free_mib ] && [ -f /config/app.env ]; then
    . /config/app.env
    case "$OLLAMA_MODEL" in
      llama3.2:3b) need=2048 ;; phi3:mini) need=2200 ;; tinyllama:1.1b) need=637 ;;
      qwen2.5:0.5b) need=397 ;; *) need=1000 ;;
    esac
    read free < /sim/free_mib
    if [ "$need" -gt "$free" ]; then
      echo "$ALLOC $need.00 $OOM"
      echo "time=$(date -u +%Y-%m-%dT%H:%M:%S.000Z) $FAILED"
      sleep 2.5
    fi
  fi
  sleep 0.1
done
"""

# The application: reads its model from the mounted config on start, as docs/configuration.md asks.
APP_SCRIPT = r"""
trap 'exit 0' TERM
. /config/app.env
echo "app running $OLLAMA_MODEL"
while true; do sleep 0.2; done
"""

OOM_LINE = (
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 2048.00 MiB on device 0: "
    "cudaMalloc failed: out of memory"
)
# The server's line after it: the same failed load, so one error with OOM_LINE.
LOAD_FAILED_LINE = (
    'level=ERROR source=sched.go:456 msg="error loading llama server" '
    'error="llama runner process has terminated: cudaMalloc failed: out of memory"'
)
# Errors this far apart are separate errors for the exporter (exporter.incidents).
ERROR_SPACING_SECONDS = DEFAULT_WINDOW_SECONDS + 0.5


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns a truthy value; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            detail = f" ({last})" if last else ""
            extra = f"\n{diagnose()}" if diagnose else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{detail}{extra}")
        time.sleep(interval)


def http_get(url: str, token: str | None = None, timeout: float = 5.0) -> bytes:
    """GET ``url`` and return the body."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return bytes(resp.read())


def http_post(
    url: str, body: dict[str, Any], token: str, timeout: float = 120.0
) -> tuple[int, Any]:
    """POST JSON with the bearer token; return (status, decoded JSON)."""
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def sample_values(text: str, name: str, **labels: str) -> list[float]:
    """Values of the samples called ``name`` whose labels include ``labels``, from /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out.append(float(s.value))
    return out


@dataclass
class LoopOptions:
    """What kind of loop to run."""

    fleet: str = field(default_factory=lambda: f"e2e-{uuid.uuid4().hex[:6]}")
    cooldown_seconds: float = 5.0
    alertmanager_replicas: int = 1
    simulate_vram: bool = False  # the demo: the server fails when its model does not fit
    gpu_total_mib: int = 4096
    other_used_mib: int = 1024  # VRAM used by something other than the model
    remediator_workers: int = 2
    keep_logs: bool = False
    # Alert name -> the `for` of a test copy of the shipped rules (prom_env.render_rules);
    # empty: the shipped rules as they are.
    alert_for: dict[str, str] = field(default_factory=dict)


class Loop:
    """Starts every part of the loop on 127.0.0.1 and stops them all on close()."""

    def __init__(self, workdir: Path, options: LoopOptions | None = None) -> None:
        self.workdir = workdir
        self.options = options or LoopOptions()
        self.fleet = self.options.fleet
        self.token = secrets.token_urlsafe(24)
        self._stack = contextlib.ExitStack()
        self.docker = docker.from_env(timeout=60)
        self.app_env = workdir / "app" / "app.env"
        self.ctl = workdir / "ctl"
        self.sim = workdir / "sim"
        self.nvml_state = workdir / "nvml.state"
        self.ollama = FakeOllama(models={"llama3.2:3b": 2048 * MIB}, line_delay=0.02)
        self.server: Any = None
        self.app: Any = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.prometheus: prom_env.Prometheus | None = None
        self.alertmanagers: list[prom_env.Alertmanager] = []
        self.exporter_url = ""
        self.remediator_url = ""
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
        for d in (self.app_env.parent, self.ctl, self.sim):
            d.mkdir(parents=True, exist_ok=True)
        self.app_env.write_text("OLLAMA_MODEL=llama3.2:3b\n")
        (self.workdir / "token").write_text(self.token + "\n")
        build_busybox_image(self.docker)
        self._stack.callback(self._remove_containers)
        self.ollama.start()
        self._stack.callback(self.ollama.stop)
        self.ollama.load("llama3.2:3b")
        self._start_containers()
        self._start_nvml()
        self._start_remediator()
        self._start_exporter()
        self._start_alertmanagers()
        self._start_prometheus()

    def close(self) -> None:
        """Stop everything that was started, newest first."""
        for name, proc in reversed(list(self.procs.items())):
            _stop_group(proc)
            self.procs.pop(name)
        self._stack.close()

    # -- parts ----------------------------------------------------------------------------

    def _labels(self, role: str) -> dict[str, str]:
        return {"model-fleet.fleet": self.fleet, "model-fleet.role": role, LOOP_LABEL: self.fleet}

    def _start_containers(self) -> None:
        config = {str(self.app_env.parent): {"bind": "/config", "mode": "ro"}}
        self.server = self.docker.containers.run(
            BUSYBOX_IMAGE,
            ["sh", "-c", MODEL_SERVER_SCRIPT],
            name=f"{self.fleet}-ollama",
            labels=self._labels("ollama"),
            volumes={
                **config,
                str(self.ctl): {"bind": "/ctl", "mode": "rw"},
                str(self.sim): {"bind": "/sim", "mode": "ro"},
            },
            detach=True,
        )
        self.app = self.docker.containers.run(
            BUSYBOX_IMAGE,
            ["sh", "-c", APP_SCRIPT],
            name=f"{self.fleet}-app",
            labels=self._labels("app"),
            volumes=config,
            detach=True,
        )

    def _remove_containers(self) -> None:
        for c in self.docker.containers.list(
            all=True, filters={"label": f"{LOOP_LABEL}={self.fleet}"}
        ):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)

    def _start_nvml(self) -> None:
        self.nvml_lib = fake_nvml.build(self.workdir / "nvml")
        self.set_vram(self.options.other_used_mib)

    def set_vram(self, other_used_mib: int) -> None:
        """Simulate VRAM used by others; the model server's process holds its model's size."""
        total = self.options.gpu_total_mib
        model = self.current_model_in_config()
        model_mib = MODEL_MIB.get(model, 1000)
        free_for_model = total - other_used_mib
        fits = model_mib <= free_for_model
        pid = 0
        if self.server is not None:
            self.server.reload()
            pid = int(self.server.attrs["State"].get("Pid") or 0)
        used = other_used_mib + (model_mib if fits else 0)
        gpu = fake_nvml.FakeGpu(
            name="Simulated GPU (model-fleet demo)",
            uuid="GPU-00000000-0000-4000-8000-00000000d3m0",
            total=total * MIB,
            used=used * MIB,
            reserved=0,
            processes={pid: model_mib * MIB} if (fits and pid) else {},
        )
        fake_nvml.FakeNvmlState(gpus=(gpu,)).write(self.nvml_state)
        if self.options.simulate_vram:
            tmp = self.sim / ".free_mib"
            tmp.write_text(f"{free_for_model}\n")
            os.replace(tmp, self.sim / "free_mib")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
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

    def _base_env(self) -> dict[str, str]:
        return {
            k: v for k, v in os.environ.items() if not k.startswith(("MODEL_FLEET_", "PROMETHEUS_"))
        }

    def _start_remediator(self) -> None:
        cfg = self.workdir / "model-fleet.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "state_file": str(self.workdir / "model_fleet_state.json"),
                    # The exporter watches only this loop's model server, not every
                    # container labelled as one on this machine.
                    "exporter": {
                        "labels": {"model-fleet.role": "ollama", LOOP_LABEL: self.fleet},
                        # The stand-in's /api/ps (server.url below): loaded models, offload.
                        "server_poll_seconds": 1,
                    },
                    "fleets": {
                        self.fleet: {
                            "gpu": "0",
                            "server": {"kind": "ollama", "url": self.ollama.url},
                            "probe": {"enabled": True, "interval_seconds": 2},
                            "cooldown_seconds": self.options.cooldown_seconds,
                            "max_switches_per_hour": 60,
                            "containers": {"stop_timeout_seconds": 2, "ready_timeout_seconds": 30},
                            "app_config": [
                                {"path": str(self.app_env), "format": "env", "key": "OLLAMA_MODEL"}
                            ],
                        }
                    },
                },
                sort_keys=False,
            )
        )
        port = prom_env.free_port()
        self.remediator_url = f"http://127.0.0.1:{port}"
        env = {**self._base_env(), "MODEL_FLEET_TOKEN_FILE": str(self.workdir / "token")}
        exe = [sys.executable, "-m", "remediator.cli"]
        argv = [*exe, "serve", "--config", str(cfg), "--bind", f"127.0.0.1:{port}"]
        argv += ["--workers", str(self.options.remediator_workers)]
        proc = self._spawn("remediator", argv, env)
        self._wait_http(self.remediator_url + "/healthz", proc, "the remediator")

    def _start_exporter(self) -> None:
        port = prom_env.free_port()
        self.exporter_url = f"http://127.0.0.1:{port}"
        env = {**self._base_env(), **fake_nvml.env_for(self.nvml_lib, self.nvml_state)}
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

    def _start_prometheus(self) -> None:
        rules = prom_env.RULES_FILE
        if self.options.alert_for:
            rules = self.workdir / "rules" / rules.name
            rules.parent.mkdir(exist_ok=True)
            rendered = prom_env.render_rules(self.options.alert_for)
            rules.write_text(yaml.safe_dump(rendered, sort_keys=False))
        config = prom_env.render_prometheus_config(
            exporter=self.exporter_url.removeprefix("http://"),
            remediator=self.remediator_url.removeprefix("http://"),
            rule_files=[rules],
        )
        targets = [am.url.removeprefix("http://") for am in self.alertmanagers]
        config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": targets}]
        self.prometheus = self._stack.enter_context(prom_env.start_prometheus(config))
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
        tail = "\n".join(self.log("remediator").splitlines()[-40:])
        return "\n".join([*parts, "remediator log:", tail])

    def log(self, name: str) -> str:
        """A process's log, for failure messages."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


@contextlib.contextmanager
def running_loop(workdir: Path, options: LoopOptions | None = None) -> Iterator[Loop]:
    """A started Loop, closed on exit."""
    with Loop(workdir, options) as loop:
        yield loop
