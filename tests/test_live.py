"""Decisions fed with live figures read from a real Prometheus, and their configuration.

Prometheus scrapes the exposition of tests/support/live_env.py: each GPU's free VRAM, each
fleet's VRAM errors since start. The remediator reads them at decision time
(``prometheus.url``): policy ``fits`` picks the rung the measured free VRAM allows, the
automatic step up checks its headroom with it, and the detail names the numbers and their
source. When Prometheus does not answer, or has no sample, the detail says so and the decision
falls back to the one without a figure.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from remediator.adapters.prometheus import PrometheusAPI
from remediator.app.remediator import Remediator
from remediator.config import CONFIG_KEYS, ConfigError, effective_config, parse_config
from remediator.store.state import StateStore
from remediator.switch.live import LiveReader
from simulator.prom_env import Prometheus, free_port
from tests.support.live_env import (
    FREE_MIB,
    HOST,
    SERVED_BEFORE,
    Recorder,
    judge,
    live_prometheus,
    make_config,
    put_on_rung,
    webhook,
)


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    with live_prometheus() as prom:
        yield prom


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_FLEET_PROMETHEUS_URL", raising=False)


# --- fits reads the free VRAM from Prometheus -------------------------------------------------


@pytest.mark.parametrize(
    ("fleet", "target", "too_large"),
    [
        # 300 MiB free: 2348 MiB once llama3.2:3b is unloaded; phi3:mini needs 2712.
        ("tight", "tinyllama:1.1b", "; too large: phi3:mini (2200 MiB)"),
        # 1000 MiB free: 3048 MiB; phi3:mini fits, and it is the largest lower rung.
        ("roomy", "phi3:mini", ""),
    ],
)
def test_fits_picks_the_rung_the_measured_free_vram_allows(
    prometheus: Prometheus, tmp_path: Path, fleet: str, target: str, too_large: str
) -> None:
    config, recorder = make_config(tmp_path, prometheus.url), Recorder()
    outcome = Remediator(config, StateStore(config), recorder.for_fleet).request(fleet, "down")
    assert outcome.switched and outcome.record is not None, outcome.to_dict()
    assert (outcome.decision.reason, outcome.record.to_model) == ("fits", target)
    assert [p.to_rung.name for p in recorder.plans] == [target]
    free, size = FREE_MIB[config.fleets[fleet].gpu], 2048
    rung = config.fleets[fleet].ladder[config.fleets[fleet].ladder.index_of(target) or 0]
    assert outcome.decision.detail.startswith(
        f"llama3.2:3b -> {target}: {rung.size_mb} MiB + 512 MiB headroom fits in "
        f"{free + size} MiB ({free} MiB free + {size} MiB of llama3.2:3b once unloaded)"
        f"{too_large}; free VRAM from Prometheus at {prometheus.url}, sample "
    )
    assert outcome.decision.detail.endswith(" s old")
    assert StateStore(config).read().fleets[fleet].current_model == target


def test_an_alert_is_judged_with_the_measured_free_vram(
    prometheus: Prometheus, tmp_path: Path
) -> None:
    config, recorder = make_config(tmp_path, prometheus.url), Recorder()
    remediator = Remediator(config, StateStore(config), recorder.for_fleet)
    accepted, ignored = judge(remediator, webhook("tight", "downgrade", value="3"))
    assert ignored == [] and len(accepted) == 1
    assert "(300 MiB free + 2048 MiB of llama3.2:3b once unloaded)" in accepted[0]["detail"]
    assert [p.to_rung.name for p in recorder.plans] == ["tinyllama:1.1b"]


def test_the_live_error_count_is_kept_in_the_state(prometheus: Prometheus, tmp_path: Path) -> None:
    """The alert says 5 errors, Prometheus 2 (the worst container now): the state keeps 2."""
    config = make_config(tmp_path, prometheus.url)
    put_on_rung(config, "tight", 3)  # at the bottom: the alert is refused, nothing switches
    remediator = Remediator(config, StateStore(config), Recorder().for_fleet)
    _, ignored = judge(remediator, webhook("tight", "downgrade", value="5"))
    assert [i["reason"] for i in ignored] == ["at_smallest"]
    assert StateStore(config).read().fleets["tight"].vram_error_count == 2


def test_the_live_error_count_is_the_one_the_fleets_counting_names(
    prometheus: Prometheus, tmp_path: Path
) -> None:
    """consecutive (shipped) reads model_fleet_vram_errors_consecutive; since_start the count
    since the server started, SERVED_BEFORE more: the count the rule compares, per fleet."""
    config = make_config(tmp_path, prometheus.url)
    reader = LiveReader(PrometheusAPI(prometheus.url, 2.0), host=HOST)
    tight = config.fleets["tight"]
    assert tight.counting == "consecutive"
    assert reader.read(tight, models=False).vram_errors.value == 2
    since = replace(tight, counting="since_start")
    assert reader.read(since, models=False).vram_errors.value == 2 + SERVED_BEFORE


# --- the automatic step up checks its headroom with the figure ---------------------------------


def test_the_step_up_uses_the_measured_free_vram(prometheus: Prometheus, tmp_path: Path) -> None:
    config, recorder = make_config(tmp_path, prometheus.url), Recorder()
    for fleet in ("tight", "spacious"):
        put_on_rung(config, fleet, 2)  # on tinyllama:1.1b (637 MiB); above it phi3:mini
    remediator = Remediator(config, StateStore(config), recorder.for_fleet)

    _, ignored = judge(remediator, webhook("tight", "upgrade"))
    [refused] = ignored
    assert refused["reason"] == "no_headroom"
    assert refused["detail"].startswith(
        "phi3:mini needs 2712 MiB (2200 MiB + 512 MiB headroom), 937 MiB would be free "
        "(300 MiB free + 637 MiB of tinyllama:1.1b once unloaded); free VRAM from Prometheus at "
        f"{prometheus.url}, sample "
    )

    accepted, ignored = judge(remediator, webhook("spacious", "upgrade"))
    assert ignored == [] and len(accepted) == 1
    assert "4637 MiB would be free (4000 MiB free + 637 MiB" in accepted[0]["detail"]
    assert [(p.fleet.name, p.to_rung.name) for p in recorder.plans] == [("spacious", "phi3:mini")]


# --- no figure: the detail says why, the decision is the one without it ------------------------


def test_prometheus_down_is_said_and_the_decisions_fall_back(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config, recorder = make_config(tmp_path, url), Recorder()
    put_on_rung(config, "spacious", 2)
    remediator = Remediator(config, StateStore(config), recorder.for_fleet)

    # roomy would take phi3:mini with its measured 1000 MiB; unmeasured, the next smaller rung.
    outcome = remediator.request("roomy", "down")
    assert outcome.record is not None
    assert (outcome.decision.reason, outcome.record.to_model) == (
        "no_vram_measurement",
        "tinyllama:1.1b",
    )
    assert f"free VRAM unknown (Prometheus unreachable at {url}: " in outcome.decision.detail
    assert outcome.decision.detail.endswith(
        ": no live figures), took the next smaller rung, skipping 1 rung(s) that free no VRAM"
    )

    # Unmeasured, the step up trusts the alert rule that asked for it, as before.
    accepted, ignored = judge(remediator, webhook("spacious", "upgrade"))
    assert ignored == [] and len(accepted) == 1
    assert f"free VRAM unknown (Prometheus unreachable at {url}: " in accepted[0]["detail"]
    assert accepted[0]["detail"].endswith(": the step-up alert checked the headroom")
    assert [p.to_rung.name for p in recorder.plans] == ["tinyllama:1.1b", "phi3:mini"]


def test_no_sample_of_the_gpu_is_said_and_the_decision_falls_back(
    prometheus: Prometheus, tmp_path: Path
) -> None:
    config = make_config(tmp_path, prometheus.url)
    outcome = Remediator(config, StateStore(config), Recorder().for_fleet).request("unseen", "down")
    assert outcome.decision.reason == "no_vram_measurement"
    assert (
        f"free VRAM unknown (Prometheus at {prometheus.url} has no sample of GPU 7's free VRAM "
        "(model_fleet_gpu_memory_free_bytes))" in outcome.decision.detail
    )


def test_a_prometheus_that_never_answers_costs_only_its_timeout(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = make_config(tmp_path, url, timeout=0.5)
        remediator = Remediator(config, StateStore(config), Recorder().for_fleet)
        started = time.monotonic()
        outcome = remediator.request("roomy", "down")
        took = time.monotonic() - started
    assert outcome.decision.reason == "no_vram_measurement"
    assert "timed out" in outcome.decision.detail
    assert took < 2.0, f"the decision waited {took:.1f} s for a 0.5 s timeout"


def test_without_a_prometheus_decisions_are_as_before(tmp_path: Path) -> None:
    config = make_config(tmp_path, None)
    outcome = Remediator(config, StateStore(config), Recorder().for_fleet).request("roomy", "down")
    assert outcome.decision.reason == "no_vram_measurement"
    assert "free VRAM unknown (no Prometheus configured (prometheus.url))" in (
        outcome.decision.detail
    )


# --- configuration -----------------------------------------------------------------------------


def test_the_prometheus_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"prometheus", "prometheus.url", "prometheus.timeout_seconds"} <= CONFIG_KEYS
    none = parse_config({})
    assert (none.prometheus.url, none.prometheus.timeout_seconds) == (None, 2.0)
    secret = {"url": "http://u:secret@prom:9090/", "timeout_seconds": 1}
    config = parse_config({"prometheus": secret})
    assert (config.prometheus.url, config.prometheus.timeout_seconds) == (
        "http://u:secret@prom:9090",
        1.0,
    )
    # check-config shows where, never the password.
    assert effective_config(config)["prometheus"] == {
        "url": "http://prom:9090",
        "timeout_seconds": 1.0,
    }
    monkeypatch.setenv("MODEL_FLEET_PROMETHEUS_URL", "http://prometheus:9090")
    assert parse_config({}).prometheus.url == "http://prometheus:9090"
    assert parse_config({"prometheus": {"url": "http://x:1"}}).prometheus.url == (
        "http://prometheus:9090"
    )
    monkeypatch.setenv("MODEL_FLEET_PROMETHEUS_URL", "prometheus:9090")
    with pytest.raises(ConfigError) as err:
        parse_config({}, "f.yaml")
    assert str(err.value) == (
        "f.yaml: prometheus.url (from $MODEL_FLEET_PROMETHEUS_URL): must be an http(s) URL, "
        "got 'prometheus:9090'"
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"url": "prom:9090"}, "prometheus.url: must be an http(s) URL, got 'prom:9090'"),
        ({"url": 9090}, "prometheus.url: must be an http(s) URL, got 9090"),
        (
            {"timeout_seconds": 0},
            "prometheus.timeout_seconds: must be more than 0 and at most 10 seconds (a decision "
            "waits for Prometheus), got 0",
        ),
        (
            {"timeout_seconds": 30},
            "prometheus.timeout_seconds: must be more than 0 and at most 10 seconds (a decision "
            "waits for Prometheus), got 30",
        ),
        ({"timeout_seconds": "2s"}, "prometheus.timeout_seconds: must be a number >= 0, got '2s'"),
        ({"bogus": 1}, "prometheus: unknown key(s) bogus (allowed: timeout_seconds, url)"),
    ],
)
def test_bad_prometheus_settings_are_named(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"prometheus": section}, "f.yaml")
    assert str(err.value) == f"f.yaml: {message}"
