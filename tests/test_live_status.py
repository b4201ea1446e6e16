"""``GET /status`` and ``model-fleet status`` show the live figures from a real Prometheus.

The live VRAM error count (the stored one never shows 1 or 2), the GPU's free VRAM and the
loaded models with their offload, each with where it came from and how old its sample is; with
Prometheus down, the stored count and why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediator.app.service import create_app
from remediator.cli import main as cli
from remediator.store.state import StateStore
from simulator.prom_env import Prometheus, free_port
from tests.support.live_env import (
    HOST,
    MIB,
    OLD_SECONDS,
    Recorder,
    live_prometheus,
    make_config,
    put_on_rung,
)


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    with live_prometheus() as prom:
        yield prom


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_FLEET_PROMETHEUS_URL", raising=False)


def check_live_status(status: dict[str, Any], url: str) -> None:
    """Fleet tight: the live count 2 (the state holds 0), its GPU's free VRAM, its model."""
    assert status["vram_error_count"] == 2
    assert status["free_vram_bytes"] == 300 * MIB
    assert status["loaded_models"] == [
        {
            "name": "llama3.2:3b",
            "vram_bytes": 1500 * MIB,
            "system_bytes": 548 * MIB,
            "offloaded_fraction": round(548 / 2048, 4),
        }
    ]
    live = status["live"]
    assert (live["source"], live["url"], live["error"]) == ("prometheus", url, None)
    assert abs(live["at"] - time.time()) < 30
    for name in ("vram_error_count", "free_vram_bytes", "loaded_models"):
        figure = live["figures"][name]
        assert figure["source"] == "prometheus" and figure["problem"] is None, (name, figure)
        assert 0 <= figure["age_seconds"] < 15, (name, figure)  # scraped every second
        assert figure["sampled_at"] <= live["at"] + 1


def test_get_status_shows_the_live_figures(prometheus: Prometheus, tmp_path: Path) -> None:
    config = make_config(tmp_path, prometheus.url)
    app = create_app(config, token=None, allow_no_auth=True, actions_for=Recorder().for_fleet)
    client = app.test_client()
    assert StateStore(config).read().fleets["tight"].vram_error_count == 0
    check_live_status(client.get("/status?fleet=tight").get_json(), prometheus.url)

    fleets = client.get("/status").get_json()["fleets"]
    check_live_status(fleets["tight"], prometheus.url)
    # roomy's error sample is 45 s old: its age is told, not the query's.
    errors = fleets["roomy"]["live"]["figures"]["vram_error_count"]
    assert (fleets["roomy"]["vram_error_count"], errors["source"]) == (1, "prometheus")
    assert OLD_SECONDS - 5 <= errors["age_seconds"] <= OLD_SECONDS + 30, errors
    # No model series for roomy: an empty list, and why.
    assert fleets["roomy"]["loaded_models"] == []
    models = fleets["roomy"]["live"]["figures"]["loaded_models"]
    assert (
        models["source"] is None
        and "has no sample of fleet roomy's loaded models" in (models["problem"])
    )
    # GPU 7 has no series: no figure, and why.
    unseen = fleets["unseen"]
    assert unseen["free_vram_bytes"] is None
    assert (
        "has no sample of GPU 7's free VRAM"
        in unseen["live"]["figures"]["free_vram_bytes"]["problem"]
    )


def test_model_fleet_status_shows_the_live_figures(
    prometheus: Prometheus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """From the config file's prometheus.url; $MODEL_FLEET_PROMETHEUS_URL overrides it."""
    for var in ("MODEL_FLEET_CONFIG", "MODEL_FLEET_STATE_FILE", "MODEL_FLEET_URL"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "model-fleet.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "host": HOST,
                "state_file": str(tmp_path / "state.json"),
                "prometheus": {"url": f"http://127.0.0.1:{free_port()}"},
                "fleets": {"tight": {"gpu": 0}},
            }
        )
    )
    assert cli.main(["status", "--config", str(path)]) == 0
    down = json.loads(capsys.readouterr().out)
    assert down["vram_error_count"] == 0  # the state's
    assert down["live"]["figures"]["vram_error_count"]["source"] == "state"
    assert "Prometheus unreachable at" in down["live"]["error"]

    monkeypatch.setenv("MODEL_FLEET_PROMETHEUS_URL", prometheus.url)
    assert cli.main(["status", "--config", str(path)]) == 0
    check_live_status(json.loads(capsys.readouterr().out), prometheus.url)


def test_status_with_prometheus_down_shows_the_stored_count_and_why(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = make_config(tmp_path, url)
    put_on_rung(config, "tight", 1, errors=3)
    app = create_app(config, token=None, allow_no_auth=True, actions_for=Recorder().for_fleet)
    started = time.monotonic()
    fleets = app.test_client().get("/status").get_json()["fleets"]
    assert time.monotonic() - started < 5  # one failed round, not one per fleet and figure
    tight = fleets["tight"]
    assert (tight["vram_error_count"], tight["free_vram_bytes"], tight["loaded_models"]) == (
        3,
        None,
        [],
    )
    live = tight["live"]
    assert (live["source"], live["url"]) == ("prometheus", url)
    assert live["error"].startswith(f"Prometheus unreachable at {url}: ")
    errors = live["figures"]["vram_error_count"]
    assert (errors["source"], errors["age_seconds"]) == ("state", None)
    assert errors["problem"] == live["error"]
    assert all(f["live"]["error"] == live["error"] for f in fleets.values())
