"""A full disk under the state file, on real parts: busybox containers, the Ollama stand-in.

The state directory is a small tmpfs (mounted for the test, unmounted after it; needs root).
A switch whose intent cannot be written does nothing at all; a disk that fills between the
switch and its commit ends with the switch rolled back and, once there is room again, the
next switch resolves the entry left open and steps exactly one rung.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from remediator.app.remediator import Remediator
from remediator.app.wiring import fleet_actions
from remediator.cli import main as cli
from remediator.config import load_config
from remediator.report.queries import ExitCode
from remediator.store.state import StateStore
from simulator.crash import LADDER, CrashRig
from tests.support import docker_env

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` up; returns the file to remove for room."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for chunk in (65536, 512, 1):  # down to the last byte
            try:
                while True:
                    out.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.fixture
def rig(
    tmp_path: Path, docker_client: docker.DockerClient, busybox_image: str
) -> Iterator[CrashRig]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the state directory needs root")
    r = CrashRig(tmp_path, docker_client, labels={docker_env.TEST_LABEL: docker_env.RUN_ID})
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(r.state_dir)]
    subprocess.run(mount, check=True)
    try:
        # The lock files exist before the disk fills (as they do after a first run).
        store = StateStore(load_config(str(r.config)))
        with store.transaction():
            pass
        with store.switch_lock(r.fleet):
            pass
        yield r
    finally:
        r.close()
        subprocess.run(["umount", "-l", str(r.state_dir)], check=False)


def test_a_switch_whose_intent_cannot_be_written_changes_nothing(
    rig: CrashRig, capsys: pytest.CaptureFixture[str]
) -> None:
    for c in (rig.server, rig.app):
        c.reload()
    started = (rig.server.attrs["State"]["StartedAt"], rig.app.attrs["State"]["StartedAt"])
    fill(rig.state_dir)
    code = cli.main(["--config", str(rig.config), "downgrade", "--reason", "full disk"])
    assert code == ExitCode.STATE
    assert "No space left on device" in capsys.readouterr().err
    assert rig.config_model() == LADDER[0]
    assert rig.ollama.calls_to("/api/pull") == [] and rig.ollama.calls_to("/api/generate") == []
    for c in (rig.server, rig.app):
        c.reload()
    assert (rig.server.attrs["State"]["StartedAt"], rig.app.attrs["State"]["StartedAt"]) == started
    assert rig.app_model() == LADDER[0]
    assert rig.state_model() == LADDER[0]


def test_a_disk_that_fills_before_the_commit_ends_with_everything_agreeing(
    rig: CrashRig, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(str(rig.config))
    fillers: list[Path] = []

    def on_step(step: str) -> None:
        if step == "settled":  # the switch is done; its commit comes next
            fillers.append(fill(rig.state_dir))

    remediator = Remediator(config, StateStore(config), fleet_actions, on_step=on_step)
    outcome = remediator.request(rig.fleet, "down", reason="fills up")
    assert outcome.failure is not None and outcome.failure.step == "state", outcome.to_dict()
    assert "No space left on device" in str(outcome.failure)
    # Rolled back: config, app and state all on the old model; the entry is still open
    # because even the rollback's record could not be written.
    assert rig.config_model() == LADDER[0] and rig.app_model() == LADDER[0]
    assert rig.state_model() == LADDER[0]
    assert rig.state_entry()["journal"] is not None

    fillers[0].unlink()  # room again: the next switch resolves the entry, then switches
    code = cli.main(["--config", str(rig.config), "downgrade", "--reason", "room again"])
    assert code == ExitCode.OK, capsys.readouterr().err
    assert rig.disagreements() == []
    assert rig.state_model() == LADDER[1]
    history = rig.state_entry()["history"]
    assert [(h.get("recovery"), h["to"]) for h in history] == [
        ("rolled_back", LADDER[1]),
        (None, LADDER[1]),
    ]
    assert "rolled back" in rig.notices()[-1]
