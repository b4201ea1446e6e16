"""A stand-in for the NVIDIA Container Toolkit's hook, so that Docker accepts GPU device
requests on a machine without a GPU.

dockerd registers its ``nvidia`` device driver only when an executable called
``nvidia-container-runtime-hook`` is on its own PATH when it starts. A container with an NVIDIA
device request (``--gpus device=1``) then gets ``NVIDIA_VISIBLE_DEVICES=1`` in its process
environment and an OCI prestart hook running that executable (``nvidia-container-runtime-hook
prestart``, with dockerd's environment), which runc runs on the host, with the container's
state JSON on stdin, before the container starts. The real hook mounts the GPU's device
nodes and driver libraries into the container; this one only records which GPUs the container
was given: one line per start, ``<container id> NVIDIA_VISIBLE_DEVICES=<value>``, appended
to the file that :data:`LOG_ENV` names in dockerd's environment, and exits 0.

``write_hook(dir)`` writes it; a second engine (simulator.engines, ``gpu_hook=True``) puts
that directory first on dockerd's PATH. Never the machine's own engine.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

HOOK_NAME: Final = "nvidia-container-runtime-hook"
# dockerd's environment variable naming the file the hook appends its lines to.
LOG_ENV: Final = "MODEL_FLEET_SIM_NVIDIA_HOOK_LOG"

_SCRIPT: Final = '''
"""Stand-in for the NVIDIA Container Toolkit's prestart hook (simulator/nvidia_hook.py)."""
import json, os, sys

state = json.load(sys.stdin)
with open(os.path.join(state["bundle"], "config.json"), encoding="utf-8") as f:
    env = json.load(f).get("process", {}).get("env", [])
visible = [e.split("=", 1)[1] for e in env if e.startswith("NVIDIA_VISIBLE_DEVICES=")]
log = os.environ.get(@LOG_ENV@)
if log and sys.argv[1:2] == ["prestart"]:
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"{state['id']} NVIDIA_VISIBLE_DEVICES={','.join(visible)}\\n")
'''


@dataclass(frozen=True)
class HookStart:
    """One container start the hook saw: the container's id and its NVIDIA_VISIBLE_DEVICES."""

    container_id: str
    visible_devices: str


def write_hook(directory: Path) -> Path:
    """Write the stand-in hook into ``directory`` (created); the executable's path."""
    directory.mkdir(parents=True, exist_ok=True)
    hook = directory / HOOK_NAME
    script = _SCRIPT.replace("@LOG_ENV@", repr(LOG_ENV))
    hook.write_text(f"#!{sys.executable}\n{script}")
    hook.chmod(0o755)
    return hook


def read_log(path: Path) -> list[HookStart]:
    """The starts the hook recorded in ``path``, oldest first (none when it has not run)."""
    if not path.exists():
        return []
    starts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        container_id, _, devices = line.partition(" ")
        starts.append(HookStart(container_id, devices.removeprefix("NVIDIA_VISIBLE_DEVICES=")))
    return starts


def dockerd_env(hook_dir: Path, log: Path) -> dict[str, str]:
    """dockerd's environment with the hook first on PATH and its log named."""
    path = os.environ.get("PATH", os.defpath)
    return {**os.environ, "PATH": f"{hook_dir}{os.pathsep}{path}", LOG_ENV: str(log)}
