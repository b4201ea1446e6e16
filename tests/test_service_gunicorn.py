"""The service under gunicorn with 3 workers: one switch per alert, metrics agree across workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from remediator.domain.alerts import parse_time
from simulator.fake_ollama import FakeOllama
from simulator.services import start_remediator

DATA = Path(__file__).parent / "data"
TOKEN = "gunicorn-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path, FakeOllama, Path]]:
    tmp = tmp_path_factory.mktemp("gunicorn")
    with FakeOllama(models={"llama3.2:3b": 2048 << 20}) as ollama:
        remediator = start_remediator(tmp, ollama.url, TOKEN, workers=3)
        try:
            yield remediator.url, remediator.app_env, ollama, tmp
        finally:
            remediator.stop()


def samples(text: str, name: str) -> list[Any]:
    """The samples called ``name``, each checked for the host label and shown without it."""
    found = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    assert all(s.labels.get("host") for s in found), found
    return [s._replace(labels={k: v for k, v in s.labels.items() if k != "host"}) for s in found]


def test_fifty_concurrent_duplicates_across_three_workers_switch_once(
    served: tuple[str, Path, FakeOllama, Path],
) -> None:
    url, app_env, ollama, _ = served
    body = json.loads((DATA / "alertmanager_firing.json").read_text())
    # A fresh startsAt: the alert started just now, after any earlier switch.
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    body["alerts"][0]["startsAt"] = now
    sent = time.time()
    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(
            pool.map(
                lambda _: requests.post(
                    url + "/webhook/alertmanager", json=body, headers=AUTH, timeout=30
                ),
                range(50),
            )
        )
    assert [r.status_code for r in responses] == [202] * 50
    outcomes = [r.json()["outcome"] for r in responses]
    assert outcomes.count("accepted") >= 1

    deadline = time.monotonic() + 30
    while requests.get(url + "/status", timeout=5).json()["current_model"]["name"] != "phi3:mini":
        assert time.monotonic() < deadline, "no switch happened"
        time.sleep(0.05)
    time.sleep(1.5)  # any second switch would have happened by now
    history = requests.get(url + "/history", timeout=5).json()
    assert len(history) == 1
    assert history[0]["alert_key"] == f"3f2a9c1b8e7d6054@{now}"
    assert app_env.read_text() == "OLLAMA_MODEL=phi3:mini\n"
    assert len(ollama.calls_to("/api/pull")) == 1
    assert parse_time(now) <= history[0]["time"]
    print(f"webhook received -> switch committed: {history[0]['time'] - sent:.3f} s")

    # Every worker answers /metrics with the same sums (multiprocess mode).
    seen = set()
    for _ in range(12):
        text = requests.get(url + "/metrics", timeout=5).text
        switches = [
            s.value
            for s in samples(text, "model_fleet_switches_total")
            if s.labels == {"fleet": "default", "direction": "down", "trigger": "alert"}
        ]
        hooks = {
            s.labels["outcome"]: s.value
            for s in samples(text, "model_fleet_webhook_requests_total")
        }
        seen.add(
            (
                tuple(switches),
                hooks.get("accepted", 0) + hooks.get("duplicate", 0) + hooks.get("ignored", 0),
            )
        )
        assert [s.value for s in samples(text, "model_fleet_current_model_index")] == [1.0]
    assert seen == {((1.0,), 50.0)}


def test_a_redelivery_after_the_switch_is_a_duplicate(
    served: tuple[str, Path, FakeOllama, Path],
) -> None:
    url, _, _, _ = served
    history = requests.get(url + "/history", timeout=5).json()
    key = history[-1]["alert_key"]
    _, starts_at = key.split("@")
    body = json.loads((DATA / "alertmanager_firing.json").read_text())
    body["alerts"][0]["startsAt"] = starts_at
    resp = requests.post(url + "/webhook/alertmanager", json=body, headers=AUTH, timeout=10)
    assert resp.status_code == 202
    assert resp.json()["ignored"][0]["reason"] == "duplicate"
    assert requests.post(url + "/webhook/alertmanager", json=body, timeout=10).status_code == 401
    assert len(requests.get(url + "/history", timeout=5).json()) == len(history)


def test_serve_leaves_nothing_behind_and_opens_no_control_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gunicorn (25.1 on) opens a control socket at one path per user ($XDG_RUNTIME_DIR, else
    # ~/.gunicorn): a second remediator on the host would take it over, and either one
    # stopping would remove it. model-fleet serve opens none.
    runtime_dir = tmp_path / "xdg"
    runtime_dir.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    with FakeOllama(models={"llama3.2:3b": 2048 << 20}) as ollama:
        remediator = start_remediator(tmp_path, ollama.url, TOKEN, workers=1)
        try:
            environ = Path(f"/proc/{remediator.proc.pid}/environ").read_bytes().split(b"\0")
            assert f"XDG_RUNTIME_DIR={runtime_dir}".encode() in environ
            made = [v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
            assert len(made) == 1, environ
            directory = Path(made[0].split(b"=", 1)[1].decode())
            assert directory.name.startswith("model-fleet-metrics-")
            assert list(directory.glob("*.db")), "the workers write their metrics there"
            assert list(runtime_dir.iterdir()) == []
        finally:
            remediator.stop()
    assert remediator.proc.returncode == 0
    # The metrics directory serve made for this run is gone with it.
    assert not directory.exists()


def test_serve_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")}
    exe = Path(sys.executable).with_name("model-fleet")
    r = subprocess.run(
        [str(exe), "serve", "--bind", f"127.0.0.1:{free_port()}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "no bearer token" in r.stderr


def test_the_cli_acts_through_a_running_remediator(
    served: tuple[str, Path, FakeOllama, Path],
) -> None:
    url, app_env, _, tmp = served
    exe = Path(sys.executable).with_name("model-fleet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")}
    env.update({"MODEL_FLEET_URL": url})

    def call(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
        e = dict(env)
        if token:
            e["MODEL_FLEET_TOKEN"] = token
        return subprocess.run(
            [str(exe), *args], env=e, cwd=tmp, capture_output=True, text=True, timeout=60
        )

    r = call("status")
    assert r.returncode == 0 and json.loads(r.stdout)["current_model"]["name"] == "phi3:mini"
    r = call("reset", "--reason", "from the CLI", token="wrong")
    assert r.returncode == 2 and "refused the token" in r.stderr
    r = call("reset", "--reason", "from the CLI")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["to"] == "llama3.2:3b"
    assert app_env.read_text() == "OLLAMA_MODEL=llama3.2:3b\n"
    r = call("upgrade")
    assert r.returncode == 4
    r = call("history", "--limit", "1")
    assert json.loads(r.stdout)[0]["reason"] == "from the CLI"
    r = call("status", "--fleet", "nope")
    assert r.returncode == 3
    r = subprocess.run(
        [str(exe), "--url", f"http://127.0.0.1:{free_port()}", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 7 and "cannot reach the remediator" in r.stderr
