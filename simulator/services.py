"""The remediator as ``model-fleet serve`` on a free 127.0.0.1 port, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from simulator.prom_env import free_port


@dataclass
class RunningRemediator:
    """A remediator started by :func:`start_remediator`."""

    proc: subprocess.Popen[bytes]
    url: str
    app_env: Path
    log: Path

    def stop(self) -> None:
        """SIGTERM the whole process group (gunicorn and its workers) and wait."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


def start_remediator(
    workdir: Path,
    ollama_url: str,
    token: str,
    *,
    workers: int = 3,
    log_level: str = "info",
    notifications: dict[str, Any] | None = None,
) -> RunningRemediator:
    """Serve one fleet with no containers and one app-config file (``app.env``) in ``workdir``.

    ``notifications`` is the config file's section of that name (none: only logged).
    """
    app_env = workdir / "app.env"
    app_env.write_text("OLLAMA_MODEL=llama3.2:3b\n")
    cfg = workdir / "model-fleet.yaml"
    fleet = {
        "server": {"kind": "ollama", "url": ollama_url},
        "containers": {"use_labels": False},
        "app_config": [{"path": str(app_env), "format": "env"}],
    }
    settings: dict[str, Any] = {"state_file": str(workdir / "state.json")}
    if notifications is not None:
        settings["notifications"] = notifications
    cfg.write_text(yaml.safe_dump({**settings, "fleets": {"default": fleet}}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_FLEET_", "PROMETHEUS_"))}
    env.update({"MODEL_FLEET_TOKEN": token, "MODEL_FLEET_LOG_LEVEL": log_level})
    # The installed console script, as a user starts it.
    exe = Path(sys.executable).with_name("model-fleet")
    argv = [str(exe), "serve", "--config", str(cfg), "--bind", f"127.0.0.1:{port}"]
    log = workdir / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--workers", str(workers)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = RunningRemediator(proc, f"http://127.0.0.1:{port}", app_env, log)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(running.url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return running
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            running.stop()
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the remediator did not start (exit {proc.returncode}):\n{tail}")
        time.sleep(0.1)
