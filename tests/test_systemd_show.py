"""``systemctl show`` read without systemd: what systemd 252 prints, as a container's state.

The files under tests/data/systemd are systemd 252's own output (Debian 12) of the command
SystemdRuntime runs, one per state a unit can be in. The runtime against a real systemd is
tests/test_systemd_runtime.py; here only what needs none: parsing, the mapping, and the errors
of a host where systemctl cannot reach systemd.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from remediator.adapters.systemd_units import (
    SystemdError,
    SystemdRuntime,
    parse_show,
    parse_timestamp,
    unit_state,
)
from remediator.ports.runtime import ROLE_SERVER, ContainerRef, ContainerState, Runtime, describe

DATA = Path(__file__).parent / "data" / "systemd"
UNIT = ContainerRef("ollama.service", "ollama.service", "a", ROLE_SERVER)


def show(name: str) -> str:
    return (DATA / f"show_{name}.txt").read_text()


def test_a_running_unit() -> None:
    unit = parse_show(show("running"))
    assert (unit.load_state, unit.active_state, unit.sub_state) == ("loaded", "active", "running")
    assert unit.started_at == datetime(2026, 12, 5, 9, 22, 49, 927773, tzinfo=UTC)
    assert unit.invocation_id == "b0b366e726de4e119860e9f7b7fee421"
    assert (unit.main_pid, unit.restarts, unit.load_error) == (99, 0, None)
    state = unit_state(unit)
    assert state == ContainerState(
        status="running",
        health=None,  # a unit has no health check: the probe decides
        started_at=unit.started_at,
        exit_code=None,
        restart_count=0,
        run_id="b0b366e726de4e119860e9f7b7fee421",
        result="success",
    )
    assert state.ready and describe(state) == "status=running"


@pytest.mark.parametrize(
    ("name", "described"),
    [
        ("failed_exit", "status=failed exit_code=3 result=exit-code"),
        ("failed_signal", "status=failed exit_code=137 result=signal"),  # SIGKILL, as Docker's
        ("auto_restart", "status=restarting result=exit-code"),
        ("oneshot_exited", "status=exited exit_code=0"),
        ("never_started", "status=exited"),
        ("not_found", "status=exited"),
    ],
)
def test_each_state_in_a_container_s_words(name: str, described: str) -> None:
    state = unit_state(parse_show(show(name)))
    assert describe(state) == described
    assert not state.ready


def test_a_unit_that_never_ran_has_no_start_and_no_run() -> None:
    unit = parse_show(show("never_started"))
    assert (unit.started_at, unit.invocation_id, unit.exit_code, unit.main_pid) == (
        None,
        None,
        None,
        None,
    )


def test_a_unit_systemd_does_not_know() -> None:
    unit = parse_show(show("not_found"))
    assert unit.load_state == "not-found"
    assert unit.load_error == "Unit nosuch.service not found."


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("Sat 2026-12-05 09:22:49.927773 UTC", datetime(2026, 12, 5, 9, 22, 49, 927773, UTC)),
        ("Mon 2026-01-05 00:00:01 UTC", datetime(2026, 1, 5, 0, 0, 1, tzinfo=UTC)),
        ("", None),
        ("n/a", None),
    ],
)
def test_timestamps_as_timestamp_us_utc_prints_them(text: str, when: datetime | None) -> None:
    assert parse_timestamp(text) == when


def test_a_time_in_another_zone_is_never_read_as_utc() -> None:
    with pytest.raises(ValueError, match="not a systemd UTC timestamp"):
        parse_timestamp("Sat 2026-12-05 10:22:49 CET")


def test_the_order_of_the_lines_does_not_matter() -> None:
    lines = show("running").splitlines()
    assert parse_show("\n".join(reversed(lines))) == parse_show(show("running"))


def test_systemd_runtime_is_a_runtime() -> None:
    assert isinstance(SystemdRuntime(), Runtime)


@pytest.mark.skipif(
    Path("/run/systemd/system").exists(), reason="systemd runs this host: see the bed's test"
)
def test_a_host_without_systemd_says_so() -> None:
    with pytest.raises(SystemdError) as caught:
        SystemdRuntime().state(UNIT)
    message = str(caught.value)
    assert message.startswith("systemd inspect of unit 'ollama.service' failed: systemctl show ")
    assert "System has not been booted with systemd" in message


def test_a_host_without_systemctl_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no systemctl anywhere
    assert os.environ["PATH"] == str(tmp_path)
    with pytest.raises(SystemdError) as caught:
        SystemdRuntime().restart(UNIT)
    assert str(caught.value) == (
        "systemd restart of unit 'ollama.service' failed: systemctl not found: units are "
        "restarted on their host, not in a container"
    )
