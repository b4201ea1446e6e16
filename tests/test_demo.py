"""The README's main-job command (scripts/demo runs ``python -m simulator.demo``) works, stops
everything it started however it ends, and runs beside another demo on one engine."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator

import docker
import pytest

from tests.support.demo_run import DemoRun, live_groups, start_demo

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

# The demo's start takes about 20 s (2 loaded cores); two at once share the cores.
START_SECONDS = 120.0
# From the signal until the demo has exited and every one of its process groups is gone: its
# parts stop in a few seconds (Loop.close; stop_group allows 15 s before it kills a group).
STOP_SECONDS = 45.0


def test_the_demo_steps_down_until_the_model_fits_and_prints_a_timeline(
    demo: Callable[..., DemoRun], docker_client: docker.DockerClient
) -> None:
    run = demo("--exit", "--max-seconds", "180")
    code = run.wait_exit(300)
    out = run.output()
    assert code == 0, out
    # --exit's end stops what it started, as every other end does.
    assert run.containers(docker_client) == [], out
    assert live_groups(run.groups) == {}, out
    # VRAM fills: llama3.2:3b no longer fits, phi3:mini (larger) fails too, tinyllama fits.
    order = [
        "model server logged VRAM error #3",
        "alert ModelFleetVRAMErrors fired",
        "switched llama3.2:3b -> phi3:mini (remediator,",
        "switched phi3:mini -> tinyllama:1.1b (remediator,",
        "settled: tinyllama:1.1b fits and runs without errors; app: 'app running tinyllama:1.1b'",
    ]
    positions = [out.find(line) for line in order]
    assert -1 not in positions, out
    assert positions == sorted(positions), out
    assert out.count("switched ") == 2, out
    # Each failed load prints two matching lines and counts as one error: by the third error,
    # at least the two lines of the first two and the first line of the third were counted.
    third = re.search(r"VRAM error #3 since it started \(exporter, one per failed load; (\d+)", out)
    assert third is not None and int(third.group(1)) >= 5, out
    for line in out.splitlines():
        if "switched" in line:
            assert line.lstrip().startswith("t+"), line


@pytest.fixture
def demo(docker_client: docker.DockerClient) -> Iterator[Callable[..., DemoRun]]:
    """Starts demos; after the test, kills what is left of them (nothing, when they pass)."""
    runs: list[DemoRun] = []

    def start(*args: str) -> DemoRun:
        run = start_demo(*args)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill(docker_client)


def _assert_stopped(run: DemoRun, signum: int, client: docker.DockerClient, sent: float) -> None:
    """It exited with 128 + signum, one line, no traceback; its containers and groups are gone."""
    code = run.wait_exit(STOP_SECONDS)
    while live_groups(run.groups) and time.monotonic() - sent < STOP_SECONDS:
        time.sleep(0.1)
    out = run.output()
    assert live_groups(run.groups) == {}, out
    assert code == 128 + signum, out
    assert f"{signal.Signals(signum).name}, stopping everything it started ..." in out, out
    assert "Traceback" not in out, out
    assert run.containers(client) == [], out


def _wait_up(run: DemoRun, client: docker.DockerClient) -> None:
    """Until the timeline began: containers, remediator, exporter, Prometheus, Alertmanager up."""
    run.wait_for_line("  t+", START_SECONDS)
    assert sorted(c.status for c in run.containers(client)) == ["running", "running"]
    # Its own group (Prometheus and Alertmanager in it), the remediator's and the exporter's.
    assert len(live_groups(run.groups)) == 3, run.children()


@pytest.mark.slow
@pytest.mark.parametrize(
    "signums",
    [(signal.SIGTERM,), (signal.SIGHUP,), (signal.SIGINT, signal.SIGINT)],
    ids=["SIGTERM", "SIGHUP", "ctrl-c-twice"],
)
def test_a_signal_during_the_timeline_stops_everything_the_demo_started(
    signums: tuple[int, ...], demo: Callable[..., DemoRun], docker_client: docker.DockerClient
) -> None:
    run = demo("--exit")
    _wait_up(run, docker_client)
    sent = time.monotonic()
    # SIGTERM: kill's, to the PID; SIGHUP: a closed terminal's, and SIGINT, to the group.
    run.send(signums[0])
    for again in signums[1:]:
        time.sleep(0.5)  # the clean-up is under way: a second Ctrl-C must not cut it short
        run.send(again)
    _assert_stopped(run, signums[0], docker_client, sent)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "signum"),
    [("containers", signal.SIGINT), ("prometheus", signal.SIGTERM)],
    ids=["ctrl-c-once-containers-run", "sigterm-while-prometheus-starts"],
)
def test_a_signal_during_start_up_stops_what_was_started(
    moment: str, signum: int, demo: Callable[..., DemoRun], docker_client: docker.DockerClient
) -> None:
    run = demo("--exit")
    if moment == "containers":
        run.wait_for("its containers", lambda: bool(run.containers(docker_client)), START_SECONDS)
    else:
        run.wait_for("Prometheus", lambda: "prometheus" in run.children().values(), START_SECONDS)
    assert "Prometheus    http" not in run.output(), "no longer starting"
    sent = time.monotonic()
    run.send(signum)
    _assert_stopped(run, signum, docker_client, sent)


@pytest.mark.slow
def test_two_demos_at_once_run_side_by_side(
    demo: Callable[..., DemoRun], docker_client: docker.DockerClient
) -> None:
    runs = [demo("--exit"), demo("--exit")]
    for run in runs:
        _wait_up(run, docker_client)
    outs = [run.output() for run in runs]
    for key in ("fleet", "Prometheus", "Alertmanager", "remediator", "exporter", "work dir"):
        shown = [re.search(rf"^  {key} +(\S+)", out, re.MULTILINE) for out in outs]
        assert None not in shown, outs
        first, second = (m.group(1) for m in shown if m)
        assert first != second, (key, outs)
    names = [{c.name for c in run.containers(docker_client)} for run in runs]
    assert not names[0] & names[1], names
    sent = time.monotonic()
    for run, signum in zip(runs, (signal.SIGTERM, signal.SIGINT), strict=True):
        run.send(signum)
    for run, signum in zip(runs, (signal.SIGTERM, signal.SIGINT), strict=True):
        _assert_stopped(run, signum, docker_client, sent)
