"""The systemd test bed and the shipped units in deploy/systemd, under a real systemd.

One container (simulator.systemd_host) runs systemd as PID 1 for the whole module: journald,
D-Bus, polkit, sysusers and sudo are Debian 12's own. The shipped files go in as they are. The
one change, for the units that run the services: a drop-in that shows them the host's Python
where it lives under a home directory (pyenv), which their ProtectHome=yes hides, as it should
on a real host. Each unit's sandbox also runs a shell command in place of its service.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.loop_setup import OWNER_LABEL, process_owner
from simulator.systemd_host import (
    HOST_LABEL,
    LEFTOVER_AGE_SECONDS,
    REPO_ROOT,
    SystemdHost,
    home_python_dropin,
    is_leftover,
    remove_leftovers,
)
from tests.support import docker_env
from tests.support.shipped_units import UNITS, USER, VENV, shipped, wait_for

pytestmark = [pytest.mark.systemd, pytest.mark.docker]

APP_UNIT = "llm-app.service"  # the application unit the shipped polkit rule names
TOKEN = "systemd-bed-token"
# A fleet whose Ollama does not answer: the services start and report it, as on a host
# whose model server is still loading.
CONFIG = """\
host: systemd-bed
fleets:
  default:
    server: {kind: ollama, url: "http://127.0.0.1:11434"}
exporter:
  docker: false
"""
SLEEPER = """\
[Unit]
Description=stand-in {name}
[Service]
ExecStart=/bin/sh -c 'echo "stand-in {name} up"; exec sleep infinity'
"""
# Lines on stdout, the way a model server's reach the journal.
ECHO_UNIT = """\
[Service]
ExecStart=/bin/sh -c 'echo "mf-echo up as $$"; exec sleep infinity'
"""


def invocation(host: SystemdHost, unit: str) -> str:
    """The unit's current InvocationID (empty when it never ran)."""
    return host.systemctl("show", "--property=InvocationID", "--value", unit).strip()


def as_user(host: SystemdHost, *argv: str) -> Any:
    """Run ``argv`` as the shipped user, from a root shell as an operator would."""
    return host.exec("runuser", "-u", USER, "--", *argv, check=False)


@pytest.fixture(scope="module")
def host(docker_client: Any) -> Iterator[SystemdHost]:
    """One booted bed for the module, labelled for this test run's clean-up too."""
    labels = {docker_env.TEST_LABEL: docker_env.RUN_ID}
    with SystemdHost(docker_client, name_prefix="mf-test-systemd", labels=labels) as bed:
        yield bed


@pytest.fixture(scope="module")
def fleet_user(host: SystemdHost) -> str:
    """The shipped user (systemd-sysusers) and the units' venv path, as installed."""
    host.write_file("/etc/sysusers.d/model-fleet.conf", shipped("model-fleet.sysusers"))
    host.exec("systemd-sysusers")
    host.exec("mkdir", "-p", str(Path(VENV).parent))
    host.exec("ln", "-sfn", sys.prefix, VENV)
    return USER


@pytest.fixture(scope="module")
def stand_ins(host: SystemdHost) -> tuple[str, ...]:
    """A stand-in Ollama, the application and an unrelated unit, all running."""
    units = ("ollama.service", APP_UNIT, "mf-unrelated.service")
    for unit in units:
        host.install_unit(unit, SLEEPER.format(name=unit))
    host.systemctl("start", *units)
    return units


@pytest.fixture(scope="module")
def polkit_rule(host: SystemdHost, fleet_user: str, stand_ins: tuple[str, ...]) -> None:
    """The shipped polkit rule, installed where the docs say."""
    host.write_file("/etc/polkit-1/rules.d/50-model-fleet.rules", shipped("model-fleet.rules"))


@pytest.fixture(scope="module")
def etc_model_fleet(host: SystemdHost, fleet_user: str) -> None:
    """/etc/model-fleet as the units expect it: the configuration and a root-only token."""
    host.write_file("/etc/model-fleet/model-fleet.yaml", CONFIG, mode=0o640)
    host.exec("chown", f"root:{fleet_user}", "/etc/model-fleet/model-fleet.yaml")
    host.write_file("/etc/model-fleet/token", TOKEN + "\n", mode=0o600)


def test_unit_lines_reach_the_journal_with_their_invocation(host: SystemdHost) -> None:
    host.install_unit("mf-echo.service", ECHO_UNIT)
    host.systemctl("start", "mf-echo.service")
    first = invocation(host, "mf-echo.service")
    host.systemctl("restart", "mf-echo.service")
    second = invocation(host, "mf-echo.service")
    assert first and second and first != second

    def lines() -> list[dict[str, Any]] | None:
        found = host.journal("_SYSTEMD_UNIT=mf-echo.service")
        runs = {e.get("_SYSTEMD_INVOCATION_ID") for e in found}
        return found if {first, second} <= runs else None

    entries = wait_for(lines, "echo lines of both runs in the journal")
    assert all(e["MESSAGE"].startswith("mf-echo up as ") for e in entries)
    assert [e["_SYSTEMD_INVOCATION_ID"] for e in entries] == [first, second]


def test_the_hosts_python_runs_inside_as_root_and_as_a_user(host: SystemdHost) -> None:
    code = "import remediator, exporter, flask, prometheus_client; print(remediator.__file__)"
    python = f"{sys.prefix}/bin/python"
    as_root = host.exec(python, "-c", code).stdout.strip()
    as_nobody = host.exec(python, "-c", code, user="nobody").stdout.strip()
    # A unit gets the code under test from the manager's environment, not from docker exec.
    in_unit = host.exec("systemd-run", "--wait", "--pipe", "-p", "User=nobody", python, "-c", code)
    expected = str(REPO_ROOT / "remediator" / "__init__.py")
    assert as_root == as_nobody == in_unit.stdout.strip() == expected


def test_the_shipped_units_pass_systemd_analyze_verify(host: SystemdHost, fleet_user: str) -> None:
    for unit in UNITS:
        host.write_file(f"/root/verify/{unit}", shipped(unit))
    done = host.exec("systemd-analyze", "verify", *(f"/root/verify/{u}" for u in UNITS))
    assert (done.stdout + done.stderr).strip() == ""
    # The same check finds a unit's mistakes: its silence above means something.
    host.write_file("/root/verify/broken.service", "[Service]\nExecStart=/opt/none\nBogus=1\n")
    broken = host.exec("systemd-analyze", "verify", "/root/verify/broken.service", check=False)
    assert "Bogus" in broken.stderr and "/opt/none" in broken.stderr


def test_polkit_lets_the_user_restart_only_its_units(
    host: SystemdHost, polkit_rule: None, stand_ins: tuple[str, ...]
) -> None:
    *allowed, unrelated = stand_ins
    for unit in allowed:
        before = invocation(host, unit)
        done = as_user(host, "systemctl", "--no-ask-password", "restart", unit)
        assert done.returncode == 0, done.stderr
        assert invocation(host, unit) != before
    before = invocation(host, unrelated)
    for verb in ("restart", "stop"):
        refused = as_user(host, "systemctl", "--no-ask-password", verb, unrelated)
        assert refused.returncode != 0
        assert "Access denied" in refused.stderr, refused.stderr
    assert invocation(host, unrelated) == before


def in_sandbox(host: SystemdHost, unit: str, command: str) -> list[str]:
    """Run ``command`` in a shipped unit's sandbox (every setting kept); its journal lines."""
    text = shipped(unit)
    exec_start = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    probe = text.replace(exec_start, f"ExecStart=/bin/sh -c '{command}'")
    probe = probe.replace("Type=exec", "Type=oneshot")
    # Its own runtime directory: a oneshot's is removed when it ends, the remediator's must stay.
    probe = probe.replace("RuntimeDirectory=model-fleet", "RuntimeDirectory=mf-sandbox-probe")
    name = f"mf-probe-{unit}"
    host.install_unit(name, probe)
    host.systemctl("start", name)
    entries = wait_for(lambda: host.journal(f"_SYSTEMD_UNIT={name}"), f"lines of {name}")
    return [e["MESSAGE"] for e in entries]


def test_the_remediators_sandbox_restarts_ollama_through_polkit(
    host: SystemdHost, polkit_rule: None, etc_model_fleet: None
) -> None:
    before = invocation(host, "ollama.service")
    command = "grep NoNewPrivs /proc/self/status; systemctl restart ollama.service"
    lines = in_sandbox(host, "model-fleet-remediator.service", command)
    assert lines == ["NoNewPrivs:\t1"]
    assert invocation(host, "ollama.service") != before


def test_the_exporters_sandbox_reads_ollamas_journal(
    host: SystemdHost, fleet_user: str, stand_ins: tuple[str, ...]
) -> None:
    command = "journalctl --no-pager -o cat -u ollama.service"
    lines = in_sandbox(host, "model-fleet-exporter.service", command)
    assert "stand-in ollama.service up" in lines, lines
    # The unit's SupplementaryGroups= is what lets it: the user alone reads no system journal.
    alone = as_user(host, *command.split())
    assert "stand-in ollama.service up" not in alone.stdout


def test_sudo_alternative_works_only_with_new_privileges(
    host: SystemdHost, fleet_user: str, stand_ins: tuple[str, ...]
) -> None:
    host.write_file("/etc/sudoers.d/model-fleet", shipped("model-fleet.sudoers"), mode=0o440)
    try:
        host.exec("visudo", "-c", "-f", "/etc/sudoers.d/model-fleet")
        before = invocation(host, "ollama.service")
        sudo = ("sudo", "-n", "/usr/bin/systemctl", "restart", "ollama.service")
        assert as_user(host, *sudo).returncode == 0
        assert invocation(host, "ollama.service") != before
        # What a unit with NoNewPrivileges=yes would get.
        refused = as_user(host, "setpriv", "--no-new-privs", *sudo)
        assert refused.returncode != 0
        assert '"no new privileges" flag is set' in refused.stderr, refused.stderr
    finally:
        host.exec("rm", "-f", "/etc/sudoers.d/model-fleet")


def test_the_shipped_units_start_as_the_user_and_answer(
    host: SystemdHost, fleet_user: str, etc_model_fleet: None
) -> None:
    for unit in UNITS:
        host.write_file(f"/etc/systemd/system/{unit}", shipped(unit))
        host.install_unit(f"{unit}.d/python.conf", home_python_dropin())
    host.systemctl("start", *UNITS)
    python = f"{VENV}/bin/python"
    fetch = "import sys, urllib.request as u; r = u.urlopen(sys.argv[1], timeout=5); "
    fetch += "print(r.status); print(r.read().decode())"

    def answer(url: str) -> str | None:
        done = host.exec(python, "-c", fetch, url, check=False)
        return done.stdout if done.returncode == 0 else None

    health = wait_for(lambda: answer("http://127.0.0.1:8080/healthz"), "remediator /healthz")
    metrics = wait_for(lambda: answer("http://127.0.0.1:9842/metrics"), "exporter /metrics")
    assert health.startswith("200\n")
    assert metrics.startswith("200\n")
    # No GPU in the bed: NVML is reported down, and the exporter keeps serving.
    assert 'model_fleet_nvml_up{host="systemd-bed"} 0.0' in metrics
    for unit in UNITS:
        assert host.systemctl("is-active", unit).strip() == "active"
        pid = host.systemctl("show", "--property=MainPID", "--value", unit).strip()
        assert host.exec("stat", "-c", "%U", f"/proc/{pid}").stdout.strip() == fleet_user
        # The sandbox is in force in the bed, not skipped: no new privileges, a seccomp filter.
        status = host.exec("cat", f"/proc/{pid}/status").stdout
        assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
    state = host.exec("ls", "-ld", "/var/lib/model-fleet").stdout
    assert f" {fleet_user} {fleet_user} " in state


def test_a_bed_left_by_an_ended_run_is_removed(docker_client: Any, busybox_image: str) -> None:
    ended = subprocess.Popen(["sleep", "60"])
    gone, alive = process_owner(ended.pid), process_owner()
    ended.kill()
    ended.wait()
    bed = {HOST_LABEL: "1", docker_env.TEST_LABEL: docker_env.RUN_ID}
    left = docker_env.run_busybox(docker_client, "sleep 60", labels={**bed, OWNER_LABEL: gone})
    mine = docker_env.run_busybox(docker_client, "sleep 60", labels={**bed, OWNER_LABEL: alive})
    try:
        removed = remove_leftovers(docker_client)
        assert left.name in removed
        assert mine.name not in removed
    finally:
        mine.remove(force=True)


def test_a_bed_whose_owner_cannot_be_judged_goes_only_when_old() -> None:
    now = time.time()
    old = now - LEFTOVER_AGE_SECONDS - 1
    elsewhere = {OWNER_LABEL: "another-host:1:1"}
    assert not is_leftover(elsewhere, now - 60, now)
    assert is_leftover(elsewhere, old, now)
    assert is_leftover({}, old, now)
    # An owner alive on this host keeps its bed however long it runs.
    assert not is_leftover({OWNER_LABEL: process_owner()}, old, now)
