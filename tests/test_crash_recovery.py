"""SIGKILL of the whole service mid-switch, on real parts: every step boundary, and at random.

The remediator runs under gunicorn (2 workers) in its own session; busybox containers on the
real Docker engine are the fleet, the Ollama stand-in its model server (simulator/crash.py).
A kill at each step boundary comes from the test-only hook ``MODEL_FLEET_TEST_CRASH_AFTER``
(the journal's step recorder SIGKILLs the process group); random kills come from the test.
After each kill the service is started again, and then the state, the app config, the running
containers and the stand-in must agree, ``status`` must carry the notice, the metric must
count the resolution, and the next alert must step exactly one rung.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import docker
import pytest

from remediator.switch.journal import PLANNED
from simulator.crash import LADDER, CrashRig
from tests.support import docker_env

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SWITCH_POINTS = ("intent", *PLANNED, "committed")
FORWARD = {"verified_app", "settled"}  # the journal shows the containers verified


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    busybox_image: str,
) -> Iterator[CrashRig]:
    r = CrashRig(
        tmp_path_factory.mktemp("crash"),
        docker_client,
        labels={docker_env.TEST_LABEL: docker_env.RUN_ID},
    )
    try:
        yield r
    finally:
        r.close()


def _index(rig: CrashRig) -> int:
    return LADDER.index(rig.state_model()) if rig.state_file.exists() else 0


def _fresh_enough(rig: CrashRig) -> None:
    """Room for two steps down (the crashed one and the next)."""
    if _index(rig) >= len(LADDER) - 2:
        rig.reset()


def _next_alert_steps_one_rung(rig: CrashRig) -> None:
    before = _index(rig)
    switched = len([h for h in rig.history() if h.get("recovery") != "rolled_back"])
    assert rig.alert() == 202
    status = rig.wait_switched(switched + 1)
    assert status["current_model"]["index"] == before + 1
    time.sleep(0.3)  # a second switch would have started by now
    assert rig.status()["current_model"]["index"] == before + 1
    assert rig.disagreements() == []


@pytest.mark.parametrize("point", SWITCH_POINTS)
def test_a_kill_at_each_step_boundary_is_resolved_at_the_next_start(
    rig: CrashRig, point: str
) -> None:
    _fresh_enough(rig)
    before = _index(rig)
    notices = len(rig.notices())
    rig.serve(crash_after=point)
    assert rig.alert() == 202
    assert rig.wait_dead(), f"the service did not kill itself at {point}"
    entry = rig.state_entry() if rig.state_file.exists() else {}
    if point == "committed":
        assert entry["journal"] is None and entry["current_model"] == LADDER[before + 1]
    else:
        assert entry["journal"] is not None, point

    rig.serve()
    status = rig.wait_resolved()
    assert rig.disagreements() == []
    expected = before + 1 if point in FORWARD or point == "committed" else before
    assert status["current_model"]["index"] == expected
    if point == "committed":
        assert len(status["notices"]) == notices
        assert sum(rig.recoveries().values()) == 0
    else:
        outcome = "rolled_forward" if point in FORWARD else "rolled_back"
        message = status["notices"][-1]["message"]
        assert f"{LADDER[before]} -> {LADDER[before + 1]} was interrupted" in message
        assert outcome.replace("_", " ") in message
        # Exactly one worker resolved it: the others found nothing open.
        assert rig.recoveries() == {"rolled_forward": 0, "rolled_back": 0, "failed": 0} | {
            outcome: 1.0
        }
        last = rig.history()[-1]
        assert last["recovery"] == outcome
        assert last["reason"].startswith(f"recovery: {outcome.replace('_', ' ')}")
    _next_alert_steps_one_rung(rig)
    rig.kill()  # nothing is open: a kill is as good as a stop, and quicker


@pytest.mark.parametrize(
    "point", ["recovery_started", "recovery_config_written", "recovery_restored"]
)
def test_a_kill_during_the_recovery_is_resolved_by_the_next(rig: CrashRig, point: str) -> None:
    _fresh_enough(rig)
    before = _index(rig)
    rig.serve(crash_after="restarted_app")
    assert rig.alert() == 202
    assert rig.wait_dead()
    rig.serve(crash_after=point, wait=False)  # its start-up recovery kills it
    assert rig.wait_dead(), f"the recovery did not reach {point}"
    assert rig.state_entry()["journal"]["recovery_attempts"] == 1
    rig.serve()
    status = rig.wait_resolved()
    assert rig.disagreements() == []
    assert status["current_model"]["index"] == before
    assert "rolled back" in status["notices"][-1]["message"]
    _next_alert_steps_one_rung(rig)
    rig.kill()  # nothing is open: a kill is as good as a stop, and quicker


def test_kills_at_random_moments_leave_everything_agreeing(rig: CrashRig) -> None:
    chance = random.Random(13)
    outcomes = []
    for trial in range(5):
        _fresh_enough(rig)
        rig.serve()
        assert rig.alert() == 202
        time.sleep(chance.uniform(0.0, 2.5))
        rig.kill()
        rig.serve()
        rig.wait_resolved()
        problems = rig.disagreements()
        assert problems == [], f"trial {trial}: {problems}"
        outcomes.append(rig.state_model())
        rig.kill()
    rig.serve()
    _next_alert_steps_one_rung(rig)
    rig.kill()
    print(f"random kills: {len(outcomes)} trials, all agreeing")
