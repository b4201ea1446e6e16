"""gpus and placement: what the parser accepts, what it refuses saying why, what check-config
shows and warns about."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remediator.cli import main as cli
from remediator.config import ConfigError, config_warnings, effective_config, parse_config
from remediator.report.queries import ExitCode

PROM = {"url": "http://127.0.0.1:9090"}


def test_a_fleet_without_gpus_runs_on_its_gpu_and_stays() -> None:
    fleet = parse_config({"fleets": {"a": {"gpu": 1}}}).fleets["a"]
    assert (fleet.gpus, fleet.placement, fleet.listed_gpus) == (("1",), "stay", ("1",))


def test_move_first_over_listed_gpus() -> None:
    data = {"prometheus": PROM, "fleets": {"a": {"gpus": [0, "1", 1], "placement": "move_first"}}}
    config = parse_config(data)
    fleet = config.fleets["a"]
    assert (fleet.gpu, fleet.gpus, fleet.placement) == ("0", ("0", "1"), "move_first")
    shown = effective_config(config)["fleets"]["a"]
    assert (shown["gpus"], shown["placement"]) == (["0", "1"], "move_first")
    assert not [w for w in config_warnings(config) if "prometheus.url" in w]


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        ({"gpus": []}, "fleets.a.gpus: must be a list of GPU indexes (NVML: 0, 1, ...), got []"),
        ({"gpus": ["x"]}, "fleets.a.gpus: must be a list of GPU indexes"),
        ({"gpus": 1}, "fleets.a.gpus: must be a list of GPU indexes"),
        ({"gpus": [True]}, "fleets.a.gpus: must be a list of GPU indexes"),
        (
            {"gpu": 2, "gpus": [0, 1]},
            "fleets.a.gpus: must contain the fleet's gpu '2' (where its model server starts), "
            "got ['0', '1']",
        ),
        ({"placement": "spread"}, "fleets.a.placement: must be one of stay, move_first, got"),
        (
            {"placement": "move_first"},
            "fleets.a.placement: move_first needs gpus with at least 2 GPUs to move between, "
            "got ['0']",
        ),
        (
            {
                "gpus": [0, 1],
                "placement": "move_first",
                "server": {"runtime": "systemd", "unit": "ollama.service"},
            },
            "fleets.a.placement: move_first recreates the model server's Docker container on "
            "another GPU; ollama.service is a systemd unit (server.runtime: systemd), which is "
            "not moved: use placement: stay",
        ),
        (
            {"gpu_config": [{"path": "/compose/.env"}]},
            "fleets.a.gpu_config: only a move writes it: set placement: move_first, or remove it",
        ),
        (
            {
                "gpus": [0, 1],
                "placement": "move_first",
                "gpu_config": [{"path": "/c/.env", "x": 1}],
            },
            "fleets.a.gpu_config[0]",
        ),
        (
            {"gpus": [0, 1], "placement": "move_first", "gpu_config": {"path": "/c/.env"}},
            "fleets.a.gpu_config: must be a list of targets",
        ),
    ],
)
def test_refused_placements_say_why(fleet: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"fleets": {"a": fleet}}, "model-fleet.yaml")
    assert f"model-fleet.yaml: {message}" in str(err.value)


def test_gpu_config_names_the_gpu_in_compose_env_by_default() -> None:
    fleet = {
        "gpus": [0, 1],
        "placement": "move_first",
        "gpu_config": [
            {"path": "/compose/.env"},
            {"path": "/etc/gpu.json", "format": "json", "key": "gpu"},
        ],
    }
    config = parse_config({"prometheus": PROM, "fleets": {"a": fleet}})
    targets = [(t.path, t.format, t.key) for t in config.fleets["a"].gpu_config]
    assert targets == [
        ("/compose/.env", "env", "MODEL_FLEET_GPU"),
        ("/etc/gpu.json", "json", "gpu"),
    ]
    shown = effective_config(config)["fleets"]["a"]["gpu_config"]
    assert shown[0] == {"path": "/compose/.env", "format": "env", "key": "MODEL_FLEET_GPU"}


def test_move_first_without_prometheus_is_a_warning() -> None:
    config = parse_config({"fleets": {"a": {"gpus": [0, 1], "placement": "move_first"}}})
    assert (
        "fleet a: placement is move_first but no prometheus.url is set: without live free "
        "VRAM per GPU the fleet never moves, it steps down"
    ) in config_warnings(config)
    # The alert path acts on it: no warning says otherwise.
    assert not [w for w in config_warnings(config) if "not acted on" in w]


def test_check_config_validates_and_shows_placement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("MODEL_FLEET_CONFIG", "MODEL_FLEET_STATE_FILE", "MODEL_FLEET_PROMETHEUS_URL"):
        monkeypatch.delenv(var, raising=False)
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("fleets:\n  a:\n    gpus: [0, 1]\n    placement: move_first\n")
    bad.write_text("fleets:\n  a:\n    gpu: 2\n    gpus: [0, 1]\n")
    assert cli.main(["check-config", "--config", str(good)]) == ExitCode.OK
    out, err = capsys.readouterr()
    assert json.loads(out)["fleets"]["a"]["gpus"] == ["0", "1"]
    assert "placement is move_first but no prometheus.url is set" in err
    assert cli.main(["check-config", "--config", str(bad)]) == ExitCode.USAGE
    assert "fleets.a.gpus: must contain the fleet's gpu '2'" in capsys.readouterr().err
