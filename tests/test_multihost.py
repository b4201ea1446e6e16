"""Two hosts for real: two Docker engines, one Prometheus, a two-replica Alertmanager cluster.

Host A runs on the machine's engine, host B on a second dockerd this module starts with its own
socket, data root, exec root, pid file and bridge (simulator/engines.py), and removes again.
Each host has its own exporter, remediator and fleet. The monitoring configs are
`model-fleet render-monitoring`'s output for an inventory of the two hosts, used as they are
(simulator/multihost.py).

VRAM errors on host B switch host B's fleet, once, and nothing of host A; with host A's
remediator stopped, ModelFleetRemediatorDown fires for host A and reaches both Alertmanager
replicas, while host B still remediates; afterwards nothing of the second engine is left and
the first engine's containers still have their network. Skipped only where no second dockerd
can run here (not root, no dockerd).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import pytest

from simulator import engines
from simulator.local_http import wait_until
from simulator.loop_setup import LOOP_LABEL, stop_group
from simulator.multihost import HOST_A, HOST_B, HostLoop, TwoHosts
from tests.support.docker_env import run_busybox

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]

# Shipped intervals: 2 s exporter scrape + 2 s evaluation + 1 s group_wait, plus restarts.
ALERT_TIMEOUT = 45.0
# The `for` of ModelFleetRemediatorDown in this module's copy of the rules (shipped: 1m).
REMEDIATOR_DOWN_FOR = "2s"
WITNESS_SCRIPT = "trap 'exit 0' TERM; while true; do sleep 1; done"


@dataclass
class Scenario:
    """The two hosts, the second engine and a witness container on the first engine."""

    hosts: TwoHosts
    engine: engines.SecondEngine
    witness: Any
    docker0: str  # the first engine's bridge address before the second engine started
    first: docker.DockerClient  # the first engine
    stack: contextlib.ExitStack
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def a(self) -> HostLoop:
        return self.hosts.hosts[HOST_A]

    @property
    def b(self) -> HostLoop:
        return self.hosts.hosts[HOST_B]


def bridge_address(name: str) -> str:
    """The IPv4 address (with prefix) of network device ``name``, or "" when there is none."""
    done = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", name], capture_output=True, text=True
    )
    fields = done.stdout.split()
    return fields[fields.index("inet") + 1] if "inet" in fields else ""


@pytest.fixture(scope="module")
def scenario(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    reason = engines.why_not_available()
    if reason:
        pytest.skip(f"the two-engine test cannot start a second dockerd here: {reason}")
    # Only now: where no second dockerd can run, the first engine is not asked for either.
    docker_client: docker.DockerClient = request.getfixturevalue("docker_client")
    stack = contextlib.ExitStack()
    try:
        witness = run_busybox(docker_client, WITNESS_SCRIPT)
        stack.callback(lambda: witness.remove(force=True))
        docker0 = bridge_address("docker0")
        began = time.monotonic()
        engine = stack.enter_context(engines.second_engine())
        hosts = TwoHosts(
            tmp_path_factory.mktemp("multihost"),
            engine,
            alert_for={"ModelFleetRemediatorDown": REMEDIATOR_DOWN_FOR},
        )
        stack.enter_context(hosts)
        timings = {"engine start": engine.started_in, "setup": time.monotonic() - began}
        yield Scenario(hosts, engine, witness, docker0, docker_client, stack, timings)
    finally:
        stack.close()  # the last test closes it already; this is for a run that stopped earlier


def test_the_rendered_configs_pass_promtool_and_amtool(scenario: Scenario) -> None:
    for tool, done in scenario.hosts.check_configs().items():
        assert done.returncode == 0, f"{tool}:\n{done.stdout}{done.stderr}"
    # Prometheus runs on them and scrapes every target of both hosts.
    assert scenario.hosts.prometheus is not None
    targets = scenario.hosts.prometheus.active_targets()
    hosts = sorted(t["labels"].get("host", "") for t in targets)
    assert hosts == sorted([HOST_A, HOST_A, HOST_B, HOST_B]), targets
    assert all(t["health"] == "up" for t in targets)
    print(f"timings: {scenario.timings}")


def test_errors_on_host_b_switch_only_host_b_exactly_once(scenario: Scenario) -> None:
    a, b = scenario.a, scenario.b
    a_config, a_started = a.app_env.read_text(), a.started_at(a.server)
    began = time.monotonic()
    b.emit_errors(3)
    wait_until(
        lambda: len(b.history()) >= 1,
        ALERT_TIMEOUT,
        "host B's switch",
        interval=0.2,
        diagnose=scenario.hosts.diagnostics,
    )
    scenario.timings["errors to switch on B"] = time.monotonic() - began
    record = b.history()[0]
    assert (record["to"], record["direction"], record["trigger"]) == ("phi3:mini", "down", "alert")
    assert b.current_model_in_config() == "phi3:mini"
    wait_until(lambda: b.app_log_tail() == "app running phi3:mini", 30, "B's app on phi3:mini")
    # The alert that did it was host B's, and only host B's.
    prom = scenario.hosts.prometheus
    assert prom is not None
    fired = prom.query('max_over_time(ALERTS{alertname="ModelFleetVRAMErrors"}[5m])')
    assert fired and {s["metric"].get("host") for s in fired} == {HOST_B}, fired
    wait_until(
        lambda: not scenario.hosts.firing("ModelFleetVRAMErrors"), ALERT_TIMEOUT, "the resolution"
    )
    time.sleep(8)  # more evaluations and group_intervals of both replicas: still one switch
    assert len(b.history()) == 1
    assert a.history() == []
    assert a.app_env.read_text() == a_config
    assert a.started_at(a.server) == a_started
    assert a.errors_since_start() == 0


def test_with_host_a_remediator_down_an_alert_says_so_and_b_still_remediates(
    scenario: Scenario,
) -> None:
    a, b, hosts = scenario.a, scenario.b, scenario.hosts
    a_config = a.app_env.read_text()
    stop_group(a.procs["remediator"])  # its PID's process group: gunicorn and its workers
    began = time.monotonic()
    alert = wait_until(
        lambda: hosts.firing("ModelFleetRemediatorDown", HOST_A),
        60,
        "ModelFleetRemediatorDown for host A",
        diagnose=hosts.diagnostics,
    )
    scenario.timings["remediator stop to alert"] = time.monotonic() - began
    assert alert[0]["labels"]["severity"] == "critical"
    assert HOST_A in alert[0]["annotations"]["summary"]
    assert not hosts.firing("ModelFleetRemediatorDown", HOST_B)
    matchers = ('alertname="ModelFleetRemediatorDown"', f'host="{HOST_A}"')
    wait_until(lambda: all(hosts.in_alertmanagers(*matchers)), 30, "the alert in both replicas")
    b.emit_errors(3)
    wait_until(
        lambda: len(b.history()) >= 2,
        ALERT_TIMEOUT,
        "host B's second switch",
        interval=0.2,
        diagnose=hosts.diagnostics,
    )
    assert b.history()[1]["to"] == "tinyllama:1.1b"
    time.sleep(5)
    assert len(b.history()) == 2
    assert a.history_from_state() == []
    assert a.app_env.read_text() == a_config


def test_cleanup_leaves_nothing_behind_and_the_first_engine_keeps_its_network(
    scenario: Scenario,
) -> None:
    engine, docker_client = scenario.engine, scenario.first
    if shutil.which("iptables-save"):
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        assert engine.bridge not in rules and str(engine.subnet) not in rules
    procs = [p for loop in scenario.hosts.hosts.values() for p in loop.procs.values()]
    fleets = scenario.hosts.fleets.values()
    began = time.monotonic()
    scenario.hosts.close()
    engine.stop()
    scenario.timings["teardown"] = time.monotonic() - began
    assert engine.leftovers() == []
    assert all(p.poll() is not None for p in procs)
    for proc in procs:  # and nothing of their process groups (gunicorn's workers)
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)
    for fleet in fleets:
        mine = {"label": f"{LOOP_LABEL}={fleet}"}
        assert not docker_client.containers.list(all=True, filters=mine)
    # The first engine: its bridge, its address, and its containers' network.
    assert bridge_address("docker0") == scenario.docker0
    witness = scenario.witness
    witness.reload()
    gateway = witness.attrs["NetworkSettings"]["Gateway"]
    code, out = witness.exec_run(["ping", "-c", "1", "-W", "2", gateway])
    assert code == 0, out.decode()
    fresh = run_busybox(docker_client, f"ping -c 1 -W 2 {gateway}")
    try:
        assert fresh.wait(timeout=30)["StatusCode"] == 0, fresh.logs().decode()
    finally:
        fresh.remove(force=True)
    scenario.stack.close()
    print(f"timings: { {k: round(v, 1) for k, v in scenario.timings.items()} }")
