"""SystemdRuntime against a real systemd: units found, restarted and watched inside the bed.

The bed (simulator.systemd_host) runs systemd as PID 1 in a container; the runtime runs
inside it with the host's venv, one call at a time, through tests/support/systemd_steps.py.
``ollama.service`` is the Ollama stand-in with no Type= (simple), as Ollama's own unit is; its
readiness is the switch's probe: its API lists the model. ``llm-app.service`` reads its model
from the file a switch rewrites; a unit that exits at once stands for a model server that
cannot start. The shipped user and polkit rule (deploy/systemd) decide who may restart what.
The last test is a whole switch and its rollback through ``model-fleet`` with
``server.runtime: systemd`` and ``units.app``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import yaml

from simulator.systemd_host import REPO_ROOT, SystemdHost
from tests.support import docker_env

pytestmark = [pytest.mark.systemd, pytest.mark.docker]

DEPLOY = REPO_ROOT / "deploy" / "systemd"
PYTHON = sys.executable  # the host's venv, mounted at the same path in the bed
SERVER = "ollama.service"  # the names the shipped polkit rule lets model-fleet restart
APP = "llm-app.service"
CRASHER = "exits-at-once.service"
USER = "model-fleet"
PORT = 11434
URL = f"http://127.0.0.1:{PORT}"
MODEL = "llama3.2:3b"
# The stand-in keeps what it pulled across restarts, as Ollama's model directory does.
SERVER_UNIT = f"""[Unit]
Description=model-fleet test: the Ollama stand-in

[Service]
ExecStart={PYTHON} -m simulator.fake_ollama serve --port {PORT} --model {MODEL}=2048 \\
    --store /var/lib/ollama-standin/models.json
"""
CRASHER_UNIT = """[Unit]
Description=model-fleet test: a model server that cannot start

[Service]
ExecStart=/bin/sh -c 'echo cannot start; exit 3'
"""
# EnvironmentFile= is read again at every start; the app exits with 4 on the model it cannot
# run, as an application that fails on a model would.
APP_ENV = "/etc/llm-app/model.env"
APP_UNIT = f"""[Unit]
Description=model-fleet test: an application of the model server

[Service]
EnvironmentFile={APP_ENV}
ExecStart=/bin/sh -c 'test "$OLLAMA_MODEL" != tinyllama:1.1b || exit 4; exec sleep infinity'
"""
CONFIG_FILE = "/etc/model-fleet/model-fleet.yaml"


@pytest.fixture(scope="module")
def host(docker_client: Any) -> Iterator[SystemdHost]:
    """One bed for the module: the three units, the shipped user and polkit rule."""
    labels = {docker_env.TEST_LABEL: docker_env.RUN_ID}
    with SystemdHost(docker_client, name_prefix="mf-test-runtime", labels=labels) as bed:
        bed.write_file(
            "/etc/sysusers.d/model-fleet.conf", (DEPLOY / "model-fleet.sysusers").read_text()
        )
        bed.exec("systemd-sysusers")
        rule = (DEPLOY / "model-fleet.rules").read_text()
        bed.write_file("/etc/polkit-1/rules.d/50-model-fleet.rules", rule)
        bed.install_unit(SERVER, SERVER_UNIT)
        bed.install_unit(CRASHER, CRASHER_UNIT)
        bed.write_file(APP_ENV, f"OLLAMA_MODEL={MODEL}\n")
        bed.install_unit(APP, APP_UNIT)
        bed.systemctl("start", SERVER, APP)
        yield bed


@pytest.fixture(autouse=True)
def fresh_start_limit(host: SystemdHost) -> None:
    """Each test starts the units' start counters afresh: the module restarts ollama.service
    more often in a few seconds than StartLimitBurst= (5 in 10 s) allows; one switch and its
    rollback start it twice."""
    host.systemctl("reset-failed", SERVER, APP)


def step(
    host: SystemdHost, op: str, *units: str, user: str | None = None, **options: object
) -> dict[str, Any]:
    """One SystemdRuntime call in the bed (tests/support/systemd_steps.py): its answer."""
    argv = [PYTHON, "-m", "tests.support.systemd_steps", op, *units]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    return dict(json.loads(host.exec(*argv, user=user).stdout))


def show(host: SystemdHost, unit: str, prop: str) -> str:
    """One property as systemd itself says it."""
    return host.systemctl("show", "--value", f"--property={prop}", unit).strip()


def test_find_names_units_and_refuses_one_systemd_does_not_know(host: SystemdHost) -> None:
    assert step(host, "find", SERVER, APP)["found"] == [APP, SERVER]
    assert step(host, "find", SERVER, "nosuch.service")["error"] == (
        "systemd find of unit 'nosuch.service' failed: Unit nosuch.service not found. "
        "(LoadState=not-found)"
    )


def test_the_state_is_systemd_s(host: SystemdHost) -> None:
    state = step(host, "state", SERVER)["state"]
    assert (state["status"], state["health"], state["exit_code"]) == ("running", None, None)
    assert state["run_id"] == show(host, SERVER, "InvocationID")
    assert state["started_at"] is not None


def test_a_restart_begins_a_new_run(host: SystemdHost) -> None:
    before = step(host, "state", SERVER)["state"]
    restarted = step(host, "restart", SERVER)
    after = step(host, "state", SERVER)["state"]
    assert after["status"] == "running"
    assert after["run_id"] != before["run_id"]
    assert after["run_id"] == show(host, SERVER, "InvocationID")
    assert restarted["started_at"] == after["started_at"]
    assert datetime.fromisoformat(after["started_at"]) > datetime.fromisoformat(
        before["started_at"]
    )


def test_ready_when_the_restarted_server_lists_the_model(host: SystemdHost) -> None:
    answer = step(host, "restart-wait", SERVER, url=URL, model=MODEL, timeout=30)
    assert answer["state"]["status"] == "running", answer
    assert answer["state"]["run_id"] == show(host, SERVER, "InvocationID")


def test_not_ready_by_the_deadline_says_why(host: SystemdHost) -> None:
    answer = step(host, "wait", SERVER, url=URL, model="nosuch:1b", timeout=2)
    assert answer["error"] == (
        f"systemd wait_ready of unit '{SERVER}' failed: not ready before the deadline: "
        "status=running; model server does not list nosuch:1b"
    )
    assert 2.0 <= answer["seconds"] < 4.0


def test_still_up_fails_after_an_outside_restart(host: SystemdHost) -> None:
    before = step(host, "wait", SERVER, url=URL, model=MODEL)["state"]
    assert step(host, "still-up", SERVER, before=json.dumps(before))["state"] == before
    host.systemctl("restart", SERVER)
    now = show(host, SERVER, "InvocationID")
    assert step(host, "still-up", SERVER, before=json.dumps(before))["error"] == (
        f"systemd wait_ready of unit '{SERVER}' failed: did not stay up after it started: "
        f"status=running; another run began (InvocationID {before['run_id']} -> {now})"
    )


def test_a_unit_that_exits_at_once_is_reported_with_its_exit_status(host: SystemdHost) -> None:
    answer = step(host, "restart-wait", CRASHER, timeout=30)
    assert answer["error"] == (
        f"systemd wait_ready of unit '{CRASHER}' failed: stopped after it started: "
        "status=failed exit_code=3 result=exit-code"
    )
    assert answer["seconds"] < 10, "a failed unit does not hold the wait until the deadline"
    state = step(host, "state", CRASHER)["state"]
    assert (state["status"], state["exit_code"], state["result"]) == ("failed", 3, "exit-code")


def test_the_shipped_user_restarts_its_units_and_polkit_answers_the_rest(
    host: SystemdHost,
) -> None:
    before = show(host, SERVER, "InvocationID")
    assert "error" not in step(host, "restart", SERVER, user=USER)
    assert show(host, SERVER, "InvocationID") != before
    denied = step(host, "restart", CRASHER, user=USER)["error"]
    assert denied == (
        f"systemd restart of unit '{CRASHER}' failed: systemctl restart exited 4: Failed to "
        f"restart {CRASHER}: Access denied; the unit is now status=failed exit_code=3 "
        "result=exit-code"
    )
    # A user no rule speaks for: polkit would ask for a password, --no-ask-password says so.
    assert step(host, "restart", SERVER, user="nobody")["error"] == (
        f"systemd restart of unit '{SERVER}' failed: systemctl restart exited 1: Failed to "
        f"restart {SERVER}: Interactive authentication required.; the unit is now status=running"
    )


def model_fleet(
    host: SystemdHost, *args: str, env: dict[str, str] | None = None
) -> tuple[int, Any]:
    """``model-fleet ARGS`` in the bed, as root: exit code and printed JSON (None: none)."""
    argv = [PYTHON, "-m", "remediator.cli", "--config", CONFIG_FILE, *args]
    done = host.exec(*argv, check=False, timeout=120, env=env)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None


def write_config(host: SystemdHost, state_file: str) -> None:
    """The fleet of ollama.service and llm-app.service, as an operator writes it."""
    fleet = {
        "server": {"url": URL, "runtime": "systemd", "unit": SERVER},
        "units": {"app": [APP]},
        "containers": {"ready_timeout_seconds": 30, "settle_seconds": 2},
        "app_config": [{"path": APP_ENV, "format": "env", "key": "OLLAMA_MODEL"}],
    }
    config = {"state_file": state_file, "fleets": {"default": fleet}}
    host.write_file(CONFIG_FILE, yaml.safe_dump(config))


def test_a_switch_and_its_rollback_restart_the_units(host: SystemdHost) -> None:
    write_config(host, "/var/lib/model-fleet-test/switch.json")
    host.write_file(APP_ENV, f"OLLAMA_MODEL={MODEL}\n")
    host.systemctl("restart", APP)
    runs = {unit: show(host, unit, "InvocationID") for unit in (SERVER, APP)}

    code, result = model_fleet(host, "downgrade", "--reason", "bed")
    assert code == 0, json.dumps(result)
    assert result["steps"][-2:] == [f"restarted {SERVER}", f"restarted {APP}"]
    assert host.exec("cat", APP_ENV).stdout == "OLLAMA_MODEL=phi3:mini\n"
    for unit, run in runs.items():
        assert show(host, unit, "ActiveState") == "active"
        assert show(host, unit, "InvocationID") != run, f"{unit} was not restarted"

    # The app exits on the next rung: the switch rolls back, the file and both units with it.
    code, result = model_fleet(host, "downgrade", "--reason", "bed")
    assert code != 0, result
    assert result["failed_step"] == "verify", result
    assert result["error"].startswith(
        f"switch failed at step 'verify': systemd wait_ready of unit '{APP}' failed: stopped "
        "after it started: status=failed exit_code=4 result=exit-code"
    ), result["error"]
    assert host.exec("cat", APP_ENV).stdout == "OLLAMA_MODEL=phi3:mini\n"
    assert show(host, APP, "ActiveState") == "active"
    assert model_fleet(host, "status")[1]["current_model"]["name"] == "phi3:mini"


def test_a_switch_killed_half_way_is_rolled_back_by_the_next_command(host: SystemdHost) -> None:
    """Killed after the model server's unit restarted on the new model, before the app's: the
    next command finds the journal open and puts the configs and both units back."""
    write_config(host, "/var/lib/model-fleet-test/crash.json")
    host.write_file(APP_ENV, f"OLLAMA_MODEL={MODEL}\n")
    host.systemctl("restart", APP)
    app_run = show(host, APP, "InvocationID")
    crash = {"MODEL_FLEET_TEST_CRASH_AFTER": "restarted_ollama"}
    code, _ = model_fleet(host, "downgrade", "--reason", "bed", env=crash)
    assert code == 137  # SIGKILL, half-way
    assert host.exec("cat", APP_ENV).stdout == "OLLAMA_MODEL=phi3:mini\n"
    assert show(host, APP, "InvocationID") == app_run  # the app was never restarted

    _, status = model_fleet(host, "status")
    assert status["switch_in_progress"] is not None
    code, result = model_fleet(host, "downgrade", "--dry-run")  # resolves first, then plans
    assert code == 0, result
    assert host.exec("cat", APP_ENV).stdout == f"OLLAMA_MODEL={MODEL}\n"
    assert show(host, APP, "ActiveState") == "active"
    assert show(host, APP, "InvocationID") != app_run  # restarted on the old model
    _, status = model_fleet(host, "status")
    assert (status["current_model"]["name"], status["switch_in_progress"]) == (MODEL, None)
    _, history = model_fleet(host, "history")
    assert history[-1]["recovery"] == "rolled_back"
