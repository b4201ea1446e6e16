"""Scripted incidents on the whole loop and the shipped files: the harness of the scenario suite.

A :class:`Scenario` is a :class:`simulator.loop.Loop` (real Docker containers, the real
exporter on the fake NVML library, the Ollama stand-in) whose remediator (under gunicorn:
``python -m remediator.cli serve``), Prometheus and Alertmanager run on copies of the SHIPPED
files, in which only addresses, paths, the token and the fleet's name change:

- ``config/model-fleet.yaml``: ``state_file``, the fleet ``default`` renamed to the scenario's
  fleet, its ``server.url`` (the stand-in), its ``app_config`` path (the app container's
  mounted env file) and ``containers.app_health_url`` (the app's busybox httpd /healthz, which
  names the model it started with, published on a 127.0.0.1 port). One key is added,
  ``exporter.labels``: the exporter follows only the containers carrying the scenario's own
  label, as Loop's exporter does. That is not a timing change: the selector decides *which*
  containers are followed (this Docker engine is shared: other tests' model servers, with
  their own errors, run next to ours), never how fast; listing, following, counting, the
  incident window and the scrape take the same path and the same defaults as with the
  shipped selector (``model-fleet.role=ollama``, which the added one includes).
- ``monitoring/prometheus.yml``: the scrape targets, the Alertmanager address and
  ``rule_files``; every interval stays.
- ``monitoring/alertmanager.yml``: the webhook URLs and the token file; every route timing
  stays.
- ``alert_rules/model_fleet.rules.yml``: as shipped.

The remediator gets ``MODEL_FLEET_PROMETHEUS_URL`` (and ``MODEL_FLEET_STATE_FILE``, and its
token file) as docker-compose.monitoring.yml sets them, so its decisions read live figures.

A scenario that must shorten a timing changes that configuration value only, in its copy,
through :attr:`ScenarioOptions.fleet_settings` (keys of the fleet in model-fleet.yaml) or
:attr:`ScenarioOptions.alert_for` (a rule's ``for``), never to 0, and says why in its
docstring; :meth:`Scenario.timing_changes` lists what differs from the shipped files, so a
test can assert that nothing else does.

Prometheus, Alertmanager and the remediator each listen on an address fixed for the whole
scenario and keep their data (the TSDB, the notification log, the state file) in the
scenario's directory: :meth:`Scenario.stop_service` and :meth:`Scenario.start_service`
restart one of them as the same service. Observations are the remediator's own records
(``/history`` times, ``/status``) and the errors' times: Docker's timestamp of the first line
of every failed load (:meth:`Scenario.server_errors`) or the moment the harness printed one
(:attr:`Scenario.emitted`).
"""

from __future__ import annotations

import contextlib
import enum
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exporter.classifier import LogClassifier
from exporter.incidents import DEFAULT_WINDOW_NS, Grouper
from exporter.timestamps import NS
from remediator.config import FleetConfig, parse_config
from remediator.domain.alerts import parse_time
from remediator.domain.state import SCHEMA_VERSION, FleetState
from simulator import prom_env
from simulator.local_http import free_port, http_get, wait_until
from simulator.loop import MODEL_MIB, Loop, LoopOptions
from simulator.loop_setup import LOOP_LABEL, base_env, stop_group

SHIPPED_CONFIG = prom_env.REPO / "config" / "model-fleet.yaml"
SHIPPED_FLEET = "default"  # the fleet of the shipped config, renamed in each copy
LADDER = ("llama3.2:3b", "phi3:mini", "tinyllama:1.1b", "qwen2.5:0.5b")  # the default ladder
# What the model server prints as it starts (simulator.loop_setup.model_server_script): the
# line that splits its log into runs, one per start.
START_MARK = 'msg="Listening on'
# The chain: VRAM other work holds so that llama3.2:3b (2048 MiB) and phi3:mini (2200 MiB) do
# not fit the simulated 4096 MiB GPU, and tinyllama:1.1b (637 MiB) does.
CHAIN_OTHER_USED_MIB = 2300


class Part(enum.StrEnum):
    """A service a scenario can stop and start again."""

    PROMETHEUS = "prometheus"
    ALERTMANAGER = "alertmanager"
    REMEDIATOR = "remediator"


@dataclass
class ScenarioOptions:
    """What a scenario starts from."""

    fleet: str = field(default_factory=lambda: f"scn-{uuid.uuid4().hex[:6]}")
    # The model server fails on its own while its model does not fit (simulator.loop_setup).
    simulate_vram: bool = False
    other_used_mib: int = 1024
    # Keys of the fleet's entry in the config copy that differ from the shipped file (each
    # one stated in the scenario's docstring): {"cooldown_seconds": 20, ...}.
    fleet_settings: dict[str, Any] = field(default_factory=dict)
    # Alert name -> the `for` of a copy of the shipped rules (prom_config.render_rules).
    alert_for: dict[str, str] = field(default_factory=dict)
    # The fleet's state file entry, written before the remediator first starts, from the
    # time then: the scenario's past (earlier switches). None: no state file.
    state: Callable[[float], FleetState] | None = None


def shipped_config(
    fleet: str,
    *,
    state_file: Path,
    server_url: str,
    app_config: Path,
    app_health_url: str,
    fleet_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """config/model-fleet.yaml with only addresses, paths and the fleet's name changed, the
    exporter's container selector added, and ``fleet_settings`` (a scenario's stated
    changes) applied to the fleet."""
    doc: dict[str, Any] = yaml.safe_load(SHIPPED_CONFIG.read_text())
    entry = doc["fleets"].pop(SHIPPED_FLEET)
    entry["server"]["url"] = server_url
    (target,) = entry["app_config"]
    target["path"] = str(app_config)
    entry["containers"]["app_health_url"] = app_health_url
    entry.update(fleet_settings or {})
    doc["state_file"] = str(state_file)
    doc["fleets"][fleet] = entry
    # Which containers, not how fast: see the module's docstring.
    doc["exporter"] = {"labels": {"model-fleet.role": "ollama", LOOP_LABEL: fleet}}
    return doc


class Scenario(Loop):
    """The loop on the shipped files, with restartable services and timed observations."""

    def __init__(self, workdir: Path, options: ScenarioOptions | None = None) -> None:
        self.scenario = options or ScenarioOptions()
        initial = LADDER[0]
        if self.scenario.state is not None:
            # Built now only to learn the starting model; written with the right clock later.
            initial = self.scenario.state(time.time()).current_model
        super().__init__(
            workdir,
            LoopOptions(
                fleet=self.scenario.fleet,
                simulate_vram=self.scenario.simulate_vram,
                other_used_mib=self.scenario.other_used_mib,
                alert_for=self.scenario.alert_for,
                app_health=True,
                initial_model=initial,
            ),
        )
        self.config_file = workdir / "model-fleet.yaml"
        self.state_file = workdir / "model_fleet_state.json"
        self._listen = {part: f"127.0.0.1:{free_port()}" for part in Part}
        self.remediator_url = f"http://{self._listen[Part.REMEDIATOR]}"
        self.prometheus_url = f"http://{self._listen[Part.PROMETHEUS]}"
        self._services: dict[Part, contextlib.ExitStack] = {}
        self._prometheus_config: dict[str, Any] = {}
        self._alertmanager_config: dict[str, Any] = {}
        self.emitted: list[float] = []  # time.time() of each error emit_errors printed
        self.other_used_mib = self.scenario.other_used_mib

    # -- the shipped files, copied ------------------------------------------------------

    def fleet_config(self) -> FleetConfig:
        """The fleet as the remediator reads it from the config copy (the bounds' source)."""
        config = parse_config(yaml.safe_load(self.config_file.read_text()), str(self.config_file))
        return config.fleets[self.fleet]

    def timing_changes(self) -> dict[str, Any]:
        """What this scenario's copies change beyond addresses, paths, token and names."""
        changes: dict[str, Any] = {
            f"fleets.{k}": v for k, v in self.scenario.fleet_settings.items()
        }
        changes |= {f"rules.{name}.for": d for name, d in self.scenario.alert_for.items()}
        return changes

    # -- the services (Loop's parts, on fixed addresses and kept data) -------------------

    def _start_remediator(self) -> None:
        self.config_file.write_text(
            yaml.safe_dump(
                shipped_config(
                    self.fleet,
                    state_file=self.state_file,
                    server_url=self.ollama.url,
                    app_config=self.app_env,
                    app_health_url=self.app_health_url,
                    fleet_settings=self.scenario.fleet_settings,
                ),
                sort_keys=False,
            )
        )
        if self.scenario.state is not None:
            self.write_state(self.scenario.state(time.time()))
        self._start_remediator_process()

    def write_state(self, fleet_state: FleetState) -> None:
        """Write the state file with ``fleet_state`` as the fleet's entry (remediator stopped)."""
        doc = {
            "schema_version": SCHEMA_VERSION,
            "fleets": {self.fleet: fleet_state.to_dict()},
            "notices": [],
            "notifications": [],
        }
        self.state_file.write_text(json.dumps(doc, indent=2))

    def _start_remediator_process(self) -> None:
        env = {
            **base_env(self.options),
            "MODEL_FLEET_TOKEN_FILE": str(self.workdir / "token"),
            "MODEL_FLEET_STATE_FILE": str(self.state_file),
            # As docker-compose.monitoring.yml sets it: live figures for the decisions.
            "MODEL_FLEET_PROMETHEUS_URL": self.prometheus_url,
        }
        exe = [sys.executable, "-m", "remediator.cli"]
        argv = [*exe, "serve", "--config", str(self.config_file)]
        argv += ["--bind", self._listen[Part.REMEDIATOR]]
        proc = self._spawn("remediator", argv, env)
        self._wait_http(self.remediator_url + "/healthz", proc, "the remediator")

    def _start_alertmanagers(self) -> None:
        self._alertmanager_config = prom_env.render_alertmanager_config(
            webhook_url=f"{self.remediator_url}/webhook/alertmanager",
            credentials_file=self.workdir / "token",
            notify_url=f"{self.remediator_url}/webhook/notify",
        )
        self._start_alertmanager()

    def _start_alertmanager(self) -> None:
        stack = self._service(Part.ALERTMANAGER)
        am = stack.enter_context(
            prom_env.start_alertmanager(
                self._alertmanager_config,
                listen=self._listen[Part.ALERTMANAGER],
                workdir=self.workdir / "alertmanager",
            )
        )
        self.alertmanagers = [am]

    def _start_prometheus(self) -> None:
        rules = self._rules_file()
        self._prometheus_config = prom_env.render_prometheus_config(
            exporter=self.exporter_url.removeprefix("http://"),
            remediator=self._listen[Part.REMEDIATOR],
            alertmanager=self._listen[Part.ALERTMANAGER],
            rule_files=[rules],
        )
        self._start_prometheus_process()
        assert self.prometheus is not None
        self.prometheus.wait_targets_up(60)

    def _start_prometheus_process(self) -> None:
        stack = self._service(Part.PROMETHEUS)
        self.prometheus = stack.enter_context(
            prom_env.start_prometheus(
                self._prometheus_config,
                listen=self._listen[Part.PROMETHEUS],
                workdir=self.workdir / "prometheus",
            )
        )

    def _service(self, part: Part) -> contextlib.ExitStack:
        if part not in self._services:
            self._services[part] = contextlib.ExitStack()
            self._stack.callback(lambda: self._services[part].close())
        return self._services[part]

    def stop_service(self, part: Part) -> float:
        """Stop one service (SIGTERM, as `docker restart` does); returns when it stopped."""
        if part is Part.REMEDIATOR:
            stop_group(self.procs.pop("remediator"))
        else:
            self._service(part).close()
        return time.time()

    def start_service(self, part: Part) -> float:
        """Start a stopped service again, same address, same data; returns when it is ready."""
        if part is Part.REMEDIATOR:
            self._start_remediator_process()
        elif part is Part.ALERTMANAGER:
            self._start_alertmanager()
        else:
            self._start_prometheus_process()
        return time.time()

    # -- driving ------------------------------------------------------------------------

    def emit_errors(self, count: int) -> None:
        """As Loop.emit_errors, and remember when each error was printed."""
        for _ in range(count):
            super().emit_errors(1)
            self.emitted.append(time.time())

    def fill_vram(self, other_used_mib: int) -> None:
        """Other work now holds ``other_used_mib`` of the simulated GPU."""
        self.other_used_mib = other_used_mib
        self.set_vram(other_used_mib)

    def follow_vram(self) -> None:
        """Bring the simulated GPU in line with the model the app's config names now (call it
        after a switch: NVML then shows the new model's memory, or none when it does not fit)."""
        self.set_vram(self.other_used_mib)

    # -- observing ----------------------------------------------------------------------

    def switch_times(self) -> list[float]:
        """When each switch of the history was committed (the remediator's clock)."""
        return [float(r["time"]) for r in self.history()]

    def wait_switches(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until the history holds ``count`` switches; returns it."""
        return wait_until(
            lambda: h if len(h := self.history()) >= count else None,
            timeout,
            f"switch #{count} of fleet {self.fleet}",
            interval=0.2,
            diagnose=self.diagnostics,
        )

    def deferred_alerts(self) -> list[dict[str, Any]]:
        """The alerts the remediator keeps for later (status ``deferred_alerts``)."""
        return list(self.status().get("deferred_alerts") or [])

    def server_errors(self) -> list[list[float]]:
        """Per start of the model server, Docker's timestamp of each error's first line.

        The errors are the exporter's: the lines its default patterns match, grouped as it
        groups them (matching lines within the incident window of a failure's first are one
        error), whatever Ollama release and engine the server prints ($SIM_OLLAMA).
        """
        classifier = LogClassifier()
        runs: list[list[float]] = []
        grouper = Grouper(DEFAULT_WINDOW_NS)
        for line in self.server.logs(timestamps=True).decode(errors="replace").splitlines():
            stamp, _, text = line.partition(" ")
            if START_MARK in text or not runs:
                runs.append([])
                grouper = Grouper(DEFAULT_WINDOW_NS)
            at = parse_time(stamp)
            if classifier.classify(text) is not None and grouper.opens(round(at * NS)):
                runs[-1].append(at)
        return runs

    def runs_model(self, model: str) -> bool:
        """True when the app answers /healthz with ``model`` (it started on it)."""
        try:
            return json.loads(http_get(self.app_health_url, timeout=2)).get("model") == model
        except (OSError, ValueError):
            return False

    def fits(self, model: str) -> bool:
        """Whether ``model`` fits the simulated GPU beside the other work now."""
        return MODEL_MIB[model] <= self.options.gpu_total_mib - self.other_used_mib

    def observe(self, seconds: float, switches: int) -> None:
        """Watch for ``seconds``: raise as soon as the history grows past ``switches``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            history = self.history()
            if len(history) > switches:
                raise AssertionError(
                    f"switch #{len(history)} while none was expected: {history[-1]}\n"
                    f"{self.diagnostics()}"
                )
            time.sleep(0.5)


@dataclass(frozen=True)
class ChainTimes:
    """The chain's timeline (epoch seconds) and its bound."""

    third_error: float  # the first model's third error (Docker's timestamp of its first line)
    first_switch: float  # llama3.2:3b -> phi3:mini committed
    second_switch: float  # phi3:mini -> tinyllama:1.1b committed
    cooldown: float

    @property
    def time_to_settle(self) -> float:
        """Seconds from the first model's third error to the fleet running a model that fits."""
        return self.second_switch - self.third_error

    @property
    def margin(self) -> float:
        """How far the second step came inside its bound (cooldown + 10 s after the first)."""
        return self.first_switch + self.cooldown + 10 - self.second_switch


def chain_options() -> ScenarioOptions:
    """The chain: the default ladder on a simulated GPU where other work leaves room only for
    tinyllama:1.1b, so the first model fails, and the second rung fails at once."""
    return ScenarioOptions(simulate_vram=True, other_used_mib=CHAIN_OTHER_USED_MIB)


def run_chain(
    scenario: Scenario,
    timeout: float = 180,
    during_cooldown: Callable[[float], None] | None = None,
) -> ChainTimes:
    """Drive a started chain scenario until the fleet runs a model that fits; its timeline.

    ``during_cooldown`` is called with the first switch's time once it is committed.
    """
    cooldown = scenario.fleet_config().cooldown_seconds
    history = scenario.wait_switches(1, 60)
    scenario.follow_vram()
    assert (history[0]["from"], history[0]["to"]) == (LADDER[0], LADDER[1]), history
    if during_cooldown is not None:
        during_cooldown(float(history[0]["time"]))
    history = scenario.wait_switches(2, cooldown + timeout)
    scenario.follow_vram()
    assert (history[1]["from"], history[1]["to"]) == (LADDER[1], LADDER[2]), history
    wait_until(lambda: scenario.runs_model(LADDER[2]), 30, f"the app on {LADDER[2]}")
    first_run = scenario.server_errors()[0]
    return ChainTimes(
        third_error=first_run[2],
        first_switch=float(history[0]["time"]),
        second_switch=float(history[1]["time"]),
        cooldown=cooldown,
    )


def chain_time_to_settle(workdir: Path) -> ChainTimes:
    """The chain on the shipped configuration, once: what the benchmarks print."""
    with Scenario(workdir, chain_options()) as scenario:
        return run_chain(scenario)
