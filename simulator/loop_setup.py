"""What a loop is made of: its options, its containers' scripts, its configs, its processes.

The model server is an Ollama-like busybox script whose log lines the tests choose; the
application reads its model from a mounted file; the fake NVML state is one simulated GPU, or
several for a fleet that may move between them, with the model server's process on the GPU its
container was given;
the loop's processes run in their own sessions and stop as groups; its containers name the
process that made them, so that a later run removes them only once that one has ended. Used by
simulator.loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types

from exporter.incidents import DEFAULT_WINDOW_SECONDS
from simulator import fake_nvml, ollama_corpus

LOOP_LABEL = "model-fleet.sim"
# Which process started a loop's container: "<host>:<pid>:<start time>". The start time (in
# clock ticks after boot, /proc/<pid>/stat) tells a reused PID from the owner.
OWNER_LABEL = "model-fleet.sim.owner"
MIB = 1024 * 1024

# The default ladder's sizes, for the model server's "does my model fit?" check.
MODEL_MIB = {"llama3.2:3b": 2048, "phi3:mini": 2200, "tinyllama:1.1b": 637, "qwen2.5:0.5b": 397}

# An Ollama-like model server. Lines written by the host into /ctl/emit are printed as they
# are (the tests choose the exact lines). With /sim/free_mib present it also behaves like a
# server short of VRAM: when its model (from the app's config) does not fit what is free, its
# load fails every 2.5 s (more than the exporter's incident window: one error each), printed
# as the Ollama release and engine of $SIM_OLLAMA print it (simulator.ollama_corpus: the
# corpus's failed load, default 0.12.6 on the legacy llama.cpp runner).
_MODEL_SERVER_SCRIPT = r"""
trap 'exit 0' TERM
LISTEN='level=INFO source=routes.go:1475 msg="Listening on [::]:11434 (version @VERSION@)"'
fail_load() {
@FAILED_LOAD@
}
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
      fail_load
      sleep 2.5
    fi
  fi
  sleep 0.1
done
"""


def model_server_script(spec: str | None = None) -> str:
    """The model server's script, printing the failed load of ``spec`` (``<version>/<engine>``;
    None: ``$SIM_OLLAMA``, else 0.12.6/legacy)."""
    spec = spec or os.environ.get(ollama_corpus.ENV) or ollama_corpus.DEFAULT
    lines = ollama_corpus.live_script(ollama_corpus.failed_load(spec))
    indented = "\n".join("  " + line for line in lines.splitlines())
    version = spec.partition("/")[0]
    return _MODEL_SERVER_SCRIPT.replace("@FAILED_LOAD@", indented).replace("@VERSION@", version)


MODEL_SERVER_SCRIPT = model_server_script(ollama_corpus.DEFAULT)

# The application: reads its model from the mounted config on start, as docs/configuration.md asks.
APP_SCRIPT = r"""
trap 'exit 0' TERM
. /config/app.env
echo "app running $OLLAMA_MODEL"
while true; do sleep 0.2; done
"""

# The application of config/model-fleet.yaml's `containers.app_health_url`: as APP_SCRIPT, and
# busybox httpd on port 8000 answers /healthz with the model it started with (read once, at
# start, as a real application does), so a switch commits when the app names the new model.
APP_HEALTH_SCRIPT = r"""
trap 'exit 0' TERM
. /config/app.env
mkdir -p /www
echo "{\"model\": \"$OLLAMA_MODEL\"}" > /www/healthz
httpd -f -p 8000 -h /www &
echo "app running $OLLAMA_MODEL"
while true; do sleep 0.2; done
"""
# The port APP_HEALTH_SCRIPT serves on, inside the container.
APP_HEALTH_PORT = 8000

# The model server's logging, as docker-compose.gpu.yml ships it (docs/operations.md "Model
# server logging"): rotation the exporter's log follower cannot fall a whole file behind.
MODEL_SERVER_LOG_CONFIG = {"type": "json-file", "config": {"max-size": "10m", "max-file": "5"}}
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
    # The app serves /healthz naming its model (APP_HEALTH_SCRIPT) on a 127.0.0.1 port of the
    # host (Loop.app_health_url), for a remediator config with `containers.app_health_url`.
    app_health: bool = False
    # The model the app's config names when the loop starts (a scenario's state file may
    # start the fleet lower on the ladder).
    initial_model: str = "llama3.2:3b"
    # Alert name -> the `for` of a test copy of the shipped rules (prom_config.render_rules);
    # empty: the shipped rules as they are.
    alert_for: dict[str, str] = field(default_factory=dict)
    # The Docker engine of the loop's containers, exporter and remediator (DOCKER_HOST's
    # form); None: the environment's. And the machine name in model-fleet.yaml's `host`.
    docker_host: str | None = None
    host: str | None = None
    # The fleet's ladder (rungs as model-fleet.yaml writes them, custom ones included); None:
    # the default ladder.
    ladder: list[dict[str, Any]] | None = None
    # The simulated GPUs, each of gpu_total_mib, by the VRAM used by others on each (GPU 0
    # first); empty: one GPU with other_used_mib.
    gpus_other_used_mib: tuple[int, ...] = ()
    # The fleet may move between the simulated GPUs (`gpus` lists them all, `placement:
    # move_first`) and reads live figures from the loop's Prometheus (`prometheus.url`: without
    # each GPU's free VRAM there is no move). Its model server starts with an NVIDIA device
    # request for GPU 0, which only an engine with the stand-in NVIDIA hook starts
    # (simulator.engines, gpu_hook=True).
    move_first: bool = False

    def others_mib(self) -> list[int]:
        """The VRAM used by others on each simulated GPU, GPU 0 first."""
        return list(self.gpus_other_used_mib or (self.other_used_mib,))


def engine_client(options: LoopOptions) -> docker.DockerClient:
    """A client for the loop's Docker engine."""
    if options.docker_host:
        return docker.DockerClient(base_url=options.docker_host, timeout=60)
    return docker.from_env(timeout=60)


def base_env(options: LoopOptions) -> dict[str, str]:
    """The environment of the loop's processes: none of the caller's model-fleet settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_FLEET_", "PROMETHEUS_"))}
    if options.docker_host:
        env["DOCKER_HOST"] = options.docker_host
    return env


def remediator_config(
    options: LoopOptions,
    workdir: Path,
    app_env: Path,
    ollama_url: str,
    prometheus_url: str | None = None,
) -> dict[str, Any]:
    """The remediator's config for a loop: one fleet, its model server, its app's config (and,
    with ``prometheus_url``, the Prometheus its live figures come from)."""
    host = {"host": options.host} if options.host else {}
    live = {"prometheus": {"url": prometheus_url}} if prometheus_url else {}
    placement: dict[str, Any] = {}
    if options.move_first:
        gpus = [str(i) for i in range(len(options.others_mib()))]
        placement = {"gpus": gpus, "placement": "move_first"}
    return {
        **host,
        **live,
        "state_file": str(workdir / "model_fleet_state.json"),
        # The exporter watches only this loop's model server, not every
        # container labelled as one on this machine.
        "exporter": {
            "labels": {"model-fleet.role": "ollama", LOOP_LABEL: options.fleet},
            # The stand-in's /api/ps (server.url below): loaded models, offload.
            "server_poll_seconds": 1,
        },
        "fleets": {
            options.fleet: {
                "gpu": "0",
                "server": {"kind": "ollama", "url": ollama_url},
                "probe": {"enabled": True, "interval_seconds": 2},
                "cooldown_seconds": options.cooldown_seconds,
                "max_switches_per_hour": 60,
                "containers": {"stop_timeout_seconds": 2, "ready_timeout_seconds": 30},
                "app_config": [{"path": str(app_env), "format": "env", "key": "OLLAMA_MODEL"}],
                **({"ladder": options.ladder} if options.ladder is not None else {}),
                **placement,
            }
        },
    }


def simulated_gpus(
    total_mib: int, others_mib: Sequence[int], model_mib: int, pid: int, server_gpu: int
) -> fake_nvml.FakeNvmlState:
    """GPUs of ``total_mib`` each, ``others_mib[i]`` of GPU i used by others; ``pid`` holds the
    model on ``server_gpu`` if it fits there."""
    gpus = []
    for i, other in enumerate(others_mib):
        fits = i == server_gpu and model_mib <= total_mib - other
        used = other + (model_mib if fits else 0)
        gpus.append(
            fake_nvml.FakeGpu(
                name="Simulated GPU (model-fleet demo)",
                uuid=f"GPU-00000000-0000-4000-8000-{i:08d}d3m0",
                total=total_mib * MIB,
                used=used * MIB,
                reserved=0,
                processes={pid: model_mib * MIB} if (fits and pid) else {},
            )
        )
    return fake_nvml.FakeNvmlState(gpus=tuple(gpus))


def gpu_request(gpu: int) -> docker.types.DeviceRequest:
    """The NVIDIA device request of ``docker run --gpus device=<gpu>``."""
    return docker.types.DeviceRequest(
        driver="nvidia", device_ids=[str(gpu)], capabilities=[["gpu"]]
    )


def container_gpu(attrs: dict[str, Any]) -> int:
    """The GPU an inspected container was given: the first device its NVIDIA device requests
    name (as the NVIDIA runtime reads them), GPU 0 without one."""
    for request in (attrs.get("HostConfig") or {}).get("DeviceRequests") or []:
        if request.get("Driver") == "nvidia" and request.get("DeviceIDs"):
            return int(request["DeviceIDs"][0])
    return 0


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, and its children: TERM, then KILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


def process_owner(pid: int | None = None) -> str:
    """The OWNER_LABEL value of process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_gone(owner: str) -> bool:
    """True when the process an OWNER_LABEL value names has ended (known only on its host)."""
    host, _, rest = owner.partition(":")
    pid, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit() or not ticks:
        return False
    return _start_ticks(int(pid)) != ticks


def _start_ticks(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22; the fields after the command name, which may hold spaces, start at field 3.
    return stat.rsplit(")", 1)[1].split()[19]


def remove_orphans(client: docker.DockerClient, fleet_prefix: str) -> tuple[list[str], list[str]]:
    """Remove the loop containers of fleets named ``fleet_prefix``-* whose owner has ended.

    Returns (removed, unknown): the names removed, and the names of such containers that name no
    owner (made before owners were recorded), which are left alone.
    """
    removed: list[str] = []
    unknown: list[str] = []
    for c in client.containers.list(all=True, filters={"label": LOOP_LABEL}):
        fleet = c.labels.get(LOOP_LABEL, "")
        if fleet != fleet_prefix and not fleet.startswith(f"{fleet_prefix}-"):
            continue
        owner = c.labels.get(OWNER_LABEL)
        if owner is None:
            unknown.append(c.name)
        elif owner_gone(owner):
            # Another demo starting now may be removing it too: gone either way.
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
                removed.append(c.name)
    return sorted(removed), sorted(unknown)
