"""Ollama as a systemd service, the whole loop, in the bed (simulator.systemd_host): systemd as
PID 1, a stand-in ``ollama.service`` printing real Ollama's lines to journald
(simulator.native_ollama), the application as ``llm-app.service``, the shipped exporter and
remediator units as the shipped user with the shipped polkit rule, and real Prometheus and
Alertmanager (on this machine, with the shipped configs, rules and timings; only addresses and
the token file changed).

The exporter follows ollama.service's journal: its counts stay exact across an exporter
restart and a unit restart; three errors make one switch, through polkit, with the app on the
new model; a journal vacuumed past the run's start is a gap.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from fleet_contract.systemd import parse_show, rfc3339, timestamp_ns
from simulator import prom_env
from simulator.systemd_host import REPO_ROOT, SystemdHost, home_python_dropin
from tests.support import docker_env
from tests.support.shipped_units import UNITS, USER, VENV, shipped, wait_for

pytestmark = [pytest.mark.systemd, pytest.mark.docker, pytest.mark.e2e, pytest.mark.slow]

OLLAMA = "ollama.service"
APP = "llm-app.service"  # the application unit the shipped polkit rule names
APP_ENV = "/etc/llm-app/app.env"
FREE_MIB = "/etc/ollama-sim/free_mib"
EMIT = "/run/ollama-emit"
TOKEN = "systemd-native-token"


def native_config() -> str:
    """config/model-fleet.systemd.yaml as shipped, with the test's app file, its host name, no
    NVML (no GPU here), and the default ladder without phi3:mini (larger than llama3.2:3b):
    one step down fits."""
    config = yaml.safe_load((REPO_ROOT / "config" / "model-fleet.systemd.yaml").read_text())
    fleet = config["fleets"]["default"]
    assert fleet["server"]["unit"] == OLLAMA and fleet["units"]["app"] == [APP]
    fleet["app_config"][0]["path"] = APP_ENV
    fleet["ladder"] = [
        {"name": "llama3.2:3b", "size_mb": 2048},
        {"name": "tinyllama:1.1b", "size_mb": 637},
        {"name": "qwen2.5:0.5b", "size_mb": 397},
    ]
    config["host"] = "systemd-native"
    config["exporter"]["nvml"] = False
    return str(yaml.safe_dump(config, sort_keys=False))


OLLAMA_UNIT = f"""\
[Unit]
Description=stand-in Ollama (simulator.native_ollama)
[Service]
Environment=OLLAMA_HOST=127.0.0.1:11434
StateDirectory=ollama-sim
ExecStart={sys.executable} -m simulator.native_ollama --app-env {APP_ENV} --free-mib {FREE_MIB} \\
  --emit {EMIT} --store /var/lib/ollama-sim/models.json --model llama3.2:3b=2048
"""
APP_UNIT = f"""\
[Unit]
Description=stand-in application: reads its model from {APP_ENV} at start
[Service]
EnvironmentFile={APP_ENV}
ExecStart=/bin/sh -c 'echo "app: serving with $$OLLAMA_MODEL"; exec sleep infinity'
"""
# Test-only: Alertmanager and Prometheus run on this machine, outside the bed, so the
# remediator listens on the bed's address (the shipped unit: 127.0.0.1:8080). The app's
# config directory is writable, as docs/operations.md tells an operator to make it.
REMEDIATOR_DROPIN = f"""\
[Service]
ExecStart=
ExecStart={VENV}/bin/model-fleet serve --config /etc/model-fleet/model-fleet.yaml \
  --bind 0.0.0.0:8080
ReadWritePaths={Path(APP_ENV).parent}
"""
# An Ollama error as 0.12.6 prints it (tests/data/ollama): one VRAM error each.
OOM_LINE = (
    'time={now} level=ERROR source=sched.go:470 msg="error loading llama server" '
    'error="llama runner process has terminated: cudaMalloc failed: out of memory"'
)


@dataclass
class Native:
    """The bed with everything installed and running, and the monitoring on this machine."""

    host: SystemdHost
    exporter_url: str
    remediator_url: str

    def metric(self, name: str, **labels: str | None) -> float | None:
        """A sample of the exporter's /metrics, of ollama.service unless ``container=None``
        (None: no such series)."""
        try:
            text = requests.get(self.exporter_url, timeout=10).text
        except requests.ConnectionError:
            return None  # restarting: the caller polls again
        want = {k: v for k, v in {"container": OLLAMA, **labels}.items() if v is not None}
        for line in text.splitlines():
            match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
            if match is None:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            if all(found.get(k) == v for k, v in want.items()):
                return float(match.group(2))
        return None

    def show(self, unit: str) -> dict[str, str]:
        props = "InvocationID,ExecMainStartTimestamp,ActiveState"
        return parse_show(self.host.systemctl("show", unit, "-p", props, "--timestamp=us+utc"))

    def emit(self, *lines: str) -> None:
        """Lines the stand-in Ollama prints as they are (it reads the file every 0.1 s)."""
        self.host.write_file(EMIT, "".join(f"{line}\n" for line in lines))

    def restart(self, unit: str) -> None:
        self.host.systemctl("restart", unit)


def oom_now() -> str:
    return OOM_LINE.format(now=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@pytest.fixture(scope="module")
def native(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Native]:
    labels = {docker_env.TEST_LABEL: docker_env.RUN_ID}
    with ExitStack() as stack:
        host = stack.enter_context(
            SystemdHost(docker_client, name_prefix="mf-test-native", labels=labels)
        )
        _install(host)
        token = tmp_path_factory.mktemp("native") / "token"
        token.write_text(TOKEN + "\n")
        webhook = f"http://{host.ip}:8080/webhook/alertmanager"
        am = stack.enter_context(
            prom_env.start_alertmanager(
                prom_env.render_alertmanager_config(webhook_url=webhook, credentials_file=token)
            )
        )
        prom = stack.enter_context(
            prom_env.start_prometheus(
                prom_env.render_prometheus_config(
                    exporter=f"{host.ip}:9842",
                    remediator=f"{host.ip}:8080",
                    alertmanager=am.url.removeprefix("http://"),
                )
            )
        )
        prom.wait_targets_up(60)
        yield Native(host, f"http://{host.ip}:9842/metrics", f"http://{host.ip}:8080")


def _install(host: SystemdHost) -> None:
    """The stand-ins and the shipped files, as docs/operations.md installs them."""
    host.write_file("/etc/sysusers.d/model-fleet.conf", shipped("model-fleet.sysusers"))
    host.exec("systemd-sysusers")
    host.exec("mkdir", "-p", str(Path(VENV).parent))
    host.exec("ln", "-sfn", sys.prefix, VENV)
    host.write_file("/etc/polkit-1/rules.d/50-model-fleet.rules", shipped("model-fleet.rules"))
    host.write_file("/etc/model-fleet/model-fleet.yaml", native_config(), mode=0o640)
    host.exec("chown", f"root:{USER}", "/etc/model-fleet/model-fleet.yaml")
    host.write_file("/etc/model-fleet/token", TOKEN + "\n", mode=0o600)
    host.write_file(APP_ENV, "OLLAMA_MODEL=llama3.2:3b\n")
    host.exec("chown", "-R", f"{USER}:{USER}", str(Path(APP_ENV).parent))
    host.write_file(FREE_MIB, "8000\n")  # room for every model until the test takes it away
    host.install_unit(OLLAMA, OLLAMA_UNIT)
    host.install_unit(APP, APP_UNIT)
    host.systemctl("start", OLLAMA, APP)
    for unit in UNITS:
        host.write_file(f"/etc/systemd/system/{unit}", shipped(unit))
        host.install_unit(f"{unit}.d/python.conf", home_python_dropin())
    host.install_unit(f"{UNITS[1]}.d/test.conf", REMEDIATOR_DROPIN)
    host.systemctl("start", *UNITS)


def test_counts_stay_exact_across_restarts_and_three_errors_switch_once(native: Native) -> None:
    run = native.show(OLLAMA)
    start = timestamp_ns(run["ExecMainStartTimestamp"])
    assert start is not None
    wait_for(
        lambda: native.metric("model_fleet_exporter_journal_up", container=None) == 1,
        "the exporter following the journal",
    )
    started = wait_for(
        lambda: native.metric("model_fleet_container_start_info", started_at=rfc3339(start)),
        "ollama.service's run in the exporter",
    )
    assert started == 1.0
    # The same start as a number, from the unit's ExecMainStartTimestamp (microseconds).
    assert native.metric("model_fleet_container_start_time_seconds") == start / 1_000_000_000

    # Two errors, apart (one incident each): counted once each, live.
    native.emit(oom_now())
    wait_for(lambda: native.metric("model_fleet_vram_errors_since_start") == 1, "the first error")
    time.sleep(3)  # more than the incident window: the next is another error
    native.emit(oom_now())
    wait_for(lambda: native.metric("model_fleet_vram_errors_since_start") == 2, "the second error")
    assert native.metric("model_fleet_vram_errors_total", kind="oom") == 2

    # The exporter restarts: it reads the run again from its start, and counts no more.
    native.restart(UNITS[0])
    wait_for(lambda: native.metric("model_fleet_vram_errors_since_start") == 2, "the same count")
    time.sleep(2)
    assert native.metric("model_fleet_vram_errors_since_start") == 2
    assert native.metric("model_fleet_vram_errors_total", kind="oom") == 0  # history, not live

    # The unit restarts: a new run, counted from 0.
    native.restart(OLLAMA)
    rerun = native.show(OLLAMA)
    assert rerun["InvocationID"] != run["InvocationID"]
    restart = timestamp_ns(rerun["ExecMainStartTimestamp"])
    assert restart is not None and restart > start
    wait_for(
        lambda: native.metric("model_fleet_container_start_info", started_at=rfc3339(restart)),
        "the new run in the exporter",
    )
    assert native.metric("model_fleet_vram_errors_since_start") == 0

    # llama3.2:3b no longer fits: its load fails every 2.5 s until the fleet steps down.
    app_before = native.show(APP)["InvocationID"]
    native.host.write_file(FREE_MIB, "1000\n")
    history = wait_for(
        lambda: requests.get(native.remediator_url + "/history", timeout=10).json(),
        "a switch",
        timeout=120,
    )
    assert [(h["from"], h["to"], h["direction"]) for h in history] == [
        ("llama3.2:3b", "tinyllama:1.1b", "down")
    ]
    assert native.host.exec("cat", APP_ENV).stdout == "OLLAMA_MODEL=tinyllama:1.1b\n"
    assert native.show(OLLAMA)["InvocationID"] != rerun["InvocationID"]  # restarted, by polkit
    app_now = native.show(APP)["InvocationID"]
    assert app_now != app_before
    said = [e["MESSAGE"] for e in native.host.journal(f"_SYSTEMD_INVOCATION_ID={app_now}")]
    assert "app: serving with tinyllama:1.1b" in said
    # tinyllama fits: no more errors, no second switch.
    wait_for(lambda: native.metric("model_fleet_vram_errors_since_start") == 0, "a quiet run")
    time.sleep(15)
    assert len(requests.get(native.remediator_url + "/history", timeout=10).json()) == 1


def test_a_journal_vacuumed_past_the_runs_start_is_a_gap(native: Native) -> None:
    start = timestamp_ns(native.show(OLLAMA)["ExecMainStartTimestamp"])
    assert start is not None
    native.host.systemctl("stop", UNITS[0])
    native.host.exec("journalctl", "--rotate")
    time.sleep(2)
    native.host.exec("journalctl", "--vacuum-time=1s")
    first = native.host.exec("sh", "-c", "journalctl -o json --output-fields=_PID | head -1")
    oldest = int(json.loads(first.stdout)["__REALTIME_TIMESTAMP"]) * 1000
    assert oldest > start, "the vacuum kept the run's start: nothing to test"
    native.host.systemctl("start", UNITS[0])
    wait_for(lambda: native.metric("model_fleet_log_gaps_total") == 1, "a gap")
