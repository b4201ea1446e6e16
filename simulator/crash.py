"""A rig for crash tests: the remediator under gunicorn killed with SIGKILL mid-switch.

One fleet of two busybox containers on the real Docker engine (a "model server" and an app
that prints the model its mounted ``app.env`` names when it starts), the Ollama stand-in as
the model server's API, and ``model-fleet serve`` in its own session, so that a kill of its
process group takes the gunicorn master and every worker at once, as a power cut would.
After a kill, :meth:`CrashRig.serve` starts the service again, :meth:`CrashRig.wait_resolved`
waits for its start-up recovery and :meth:`CrashRig.disagreements` compares the state, the
app config, the containers and the stand-in. Used by tests/test_crash_recovery.py and
bench/bench_crash.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

from fleet_contract.env import TEST_CRASH_AFTER
from simulator.fake_ollama import FakeOllama
from simulator.images import BUSYBOX_IMAGE
from simulator.prom_env import free_port

LADDER = ("llama3.2:3b", "phi3:mini", "tinyllama:1.1b", "qwen2.5:0.5b")
SERVER_SCRIPT = "trap 'exit 0' TERM; echo model server up; while true; do sleep 0.1; done"
APP_SCRIPT = (
    "trap 'exit 0' TERM; . /config/app.env; echo app running $OLLAMA_MODEL; "
    "while true; do sleep 0.1; done"
)
TOKEN = "crash-test-token"
_RUNNING = re.compile(r"app running (\S+)")


class CrashRig:
    """The fleet, the stand-in and the service of one crash test (or benchmark)."""

    def __init__(
        self,
        workdir: Path,
        client: docker.DockerClient,
        *,
        labels: dict[str, str] | None = None,
        workers: int = 2,
        settle_seconds: float = 0.3,
    ) -> None:
        self.workdir = workdir
        self.client = client
        self.workers = workers
        self.fleet = f"c{uuid.uuid4().hex[:8]}"
        self.cfg_dir = workdir / "appcfg"
        self.cfg_dir.mkdir(parents=True, exist_ok=True)
        self.app_env = self.cfg_dir / "app.env"
        self.app_env.write_text(f"OLLAMA_MODEL={LADDER[0]}\n")
        self.state_dir = workdir / "state"
        self.state_dir.mkdir(exist_ok=True)
        self.state_file = self.state_dir / "state.json"
        self.ollama = FakeOllama(models={LADDER[0]: 2048 << 20}, line_delay=0.005).start()
        self.ollama.load(LADDER[0])
        self.config = workdir / "model-fleet.yaml"
        fleet = {
            "server": {"kind": "ollama", "url": self.ollama.url},
            "cooldown_seconds": 0,
            "max_switches_per_hour": 100000,
            "containers": {
                "stop_timeout_seconds": 1,
                "ready_timeout_seconds": 10,
                "settle_seconds": settle_seconds,
            },
            "app_config": [{"path": str(self.app_env), "format": "env"}],
        }
        settings = {"state_file": str(self.state_file), "fleets": {self.fleet: fleet}}
        self.config.write_text(yaml.safe_dump(settings))
        base = {**(labels or {}), "model-fleet.fleet": self.fleet}
        self.server = client.containers.run(
            BUSYBOX_IMAGE,
            ["sh", "-c", SERVER_SCRIPT],
            name=f"{self.fleet}-server",
            labels={**base, "model-fleet.role": "ollama"},
            detach=True,
        )
        self.app = client.containers.run(
            BUSYBOX_IMAGE,
            ["sh", "-c", APP_SCRIPT],
            name=f"{self.fleet}-app",
            labels={**base, "model-fleet.role": "app"},
            volumes={str(self.cfg_dir): {"bind": "/config", "mode": "ro"}},
            detach=True,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log = workdir / "serve.log"
        self.alerts = 0

    # -- the service ---------------------------------------------------------------------

    def serve(
        self, crash_after: str | None = None, timeout: float = 30.0, *, wait: bool = True
    ) -> None:
        """Start ``model-fleet serve``; with ``crash_after``, it kills itself at that step.
        ``wait``: until /healthz answers (a crash in the start-up recovery may come first)."""
        port = free_port()
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("MODEL_FLEET_", "PROMETHEUS_"))
        }
        env.update({"MODEL_FLEET_TOKEN": TOKEN, "MODEL_FLEET_LOG_LEVEL": "warning"})
        if crash_after is not None:
            env[TEST_CRASH_AFTER] = crash_after
        exe = Path(sys.executable).with_name("model-fleet")
        argv = [str(exe), "serve", "--config", str(self.config), "--bind", f"127.0.0.1:{port}"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--workers", str(self.workers)],
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{port}"
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self._get("/healthz", 1)[0] == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                self.kill()
                raise RuntimeError(f"the remediator did not start:\n{tail}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the service's whole process group (master and workers) and reap it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._wait_group_gone(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM the service and wait (a graceful stop)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def wait_dead(self, timeout: float = 30.0) -> bool:
        """Whether the service died (its crash hook fired) within ``timeout``."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self._wait_group_gone(self.proc.pid)
        return True

    @staticmethod
    def _wait_group_gone(pgid: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    # -- HTTP ----------------------------------------------------------------------------

    def _get(self, path: str, timeout: float = 5) -> tuple[int, Any]:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")

    def alert(self) -> int:
        """POST a fresh downgrade alert for the fleet; returns the HTTP status."""
        self.alerts += 1
        now = time.time()
        # The real time to the microsecond (an alert older than the last switch is stale),
        # then the alert's number: every alert has a key of its own.
        micros = int(now % 1 * 1e6)
        starts = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{micros:06d}{self.alerts % 1000:03d}Z"
        )
        labels = {
            "alertname": "ModelFleetVRAMErrors",
            "fleet": self.fleet,
            "severity": "warning",
            "remediation": "downgrade",
        }
        alert = {
            "status": "firing",
            "labels": labels,
            "annotations": {"value": "3"},
            "startsAt": starts,
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": f"{uuid.uuid4().hex[:16]}",
        }
        body = {"version": "4", "status": "firing", "receiver": "r", "alerts": [alert]}
        req = urllib.request.Request(
            self.url + "/webhook/alertmanager",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def status(self) -> dict[str, Any]:
        """The service's /status."""
        return dict(self._get("/status")[1])

    def recoveries(self) -> dict[str, float]:
        """model_fleet_switch_recoveries_total of the fleet, by outcome, from /metrics."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        found: dict[str, float] = {}
        pattern = re.compile(
            r"^model_fleet_switch_recoveries_total\{([^}]*)\} (\S+)$", re.MULTILINE
        )
        for labels, value in pattern.findall(text):
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if pairs.get("fleet") == self.fleet:
                found[pairs["outcome"]] = found.get(pairs["outcome"], 0.0) + float(value)
        return found

    def history(self) -> list[dict[str, Any]]:
        """The service's /history."""
        return list(self._get("/history?limit=1000")[1])

    def wait_resolved(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until no switch is open (start-up recovery done); return the status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["switch_in_progress"] is None:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"the open switch was never resolved: {status}")
            time.sleep(0.05)

    def wait_switched(self, count: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the history holds ``count`` switches and none is open."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            done = [h for h in self.history() if h.get("recovery") != "rolled_back"]
            if len(done) >= count and status["switch_in_progress"] is None:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"no switch number {count}: {status}")
            time.sleep(0.05)

    # -- the world -----------------------------------------------------------------------

    def app_model(self, timeout: float = 5.0) -> str | None:
        """The model the app container read at its last start (None: it is not running).

        Its last ``app running`` line, once it has run for 0.3 s: busybox prints at once, and a
        log line may carry a time before Docker's StartedAt, so no ``since`` filter is used.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.app.reload()
            if self.app.status == "running":
                up = time.time() - _docker_time(self.app.attrs["State"]["StartedAt"])
                running = _RUNNING.findall(self.app.logs().decode(errors="replace"))
                if up >= 0.3 and running:
                    return str(running[-1])
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def state_entry(self) -> dict[str, Any]:
        """The fleet's entry in the state file, read directly."""
        return dict(json.loads(self.state_file.read_text())["fleets"][self.fleet])

    def notices(self) -> list[str]:
        """The notices in the state file."""
        if not self.state_file.exists():
            return []
        return [n["message"] for n in json.loads(self.state_file.read_text())["notices"]]

    def state_model(self) -> str:
        """The model the state file names (read directly, as a restarted service would)."""
        if not self.state_file.exists():
            return LADDER[0]
        data = json.loads(self.state_file.read_text())
        return str(data["fleets"][self.fleet]["current_model"])

    def config_model(self) -> str:
        """The model app.env names."""
        return self.app_env.read_text().strip().split("=", 1)[1]

    def disagreements(self) -> list[str]:
        """What does not agree with the state file: app config, containers, the stand-in."""
        state = self.state_model()
        problems = []
        if (config := self.config_model()) != state:
            problems.append(f"app.env names {config}, the state {state}")
        if (app := self.app_model()) != state:
            problems.append(f"the app runs {app}, the state names {state}")
        self.server.reload()
        if self.server.status != "running":
            problems.append(f"the model server container is {self.server.status}")
        extra = set(self.ollama.loaded) - {state}
        if extra:
            problems.append(f"the stand-in has {sorted(extra)} loaded, the state names {state}")
        data = json.loads(self.state_file.read_text())
        if data["fleets"][self.fleet].get("journal") is not None:
            problems.append("the journal entry is still open")
        return problems

    def reset(self) -> None:
        """Back to the top of the ladder with the service stopped: config, state, containers."""
        self.stop()
        self.app_env.write_text(f"OLLAMA_MODEL={LADDER[0]}\n")
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        self.ollama.loaded.clear()
        self.ollama.load(LADDER[0])
        for c in (self.server, self.app):
            c.restart(timeout=1)
        self.app_model()

    def close(self) -> None:
        """Stop the service and the stand-in; remove the containers."""
        with contextlib.suppress(Exception):
            self.kill()
        self.ollama.stop()
        for c in (self.server, self.app):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)


def _docker_time(started: str) -> float:
    """Docker's StartedAt (RFC 3339 with nanoseconds) as a Unix time, to the microsecond."""
    from datetime import UTC, datetime

    head, _, frac = started.rstrip("Z").partition(".")
    at = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return at + float(f"0.{frac[:6] or '0'}")
