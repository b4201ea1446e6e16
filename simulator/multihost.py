"""Two model-fleet hosts on one machine: two Docker engines, one Prometheus, two Alertmanagers.

Host A (``gpu-a``) runs on the machine's Docker engine, host B (``gpu-b``) on a second engine
(simulator.engines). Each host has what simulator.loop starts for one (``Loop.start_host``): a
model-server and an application container on its engine, an Ollama stand-in, a fake NVML, an
exporter (DOCKER_HOST = its engine) and a remediator under gunicorn, each on its own 127.0.0.1
port, with its own model-fleet.yaml (``host`` set), state file and token file, serving its own
fleet (the inventory wants fleet names unique across hosts).

The monitoring is what ``model-fleet render-monitoring`` makes of an inventory of the two
hosts, used as it is: one Prometheus on the rendered prometheus.yml (file_sd targets), and a
two-replica Alertmanager cluster on the rendered alertmanager.yml. The rules are the shipped
ones; a test copy may shorten the ``for`` of named alerts (prom_config.render_rules).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from simulator import prom_env
from simulator.engines import SecondEngine
from simulator.local_http import http_get
from simulator.loop import Loop, LoopOptions

HOST_A = "gpu-a"
HOST_B = "gpu-b"
ALERTMANAGER_REPLICAS = 2


class HostLoop(Loop):
    """One host's parts of the loop; the monitoring is shared (TwoHosts)."""

    def start(self) -> None:
        """Start the host's parts only."""
        self.start_host()

    def history_from_state(self) -> list[dict[str, Any]]:
        """The fleet's switch history from the state file (works with the remediator down)."""
        path = self.workdir / "model_fleet_state.json"
        if not path.exists():
            return []
        fleets = json.loads(path.read_text()).get("fleets", {})
        return list(fleets.get(self.fleet, {}).get("history", []))


class TwoHosts:
    """Starts both hosts and the shared monitoring; stops everything on close()."""

    def __init__(
        self,
        workdir: Path,
        engine: SecondEngine,
        *,
        alert_for: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.engine = engine
        run = uuid.uuid4().hex[:6]
        self.fleets = {HOST_A: f"mh-{run}-a", HOST_B: f"mh-{run}-b"}
        self.alert_for = alert_for or {}
        self.hosts: dict[str, HostLoop] = {}
        self.monitoring = workdir / "monitoring"
        self.inventory = workdir / "inventory.yml"
        self.rules_dir = workdir / "rules"
        self.prometheus: prom_env.Prometheus | None = None
        self.alertmanagers: list[prom_env.Alertmanager] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> TwoHosts:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything, newest first (idempotent)."""
        self._stack.close()

    # -- parts --------------------------------------------------------------------------------

    def start(self) -> None:
        """Both hosts, the rendered configs, the Alertmanager cluster, Prometheus."""
        engines = {HOST_A: None, HOST_B: self.engine.docker_host}
        for host, docker_host in engines.items():
            options = LoopOptions(
                fleet=self.fleets[host], cooldown_seconds=0, docker_host=docker_host, host=host
            )
            self.hosts[host] = HostLoop(self.workdir / host, options)
            self._stack.callback(self.hosts[host].close)
        # Side by side: the hosts share nothing but the machine.
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            for started in [pool.submit(loop.start) for loop in self.hosts.values()]:
                started.result()
        am_web = [f"127.0.0.1:{prom_env.free_port()}" for _ in range(ALERTMANAGER_REPLICAS)]
        self.render(am_web)
        self._start_alertmanagers(am_web)
        self.prometheus = self._stack.enter_context(
            prom_env.start_prometheus_file(self.monitoring / "prometheus.yml")
        )
        for loop in self.hosts.values():
            loop.prometheus, loop.alertmanagers = self.prometheus, self.alertmanagers
        self.prometheus.wait_targets_up(60)

    def write_rules(self) -> None:
        """The shipped rules, or a test copy with shorter ``for``s, in rules_dir."""
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        rules = prom_env.render_rules(self.alert_for)
        (self.rules_dir / prom_env.RULES_FILE.name).write_text(
            yaml.safe_dump(rules, sort_keys=False)
        )

    def inventory_doc(self, alertmanagers: list[str]) -> dict[str, Any]:
        """The inventory of both hosts, as render-monitoring reads it."""
        hosts = {
            name: {
                "exporter": loop.exporter_url.removeprefix("http://"),
                "remediator": loop.remediator_url,
                "fleets": [loop.fleet],
                "credentials_file": str(loop.workdir / "token"),
            }
            for name, loop in self.hosts.items()
        }
        return {
            "hosts": hosts,
            "alertmanagers": alertmanagers,
            "rules": str(self.rules_dir / "*.rules.yml"),
        }

    def render(self, alertmanagers: list[str]) -> None:
        """Write the inventory and run ``model-fleet render-monitoring`` on it."""
        self.write_rules()
        self.inventory.write_text(yaml.safe_dump(self.inventory_doc(alertmanagers)))
        argv = [sys.executable, "-m", "remediator.cli", "render-monitoring"]
        argv += ["--inventory", str(self.inventory), "--out", str(self.monitoring)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"render-monitoring failed ({done.returncode}):\n{done.stderr}")

    def _start_alertmanagers(self, web: list[str]) -> None:
        config = (self.monitoring / "alertmanager.yml").read_text()
        cluster = [f"127.0.0.1:{prom_env.free_port()}" for _ in web]
        for i, listen in enumerate(web):
            am = self._stack.enter_context(
                prom_env.start_alertmanager(
                    config,
                    listen=listen,
                    cluster_listen=cluster[i],
                    peers=[p for j, p in enumerate(cluster) if j != i],
                )
            )
            self.alertmanagers.append(am)

    # -- checks -------------------------------------------------------------------------------

    def check_configs(self) -> dict[str, subprocess.CompletedProcess[str]]:
        """promtool and amtool on the rendered configs: their answers by tool."""
        commands = {
            "promtool": ["promtool", "check", "config", str(self.monitoring / "prometheus.yml")],
            "amtool": ["amtool", "check-config", str(self.monitoring / "alertmanager.yml")],
        }
        return {
            tool: subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            for tool, argv in commands.items()
        }

    def firing(self, alertname: str, host: str | None = None) -> list[dict[str, Any]]:
        """Prometheus' firing alerts called ``alertname`` (for ``host``, if given)."""
        assert self.prometheus is not None
        return [
            a
            for a in self.prometheus.firing_alerts()
            if a["labels"].get("alertname") == alertname
            and (host is None or a["labels"].get("host") == host)
        ]

    def in_alertmanagers(self, *matchers: str) -> list[list[dict[str, Any]]]:
        """Each replica's active alerts that match ``matchers``."""
        return [
            [a for a in am.alerts(*matchers) if a["status"]["state"] == "active"]
            for am in self.alertmanagers
        ]

    def diagnostics(self) -> str:
        """Both hosts' state and the remediators' logs, for a failed wait."""
        parts = []
        for name, loop in self.hosts.items():
            alive = loop.procs.get("remediator")
            if alive is not None and alive.poll() is None:
                parts.append(f"== {name}\n{loop.diagnostics()}")
            else:
                parts.append(f"== {name} (remediator stopped): {loop.history_from_state()}")
        with contextlib.suppress(Exception):
            assert self.prometheus is not None
            targets = [
                (t["labels"].get("host"), t["scrapeUrl"], t["health"])
                for t in self.prometheus.active_targets()
            ]
            parts.append(f"targets: {targets}")
        return "\n".join(parts)

    def exporter_metrics(self, host: str) -> str:
        """A host's exporter's /metrics text."""
        return http_get(self.hosts[host].exporter_url + "/metrics").decode()
