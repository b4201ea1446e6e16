"""The exporter's view of each fleet's model server, on real parts: ``model-fleet-exporter
serve`` in its own process, scraped over HTTP, polling and probing a stand-in Ollama
(simulator.fake_ollama) that speaks ``/api/ps`` and ``/api/generate`` as Ollama does.

What a user sees: a model partly offloaded to system memory, a model unloaded, a server that goes
away and comes back, and the opt-in probe's success, duration and tokens per second.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import EXIT_USAGE, main
from exporter.config import DEFAULT_SERVER_URL, ConfigError, ProbeSettings, parse_config
from remediator.config import parse_config as parse_remediator_config
from simulator.fake_ollama import FakeOllama
from tests.support.exporter_env import ExporterProcess, Samples, sample, samples_named, wait_for

MIB = 1 << 20
POLL = 0.2  # exporter.server_poll_seconds in these tests
MODELS = {"llama3.2:3b": 2048 * MIB, "phi3:mini": 2200 * MIB, "qwen2.5:0.5b": 397 * MIB}

UP = "model_fleet_model_server_up"
MEMORY = "model_fleet_model_memory_bytes"
SUCCESS = "model_fleet_probe_success"
DURATION = "model_fleet_probe_duration_seconds"
SPEED = "model_fleet_probe_tokens_per_second"


@pytest.fixture()
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(MODELS) as server:
        yield server


@contextmanager
def exporter(tmp_path: Path, fleets: dict[str, Any], **section: Any) -> Iterator[ExporterProcess]:
    """A real exporter (no Docker, no NVML) whose model-fleet.yaml has these fleets."""
    config = tmp_path / "model-fleet.yaml"
    doc = {"fleets": fleets, "exporter": {"server_poll_seconds": POLL, **section}}
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    args = ["--config", str(config), "--no-docker", "--no-nvml"]
    with ExporterProcess(args, log_path=tmp_path / "exporter.log") as process:
        process.wait_ready()
        yield process
        assert process.proc.poll() is None, f"the exporter died:\n{process.log()}"
        assert process.stop() == 0


@contextmanager
def silent_server() -> Iterator[str]:
    """A URL whose port accepts connections and never answers (a hung model server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(128)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def scrape_when(ex: ExporterProcess, check: Callable[[Samples], bool], what: str) -> Samples:
    """The first scrape of ``ex`` for which ``check`` holds (waiting for it)."""

    def attempt() -> Samples | None:
        m = ex.metrics()
        return m if check(m) else None

    return wait_for(attempt, what)


def memory(m: Samples, fleet: str) -> dict[tuple[str, str], float]:
    """{(model, location): bytes} of one fleet."""
    return {
        (labels["model"], labels["location"]): value
        for labels, value in ((dict(k), v) for k, v in samples_named(m, MEMORY).items())
        if labels["fleet"] == fleet
    }


def probe(m: Samples, fleet: str) -> dict[str, dict[str, float]]:
    """{metric: {model: value}} of one fleet's probe series."""
    found: dict[str, dict[str, float]] = {}
    for name in (SUCCESS, DURATION, SPEED):
        for labels, value in samples_named(m, name).items():
            label = dict(labels)
            if label["fleet"] == fleet:
                found.setdefault(name, {})[label["model"]] = value
    return found


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(json.load(response))


def fleet_at(url: str, **probe_settings: Any) -> dict[str, Any]:
    fleet: dict[str, Any] = {"server": {"kind": "ollama", "url": url}}
    if probe_settings:
        fleet["probe"] = probe_settings
    return fleet


# --- offload detection -----------------------------------------------------------------------


def test_a_fully_loaded_model_has_nothing_in_system_memory(
    tmp_path: Path, fake: FakeOllama
) -> None:
    fake.load("phi3:mini")
    with exporter(tmp_path, {"gpu0": fleet_at(fake.url)}) as ex:
        full = {("phi3:mini", "vram"): 2200 * MIB, ("phi3:mini", "system"): 0}
        m = scrape_when(ex, lambda s: memory(s, "gpu0") == full, "the model's memory")
        assert sample(m, UP, fleet="gpu0") == 1
        assert probe(m, "gpu0") == {}  # the probe is opt-in


def test_a_partially_offloaded_model_shows_the_bytes_outside_vram(
    tmp_path: Path, fake: FakeOllama
) -> None:
    fake.load("llama3.2:3b", size_vram=1500 * MIB)  # "offloaded 28/37 layers to GPU"
    with exporter(tmp_path, {"gpu0": fleet_at(fake.url)}) as ex:
        offloaded = {("llama3.2:3b", "vram"): 1500 * MIB, ("llama3.2:3b", "system"): 548 * MIB}
        wait_for(lambda: memory(ex.metrics(), "gpu0") == offloaded, "the offload")
        fake.load("llama3.2:3b")  # reloaded whole, once VRAM was freed
        whole = {("llama3.2:3b", "vram"): 2048 * MIB, ("llama3.2:3b", "system"): 0}
        wait_for(lambda: memory(ex.metrics(), "gpu0") == whole, "the reload in VRAM")


def test_an_unloaded_model_loses_its_series(tmp_path: Path, fake: FakeOllama) -> None:
    fake.load("llama3.2:3b", size_vram=1024 * MIB)
    fake.load("qwen2.5:0.5b")
    with exporter(tmp_path, {"gpu0": fleet_at(fake.url)}) as ex:
        wait_for(lambda: len(memory(ex.metrics(), "gpu0")) == 4, "both models")
        # Unloaded as the remediator (or keep_alive running out) does it.
        post(fake.url + "/api/generate", {"model": "llama3.2:3b", "keep_alive": 0})
        left = {("qwen2.5:0.5b", "vram"): 397 * MIB, ("qwen2.5:0.5b", "system"): 0}
        wait_for(lambda: memory(ex.metrics(), "gpu0") == left, "the unloaded model's series gone")
        post(fake.url + "/api/generate", {"model": "qwen2.5:0.5b", "keep_alive": 0})
        m = scrape_when(ex, lambda s: not memory(s, "gpu0"), "no models")
        assert sample(m, UP, fleet="gpu0") == 1  # nothing loaded is not a server down


def test_a_server_that_goes_away_is_a_metric_not_a_crash(tmp_path: Path, fake: FakeOllama) -> None:
    fake.load("phi3:mini", size_vram=2000 * MIB)
    with exporter(tmp_path, {"gpu0": fleet_at(fake.url)}) as ex:
        wait_for(lambda: memory(ex.metrics(), "gpu0"), "the model")
        fake.go_down()
        m = scrape_when(ex, lambda s: sample(s, UP, fleet="gpu0") == 0, "down")
        assert memory(m, "gpu0") == {}  # what a dead server held is not vouched for
        time.sleep(5 * POLL)  # more failed polls: still serving, logged once
        assert ex.proc.poll() is None
        assert ex.log().count("fleet gpu0: model server") == 1, ex.log()
        fake.come_back()
        m = scrape_when(ex, lambda s: sample(s, UP, fleet="gpu0") == 1, "up")
        wait_for(lambda: memory(ex.metrics(), "gpu0"), "the model again")
        assert "answers again" in ex.log()


def test_each_fleet_is_polled_on_its_own(tmp_path: Path, fake: FakeOllama) -> None:
    """A hung server (legacy ``ollama_url``) neither stops the other fleet nor the scrape."""
    with silent_server() as hung:
        fleets = {"gpu0": fleet_at(fake.url), "gpu1": {"ollama_url": hung}}
        with exporter(tmp_path, fleets) as ex:
            wait_for(lambda: sample(ex.metrics(), UP, fleet="gpu0") == 1, "gpu0 up")
            fake.load("qwen2.5:0.5b")
            wait_for(lambda: memory(ex.metrics(), "gpu0"), "gpu0 polled while gpu1 hangs")
            started = time.monotonic()
            m = ex.metrics()
            assert time.monotonic() - started < 1  # a scrape never waits for a server
            assert sample(m, UP, fleet="gpu1") == 0 and memory(m, "gpu1") == {}
            stop_started = time.monotonic()
        assert time.monotonic() - stop_started < 3  # SIGTERM with a request in flight


def test_polling_can_be_turned_off(tmp_path: Path, fake: FakeOllama) -> None:
    fake.load("phi3:mini")
    with exporter(tmp_path, {"gpu0": fleet_at(fake.url)}, server_poll_seconds=0) as ex:
        time.sleep(5 * POLL)
        m = ex.metrics()
        assert samples_named(m, UP) == {} and samples_named(m, MEMORY) == {}
    assert fake.calls_to("/api/ps") == []


# --- the synthetic probe ---------------------------------------------------------------------


def test_the_probe_measures_the_current_model(tmp_path: Path, fake: FakeOllama) -> None:
    fake.eval_seconds_per_token = 0.04  # the fake reports one token in 40 ms: 25 tokens/s
    fake.load("llama3.2:3b")
    time.sleep(0.01)
    fake.load("phi3:mini", size_vram=2000 * MIB)  # loaded last: the current model
    fleets = {"gpu0": fleet_at(fake.url, enabled=True, interval_seconds=0.5)}
    with exporter(tmp_path, fleets) as ex:
        got = wait_for(lambda: probe(ex.metrics(), "gpu0").get(SPEED), "a probe")
        assert got == {"phi3:mini": pytest.approx(25.0)}
        found = probe(ex.metrics(), "gpu0")
        assert found[SUCCESS] == {"phi3:mini": 1}
        assert 0 < found[DURATION]["phi3:mini"] < 0.5
        # Asked as documented: a few tokens, not streamed, the server's own keep-alive.
        body = fake.calls_to("/api/generate", "POST")[-1].body
        assert body == {
            "model": "phi3:mini",
            "prompt": "Say OK.",
            "stream": False,
            "options": {"num_predict": 8},
        }
        # The probe reloaded nothing and moved nothing: the offload is as it was.
        assert memory(ex.metrics(), "gpu0")[("phi3:mini", "system")] == 200 * MIB

        # The application uses the other model (the probe's own requests count as use too,
        # so the application keeps asking): it is now the most recently used one.
        def app_uses_llama() -> bool:
            request = {"model": "llama3.2:3b", "prompt": "hi", "stream": False}
            post(fake.url + "/api/generate", request)
            return probe(ex.metrics(), "gpu0").get(SUCCESS) == {"llama3.2:3b": 1}

        wait_for(app_uses_llama, "the probe following the current model, the old one's gone")


def test_a_failing_server_fails_the_probe(tmp_path: Path, fake: FakeOllama) -> None:
    fake.load("phi3:mini")
    fleets = {"gpu0": fleet_at(fake.url, enabled=True, interval_seconds=0.5, num_predict=3)}
    with exporter(tmp_path, fleets) as ex:
        wait_for(lambda: probe(ex.metrics(), "gpu0").get(SUCCESS) == {"phi3:mini": 1}, "success")
        fake.fail("/api/generate", 500, "llama runner process has terminated")
        failed = scrape_when(
            ex, lambda s: probe(s, "gpu0").get(SUCCESS) == {"phi3:mini": 0}, "the failed probe"
        )
        found = probe(failed, "gpu0")
        assert set(found) == {SUCCESS, DURATION}  # no tokens/s without an answer
        assert found[DURATION]["phi3:mini"] > 0
        assert fake.calls_to("/api/generate")[-1].body["options"] == {"num_predict": 3}
        fake.heal()
        wait_for(lambda: probe(ex.metrics(), "gpu0").get(SUCCESS) == {"phi3:mini": 1}, "again")
        # The server goes away: the model probed last fails, no crash.
        fake.go_down()
        wait_for(lambda: probe(ex.metrics(), "gpu0").get(SUCCESS) == {"phi3:mini": 0}, "down")
        fake.come_back()


def test_a_configured_model_the_server_lacks_fails_the_probe(
    tmp_path: Path, fake: FakeOllama
) -> None:
    fleets = {"gpu0": fleet_at(fake.url, enabled=True, interval_seconds=0.5, model="nope:1b")}
    with exporter(tmp_path, fleets) as ex:
        found = wait_for(lambda: probe(ex.metrics(), "gpu0").get(SUCCESS), "a probe")
        assert found == {"nope:1b": 0}  # the server answered 404 "model not found"
        assert "probe of nope:1b failed" in ex.log()


def test_the_probe_skips_when_nothing_is_loaded(tmp_path: Path, fake: FakeOllama) -> None:
    fleets = {"gpu0": fleet_at(fake.url, enabled=True, interval_seconds=0.3)}
    with exporter(tmp_path, fleets) as ex:
        wait_for(lambda: len(fake.calls_to("/api/ps")) >= 6, "polls and probe rounds")
        assert fake.calls_to("/api/generate") == []  # a probe never loads a model itself
        assert probe(ex.metrics(), "gpu0") == {}
        fake.load("qwen2.5:0.5b")
        wait_for(lambda: probe(ex.metrics(), "gpu0").get(SUCCESS) == {"qwen2.5:0.5b": 1}, "probe")
        post(fake.url + "/api/generate", {"model": "qwen2.5:0.5b", "keep_alive": 0})
        wait_for(lambda: probe(ex.metrics(), "gpu0") == {}, "no probe series once unloaded")


def test_a_probe_never_takes_longer_than_its_interval(tmp_path: Path) -> None:
    with silent_server() as hung:
        fleets = {"gpu0": fleet_at(hung, enabled=True, interval_seconds=1, model="phi3:mini")}
        with exporter(tmp_path, fleets) as ex:
            found = wait_for(lambda: probe(ex.metrics(), "gpu0").get(DURATION), "a timed-out probe")
            assert 0.5 < found["phi3:mini"] <= 1.5
            assert probe(ex.metrics(), "gpu0")[SUCCESS] == {"phi3:mini": 0}


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"exporter": {"server_poll_seconds": -1}}, "exporter.server_poll_seconds"),
        ({"exporter": {"server_poll_seconds": "5s"}}, "exporter.server_poll_seconds"),
        ({"fleets": {"g": {"server": {"url": "ollama:11434"}}}}, "fleets.g.server.url"),
        ({"fleets": {"g": {"ollama_url": 11434}}}, "fleets.g.ollama_url"),
        (
            {"fleets": {"g": {"ollama_url": "http://a:1", "server": {"url": "http://b:1"}}}},
            "fleets.g.ollama_url: is the deprecated name of fleets.g.server.url",
        ),
        ({"fleets": {"g": {"probe": {"enabled": "yes"}}}}, "fleets.g.probe.enabled"),
        ({"fleets": {"g": {"probe": {"interval_seconds": 0}}}}, "fleets.g.probe.interval_seconds"),
        ({"fleets": {"g": {"probe": {"num_predict": 0}}}}, "fleets.g.probe.num_predict"),
        ({"fleets": {"g": {"probe": {"num_predict": 2.5}}}}, "fleets.g.probe.num_predict"),
        ({"fleets": {"g": {"probe": {"prompt": ""}}}}, "fleets.g.probe.prompt"),
        ({"fleets": {"g": {"probe": {"model": ["a"]}}}}, "fleets.g.probe.model"),
        (
            {"fleets": {"g": {"probe": {"keep_alive": 0}}}},
            "fleets.g.probe: unknown key(s) keep_alive",
        ),
        ({"fleets": {"g": {"probe": True}}}, "fleets.g.probe: must be a mapping"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError, match=r"^test\.yaml: ") as info:
        parse_config(data, "test.yaml")
    assert where in str(info.value)


def test_a_bad_probe_setting_stops_serve_with_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "model-fleet.yaml"
    config.write_text(yaml.safe_dump({"fleets": {"g": {"probe": {"interval_seconds": -5}}}}))
    assert main(["serve", "--config", str(config), "--no-docker", "--no-nvml"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(config) in err and "fleets.g.probe.interval_seconds" in err


def test_the_servers_and_probes_the_exporter_reads() -> None:
    # No fleets section: the remediator's one fleet at its default URL, polled every 5 s.
    default = parse_config({})
    assert [(t.fleet, t.url, t.probe) for t in default.servers] == [
        ("default", DEFAULT_SERVER_URL, ProbeSettings())
    ]
    assert default.server_poll_seconds == 5
    assert ProbeSettings() == ProbeSettings(
        enabled=False, interval_seconds=60, num_predict=8, prompt="Say OK.", model=None
    )
    data = {
        "state_file": "/tmp/state.json",
        "fleets": {
            "big": {
                "server": {"kind": "ollama", "url": "http://ollama-big:11434/"},
                "probe": {"enabled": True, "interval_seconds": 30, "model": "phi3:mini"},
            },
            "small": {"ollama_url": "http://ollama-small:11434"},
        },
        "exporter": {"server_poll_seconds": 2.5},
    }
    config = parse_config(data)
    assert config.server_poll_seconds == 2.5
    big, small = config.servers
    assert (big.fleet, big.url, small.fleet, small.url) == (
        "big",
        "http://ollama-big:11434",
        "small",
        "http://ollama-small:11434",
    )
    assert big.probe == ProbeSettings(enabled=True, interval_seconds=30, model="phi3:mini")
    assert not small.probe.enabled
    # The remediator reads the same file: it accepts the probe it leaves to the exporter.
    remediator = parse_remediator_config(data)
    assert remediator.fleets["big"].server.url == "http://ollama-big:11434"
