"""Where a fleet's services run: containers or systemd units, parsed, checked and wired.

Old configs keep Docker; ``server.runtime: systemd`` with ``server.unit`` and ``units.app``
name units; every combination that says two things about one service is refused by
check-config with the key to keep. The wiring builds the runtime each role runs on, and a
switch restarts the units by name through the in-memory runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet_contract.systemd import unit_problem
from remediator.adapters.docker_engine import DockerRuntime
from remediator.adapters.systemd_units import SystemdRuntime
from remediator.app import wiring
from remediator.app.remediator import Remediator
from remediator.cli import main as cli
from remediator.config import (
    RUNTIMES,
    ConfigError,
    FleetConfig,
    Placement,
    ServerSettings,
    config_warnings,
    effective_config,
    parse_config,
    placement_of,
    service_problem,
)
from remediator.ports.runtime import ROLE_APP, ROLE_SERVER, Runtime, RuntimeByRole
from remediator.report.queries import ExitCode
from remediator.store.state import StateStore
from remediator.switch.actions import FleetActions
from tests.support.memory_runtime import MemoryRuntime
from tests.support.memory_server import MemoryServer

MIB = 1024 * 1024
SYSTEMD_SERVER = {"runtime": "systemd", "unit": "ollama.service"}


def fleet(settings: dict[str, Any]) -> FleetConfig:
    return parse_config({"fleets": {"a": settings}}, "cfg.yaml").fleets["a"]


def test_an_old_config_keeps_docker_and_its_labels() -> None:
    a = fleet({"containers": {"server": ["ollama"], "app": ["app"]}})
    assert a.server == ServerSettings(runtime="docker", unit=None)
    assert a.units.app == () and a.containers.use_labels is True
    assert placement_of(a, ROLE_SERVER) == Placement("docker", ("ollama",), True)
    assert placement_of(a, ROLE_APP) == Placement("docker", ("app",), True)
    assert isinstance(wiring.container_runtime(a), DockerRuntime)


def test_a_fleet_all_under_systemd() -> None:
    a = fleet({"server": SYSTEMD_SERVER, "units": {"app": ["myapp.service"]}})
    assert a.server.unit == "ollama.service"
    assert a.units.app == ("myapp.service",)
    assert a.containers.use_labels is False  # labels find containers: off under systemd
    assert placement_of(a, ROLE_SERVER) == Placement("systemd", ("ollama.service",))
    assert placement_of(a, ROLE_APP) == Placement("systemd", ("myapp.service",))
    runtime = wiring.container_runtime(a)
    assert isinstance(runtime, SystemdRuntime)
    assert runtime.start_timeout == a.containers.ready_timeout_seconds
    # The unit is restarted: not "a switch restarts nothing", though no container is named.
    warnings = config_warnings(parse_config({"fleets": {"a": {"server": SYSTEMD_SERVER}}}))
    assert [w for w in warnings if "containers" in w] == []


def test_a_unit_without_an_app_never_asks_docker() -> None:
    a = fleet({"server": SYSTEMD_SERVER})
    assert placement_of(a, ROLE_APP) == Placement("systemd")
    assert placement_of(a, ROLE_APP).finds_nothing
    assert isinstance(wiring.container_runtime(a), SystemdRuntime)


def test_the_server_as_a_unit_and_the_app_in_docker() -> None:
    by_name = fleet({"server": SYSTEMD_SERVER, "containers": {"app": ["web"]}})
    assert placement_of(by_name, ROLE_APP) == Placement("docker", ("web",), False)
    runtime = wiring.container_runtime(by_name)
    assert isinstance(runtime, RuntimeByRole)
    assert isinstance(runtime.runtimes[ROLE_SERVER], SystemdRuntime)
    assert isinstance(runtime.runtimes[ROLE_APP], DockerRuntime)
    assert isinstance(runtime, Runtime)
    by_label = fleet({"server": SYSTEMD_SERVER, "containers": {"use_labels": True}})
    assert placement_of(by_label, ROLE_APP) == Placement("docker", (), True)
    # And the other way round: the model server in Docker, the application a unit.
    app_unit = fleet({"units": {"app": ["myapp.service"]}})
    assert placement_of(app_unit, ROLE_SERVER) == Placement("docker", (), True)
    assert placement_of(app_unit, ROLE_APP) == Placement("systemd", ("myapp.service",))
    assert set(wiring.RUNTIME_BUILDERS) == set(RUNTIMES)


def test_labels_that_find_nothing_are_named() -> None:
    config = parse_config(
        {
            "fleets": {
                "a": {
                    "server": SYSTEMD_SERVER,
                    "units": {"app": ["myapp.service"]},
                    "containers": {"use_labels": True},
                }
            }
        }
    )
    assert (
        "fleet a: containers.use_labels has no effect: labels find Docker containers, and the "
        "model server (server.unit) and the application (units.app) are systemd units"
    ) in config_warnings(config)


WRONG = [
    (
        {"server": {"runtime": "systemd"}},
        "fleets.a.server.unit: is required with server.runtime systemd: the model server's "
        "unit (e.g. ollama.service)",
    ),
    (
        {"server": {"unit": "ollama.service"}},
        "fleets.a.server.unit: names a systemd unit, but server.runtime is docker (the "
        "default): set server.runtime: systemd, or remove server.unit",
    ),
    (
        {"server": {"runtime": "docker", "unit": "ollama.service"}},
        "fleets.a.server.unit: names a systemd unit, but server.runtime is docker: set "
        "server.runtime: systemd, or remove server.unit",
    ),
    (
        {"server": {"runtime": "podman"}},
        "fleets.a.server.runtime: must be one of docker, systemd, got 'podman'",
    ),
    (
        {"server": SYSTEMD_SERVER, "containers": {"server": ["ollama"]}},
        "fleets.a.containers.server: names the model server's containers, but server.runtime "
        "is systemd: the model server is the unit ollama.service (server.unit); remove "
        "containers.server",
    ),
    (
        {"server": SYSTEMD_SERVER, "containers": {"ollama": ["ollama"]}},
        "fleets.a.containers.ollama: names the model server's containers, but server.runtime "
        "is systemd: the model server is the unit ollama.service (server.unit); remove "
        "containers.ollama",
    ),
    (
        {
            "server": SYSTEMD_SERVER,
            "containers": {"app": ["web"]},
            "units": {"app": ["myapp.service"]},
        },
        "fleets.a.units.app: the application runs either in containers (containers.app) or as "
        "systemd units (units.app), not both: keep units.app if it runs under systemd, "
        "containers.app if it runs in Docker",
    ),
    (
        {"server": SYSTEMD_SERVER, "units": {"app": ["ollama.service"]}},
        "fleets.a.units.app[0]: ollama.service is the model server's unit (server.unit): list "
        "only the application's",
    ),
    (
        {"units": {"app": ["web.service", "web.service"]}},
        "fleets.a.units.app[1]: web.service is listed twice",
    ),
    (
        {"server": {"runtime": "systemd", "unit": "ollama.socket"}},
        "fleets.a.server.unit: 'ollama.socket' is not a systemd service's name: it is a "
        ".socket unit: the remediator restarts services (.service)",
    ),
    (
        {"server": {"runtime": "systemd", "unit": "/etc/systemd/system/ollama.service"}},
        "fleets.a.server.unit: '/etc/systemd/system/ollama.service' is not a systemd "
        "service's name: a unit name has no '/': name the unit (ollama.service), not its file",
    ),
    (
        {"units": {"app": "my app.service"}},
        "fleets.a.units.app[0]: 'my app.service' is not a systemd service's name: systemd unit "
        "names use letters, digits and :-_.\\ (and one '@' before an instance)",
    ),
    (
        {"server": {"runtime": "systemd", "unit": "ollama"}},
        "fleets.a.server.unit: 'ollama' is not a systemd service's name: a unit is named with "
        "its type: ollama.service",
    ),
    ({"units": {"web": []}}, "fleets.a.units: unknown key(s) web (allowed: app)"),
]


@pytest.mark.parametrize(("settings", "message"), WRONG)
def test_a_wrong_combination_is_refused_naming_the_key(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        fleet(settings)
    assert str(caught.value) == f"cfg.yaml: {message}"


@pytest.mark.parametrize(
    "name", ["ollama.service", "ollama.v2.service", "getty@tty1.service", "app\\x2dweb.service"]
)
def test_a_service_name(name: str) -> None:
    assert service_problem(name) is None
    assert unit_problem(name) is None  # the exporter reads server.unit too, and agrees


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("ollama", "a unit is named with its type: ollama.service"),
        ("getty@.service", "it is a template"),
        ("a@b@c.service", "systemd unit names use"),
        ("x" * 250 + ".service", "systemd unit names have at most 255 characters"),
        ("sshd.timer", "it is a .timer unit"),
        ("@x.service", "systemd unit names use"),
    ],
)
def test_what_is_no_service_name(name: str, why: str) -> None:
    assert (service_problem(name) or "").startswith(why)


def test_check_config_explains_a_wrong_combination_and_prints_units(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"fleets": {"a": {"server": {"unit": "ollama.service"}}}}))
    assert cli.main(["check-config", "--config", str(bad)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err == (
        f"model-fleet: invalid configuration: {bad}: fleets.a.server.unit: names a systemd "
        "unit, but server.runtime is docker (the default): set server.runtime: systemd, or "
        "remove server.unit\n"
    )
    good = tmp_path / "good.yaml"
    settings = {"server": SYSTEMD_SERVER, "units": {"app": ["web.service"]}}
    good.write_text(yaml.safe_dump({"fleets": {"a": settings}}))
    assert cli.main(["check-config", "--config", str(good)]) == ExitCode.OK
    printed = json.loads(capsys.readouterr().out)["fleets"]["a"]
    assert printed["server"] == {
        "kind": "ollama",
        "url": "http://127.0.0.1:11434",
        "runtime": "systemd",
        "unit": "ollama.service",
    }
    assert printed["units"] == {"app": ["web.service"]}
    assert printed["containers"]["use_labels"] is False


def test_the_effective_config_round_trips_with_units() -> None:
    units = {"app": ["w.service"]}
    config = parse_config({"fleets": {"a": {"server": SYSTEMD_SERVER, "units": units}}})
    printed = {k: v for k, v in effective_config(config).items() if k != "source"}
    again = parse_config(json.loads(json.dumps(printed)))
    assert effective_config(again)["fleets"] == effective_config(config)["fleets"]


def test_a_switch_restarts_the_units_by_name(tmp_path: Path) -> None:
    """The core finds units by their names (no labels) and restarts the server's first."""
    env_file = tmp_path / "model.env"
    env_file.write_text("OLLAMA_MODEL=llama3.2:3b\n")
    settings = {
        "cooldown_seconds": 0,
        "server": {**SYSTEMD_SERVER, "url": "http://model-server.invalid:11434"},
        "units": {"app": ["myapp.service"]},
        "containers": {"ready_timeout_seconds": 1, "settle_seconds": 0},
        "app_config": [{"path": str(env_file), "format": "env"}],
    }
    config = parse_config({"state_file": str(tmp_path / "state.json"), "fleets": {"a": settings}})
    server = MemoryServer({"llama3.2:3b": 2048 * MIB}, registry={"phi3:mini": 2200 * MIB})
    runtime = MemoryRuntime()
    # Added unlabelled: found only because the config names them.
    runtime.add("a", ROLE_SERVER, "ollama.service", lambda: None, labelled=False)
    runtime.add("a", ROLE_APP, "myapp.service", lambda: None, labelled=False)
    runtime.add("a", ROLE_APP, "labelled-app", lambda: None)
    actions = FleetActions(config.fleets["a"], server, runtime, app_probe=None)
    outcome = Remediator(config, StateStore(config), lambda fc: actions).request(
        "a", "down", reason="test"
    )
    assert outcome.ok and outcome.switched, outcome.to_dict()
    assert runtime.restarts == ["ollama.service", "myapp.service"]
    assert env_file.read_text() == "OLLAMA_MODEL=phi3:mini\n"


def test_runtime_by_role_sends_each_call_to_the_role_s_runtime() -> None:
    units, containers = MemoryRuntime(), MemoryRuntime()
    units.add("a", ROLE_SERVER, "ollama.service", lambda: None, labelled=False)
    containers.add("a", ROLE_APP, "web", lambda: None, labelled=False)
    both = RuntimeByRole({ROLE_SERVER: units, ROLE_APP: containers})
    [server] = both.find("a", ROLE_SERVER, ["ollama.service"], use_labels=False)
    [app] = both.find("a", ROLE_APP, ["web"], use_labels=False)
    for ref in (server, app):
        before = both.state(ref)
        both.restart(ref)
        assert both.wait_ready(ref, 0.0).started_at != before.started_at
    assert (units.restarts, containers.restarts) == (["ollama.service"], ["web"])
    both.close()
    assert units.closed and containers.closed
