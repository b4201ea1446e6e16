"""The deploy path: the shipped images and compose files, started as a user starts them.

Builds the shipped images (one for both services, one for the example app) on a locally made
python:3.11-slim when no registry answers, starts docker-compose.gpu.yml +
docker-compose.monitoring.yml with scripts/up and the CI override
(simulator/standins/compose.ci.yml: no GPU reservation, no Grafana, stand-ins for Ollama,
Prometheus and Alertmanager, its own project, fleet and ports),
drives the loop through the real containers and tears it all down with scripts/down.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import tomllib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import docker
import pytest

from simulator.loop import ERROR_SPACING_SECONDS
from simulator.ollama_corpus import failed_load, printed_now
from simulator.stack import ROOT, ComposeStack, build_standin_images

pytestmark = [pytest.mark.compose, pytest.mark.docker, pytest.mark.slow]

SERVICES = {"ollama", "app", "exporter", "prometheus", "alertmanager", "remediator"}


def _tracked_changes() -> str:
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def tracked_before() -> str:
    """Tracked files' changes before the stack starts (the developer's own edits)."""
    return _tracked_changes()


@pytest.fixture(scope="module")
def stack(
    tracked_before: str,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
) -> Iterator[ComposeStack]:
    build_standin_images(docker_client)
    s = ComposeStack(tmp_path_factory.mktemp("compose"), project=f"model-fleet-ci-{os.getpid()}")
    s.prepare()
    try:
        s.up_output = s.run_script("up")
        yield s
    finally:
        if os.environ.get("MODEL_FLEET_KEEP_STACK") != "1":
            s.down()


def _ps(stack: ComposeStack) -> list[dict[str, Any]]:
    out = stack.compose("ps", "--all", "--format", "json").stdout.strip()
    # Compose prints one JSON object per line (older versions: one JSON array).
    if out.startswith("["):
        return list(json.loads(out))
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _firing(stack: ComposeStack, alertname: str) -> list[dict[str, Any]]:
    prom = stack.url("prometheus", 9090)
    query = f'ALERTS{{alertname="{alertname}",alertstate="firing",fleet="{stack.fleet}"}}'
    answer = stack.get_json(f"{prom}/api/v1/query?query={quote(query)}")
    return list(answer["data"]["result"])


def _errors_since_start(stack: ComposeStack) -> int:
    """The fleet's errors since its model server started, as Prometheus has them (0: none)."""
    prom = stack.url("prometheus", 9090)
    query = f'sum(model_fleet_vram_errors_since_start{{fleet="{stack.fleet}"}})'
    answer = stack.get_json(f"{prom}/api/v1/query?query={quote(query)}")
    return sum(int(float(r["value"][1])) for r in answer["data"]["result"])


def test_every_service_is_up_and_healthy(stack: ComposeStack) -> None:
    services = {c["Service"]: c for c in _ps(stack)}
    assert set(services) == SERVICES  # Grafana stays off: its profile is not enabled
    for name, c in services.items():
        assert c["State"] == "running", (name, c)
        assert c["Health"] == "healthy", (name, c)


def test_every_prometheus_target_is_up(stack: ComposeStack) -> None:
    prom = stack.url("prometheus", 9090)

    def all_up() -> list[dict[str, Any]] | None:
        targets = stack.get_json(f"{prom}/api/v1/targets")["data"]["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = stack.wait(all_up, 30, "every Prometheus target up")
    jobs = {t["labels"]["job"] for t in targets}
    assert jobs == {"model-fleet-exporter", "model-fleet-remediator"}
    # The rules are loaded from the mounted alert_rules/ (the shipped path in the image).
    groups = stack.get_json(f"{prom}/api/v1/rules")["data"]["groups"]
    assert {"model-fleet-remediation", "model-fleet-health"} <= {g["name"] for g in groups}


def test_up_pulled_every_ladder_model_and_printed_urls_and_status(stack: ComposeStack) -> None:
    listed = stack.compose("exec", "-T", "ollama", "ollama", "list").stdout
    ladder = ["llama3.2:3b", "phi3:mini", "tinyllama:1.1b", "qwen2.5:0.5b"]
    assert [line.split()[0] for line in listed.splitlines()[1:]] == sorted(ladder)
    for model in ladder:
        assert f"pulling {model}" in stack.up_output
    for service, port in (("prometheus", 9090), ("alertmanager", 9093), ("remediator", 8080)):
        assert stack.url(service, port) in stack.up_output
    assert '"current_model"' in stack.up_output


def test_up_builds_the_checkouts_version_tagged_and_labelled(
    stack: ComposeStack, docker_client: docker.DockerClient
) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    revision = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert f"model-fleet {version} (revision {revision})" in stack.up_output
    image = docker_client.images.get(f"model-fleet/model-fleet:{version}")
    assert "model-fleet/model-fleet:latest" in image.tags
    labels = image.labels
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.revision"] == revision
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    said = stack.compose("exec", "-T", "remediator", "model-fleet", "--version").stdout
    assert said.strip() == f"model-fleet {version} (revision {revision})"


def test_the_fleet_can_be_watched_from_the_remediator_container(stack: ComposeStack) -> None:
    assert "model-fleet watch" in stack.up_output
    # One error: below the threshold, so nothing switches, but the live count shows it.
    stack.write_server_log(printed_now(failed_load()))

    def frame() -> str | None:
        out = stack.compose(
            "exec", "-T", "remediator", "model-fleet", "watch", "--once", "--fleet", stack.fleet
        ).stdout
        # The shipped counting: errors in a row since the server last served a request.
        return out if "1 in a row since the model server last served a request" in out else None

    shown = stack.wait(frame, 30, "the live error count in the watch frame", interval=1)
    assert "llama3.2:3b" in shown
    assert "none firing" in shown
    assert "!!" not in shown, shown


def test_up_again_changes_nothing(stack: ComposeStack) -> None:
    ids = {service: stack.container_id(service) for service in SERVICES}
    token = stack.token_file.read_text()
    again = stack.run_script("up")
    assert {service: stack.container_id(service) for service in SERVICES} == ids
    assert stack.token_file.read_text() == token
    assert "pulling " not in again.replace("pulling manifest", "")
    assert "keeping the token" in again


def test_status_json_has_the_seed_shape(stack: ComposeStack) -> None:
    status = stack.status()
    assert status["current_model"]["name"] == "llama3.2:3b"
    assert status["current_model"]["index"] == 0
    assert status["available_models"] == [
        "llama3.2:3b",
        "phi3:mini",
        "tinyllama:1.1b",
        "qwen2.5:0.5b",
    ]
    assert status["fleet_size"] == 4
    assert status["can_downgrade"] is True
    assert status["max_vram_errors"] == 3


def test_three_vram_errors_switch_once_and_the_app_answers_on_the_new_model(
    stack: ComposeStack,
) -> None:
    app = stack.url("app", 8000)
    assert stack.get_json(f"{app}/healthz")["model"] == "llama3.2:3b"
    # Up to the third error since the server started (the watch test wrote one already; the
    # switch restarts the server at the third, so a write after it would find it gone): lines
    # further apart than the exporter's incident window (2 s), so each is an error of its own
    # (lines within it would be one failure, one error).
    before = _errors_since_start(stack)
    assert before < 3, f"{before} errors before the test: the switch may already be under way"
    for _ in range(2 - before):
        stack.write_server_log(printed_now(failed_load()))
        time.sleep(ERROR_SPACING_SECONDS)
    started = time.monotonic()
    stack.write_server_log(printed_now(failed_load()))

    status = stack.wait(
        lambda: (s := stack.status())["current_model"]["name"] == "phi3:mini" and s,
        90,
        "the switch to phi3:mini",
    )
    committed = time.monotonic() - started
    app = stack.url("app", 8000)  # restarted: a new ephemeral host port
    answer = stack.get_json(f"{app}/?prompt=hello", timeout=30)
    assert answer == {"model": "phi3:mini", "response": "ok"}
    assert "OLLAMA_MODEL=phi3:mini" in (stack.app_config / "model.env").read_text()
    assert status["last_switch"]["trigger"] == "alert"
    assert status["last_switch"]["from"] == "llama3.2:3b"
    # Committed when the app answered, not when Docker's 10 s health check next ran.
    assert committed < 60, f"switch committed {committed:.1f} s after the third error"

    # The restarted server starts from 0 errors: the alert resolves, in Prometheus and in
    # Alertmanager, and nothing switches again.
    stack.wait(lambda: not _firing(stack, "ModelFleetVRAMErrors"), 60, "the alert to resolve")
    am = stack.url("alertmanager", 9093)
    stack.wait(
        lambda: (
            not [
                a
                for a in stack.get_json(f"{am}/api/v2/alerts?active=true")
                if a["labels"].get("alertname") == "ModelFleetVRAMErrors"
            ]
        ),
        30,
        "Alertmanager to see the alert resolved",
    )
    time.sleep(5)  # two more evaluations and flushes: still one switch
    base = stack.url("remediator", 8080)
    history = stack.get_json(f"{base}/history?fleet={stack.fleet}", stack.token)
    assert [(h["from"], h["to"]) for h in history] == [("llama3.2:3b", "phi3:mini")]
    assert stack.status()["current_model"]["name"] == "phi3:mini"


def test_teardown_leaves_nothing_and_no_tracked_file_changed(
    tracked_before: str, stack: ComposeStack
) -> None:
    stack.run_script("down", "--volumes")
    client = docker.from_env()
    label = f"com.docker.compose.project={stack.project}"
    try:
        assert client.containers.list(all=True, filters={"label": label}) == []
        assert client.volumes.list(filters={"label": label}) == []
        assert client.networks.list(filters={"label": label}) == []
    finally:
        client.close()
    assert _tracked_changes() == tracked_before
    assert (
        (ROOT / "examples/app/model.env").read_text().strip().endswith("OLLAMA_MODEL=llama3.2:3b")
    )
