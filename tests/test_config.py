"""Fleet configuration: defaults, several fleets, errors that name file, key and entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from remediator.config import (
    ConfigError,
    config_warnings,
    default_config,
    effective_config,
    load_config,
    parse_config,
)


def test_defaults_reproduce_the_original_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODEL_FLEET_CONFIG", raising=False)
    monkeypatch.delenv("MODEL_FLEET_STATE_FILE", raising=False)
    config = load_config()
    assert list(config.fleets) == ["default"]
    fleet = config.fleet(None)
    assert [(r.name, r.size_mb, r.description) for r in fleet.ladder.rungs] == [
        ("llama3.2:3b", 2048, "Large model - 3B parameters"),
        ("phi3:mini", 2200, "Medium model - Phi3 mini"),
        ("tinyllama:1.1b", 637, "Small model - 1.1B parameters"),
        ("qwen2.5:0.5b", 397, "Tiny model - 0.5B parameters"),
    ]
    assert fleet.max_vram_errors == 3
    assert fleet.policy == "next"
    assert fleet.ollama_url == "http://127.0.0.1:11434"
    assert str(config.state_file) == "model_fleet_state.json"
    assert config.source == "<defaults>"


def test_several_fleets_each_with_its_own_settings(tmp_path: Path) -> None:
    path = tmp_path / "model-fleet.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_file": str(tmp_path / "s.json"),
                "fleets": {
                    "gpu0": {"gpu": 0, "policy": "fits", "headroom_mb": 256, "cooldown_seconds": 5},
                    "gpu1": {
                        "gpu": "1",
                        "ladder": [
                            {"name": "big", "size_mb": 4000},
                            {"name": "small", "size_mb": 1000, "description": "s"},
                        ],
                        "max_vram_errors": 5,
                        "ollama_url": "http://10.0.0.2:11434/",
                        "containers": {"use_labels": False, "ollama": ["o1"], "app": ["a1", "a2"]},
                        "app_config": [
                            {"path": "/cfg/app.env", "format": "env"},
                            {"path": "/cfg/app.json", "format": "json", "key": "llm.model"},
                            {"path": "/cfg/model.txt", "format": "text"},
                        ],
                        "auto_upgrade": {"enabled": True, "quiet_seconds": 60},
                    },
                },
            }
        )
    )
    config = load_config(path)
    assert set(config.fleets) == {"gpu0", "gpu1"}
    g0, g1 = config.fleets["gpu0"], config.fleets["gpu1"]
    assert (g0.gpu, g0.policy, g0.headroom_mb, g0.cooldown_seconds) == ("0", "fits", 256, 5.0)
    assert g0.ladder.names[0] == "llama3.2:3b"
    assert g1.ladder.names == ["big", "small"]
    assert g1.ollama_url == "http://10.0.0.2:11434"
    assert g1.containers.app_names == ("a1", "a2")
    assert g1.app_config[0].key == "OLLAMA_MODEL"  # the env format's default key
    assert g1.app_config[1].key == "llm.model"
    assert g1.app_config[2].key is None
    assert g1.auto_upgrade.enabled and g1.auto_upgrade.quiet_seconds == 60
    with pytest.raises(KeyError, match="several fleets"):
        config.fleet(None)
    with pytest.raises(KeyError, match="unknown fleet 'nope'"):
        config.fleet("nope")


def test_environment_names_the_config_and_the_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text("fleets:\n  only: {max_vram_errors: 3}\n")
    monkeypatch.setenv("MODEL_FLEET_CONFIG", str(path))
    monkeypatch.setenv("MODEL_FLEET_STATE_FILE", str(tmp_path / "st.json"))
    config = load_config()
    assert list(config.fleets) == ["only"]
    assert config.state_file == tmp_path / "st.json"
    monkeypatch.setenv("MODEL_FLEET_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"missing\.yaml: configuration file not found"):
        load_config()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"fleets": {"a": {"ladder": [{"name": "m", "size_mb": "big"}]}}},
            r"fleets\.a\.ladder\[0\]\.size_mb: must be an integer >= 1, got 'big'",
        ),
        (
            {
                "fleets": {
                    "a": {"ladder": [{"name": "m", "size_mb": 1}, {"name": "m", "size_mb": 2}]}
                }
            },
            r"fleets\.a\.ladder\[1\]\.name: model 'm' appears twice",
        ),
        (
            {"fleets": {"a": {"ladder": [{"size_mb": 1}]}}},
            r"fleets\.a\.ladder\[0\]\.name: must be a non-empty string",
        ),
        ({"fleets": {"a": {"ladder": []}}}, r"fleets\.a\.ladder: must be a non-empty list"),
        (
            {"fleets": {"a": {"policy": "biggest"}}},
            r"fleets\.a\.policy: must be one of next, next-smaller, fits, got 'biggest'",
        ),
        (
            {"fleets": {"a": {"max_vram_errors": 0}}},
            r"fleets\.a\.max_vram_errors: must be an integer >= 1",
        ),
        ({"fleets": {"a": {"cooldown": 5}}}, r"fleets\.a: unknown key\(s\) cooldown"),
        (
            {"fleets": {"a": {"ollama_url": "localhost:11434"}}},
            r"fleets\.a\.ollama_url: must be an http\(s\) URL",
        ),
        (
            {"fleets": {"a": {"app_config": [{"path": "x", "format": "toml"}]}}},
            r"fleets\.a\.app_config\[0\]\.format: must be one of env, json, yaml, text",
        ),
        (
            {"fleets": {"a": {"app_config": [{"path": "x", "format": "json"}]}}},
            r"fleets\.a\.app_config\[0\]\.key: must be a non-empty string",
        ),
        (
            {"fleets": {"a": {"app_config": [{"path": "x", "format": "text", "key": "k"}]}}},
            r"fleets\.a\.app_config\[0\]\.key: a text target holds only the model name",
        ),
        (
            {"fleets": {"a": {"containers": {"ollama": "o", "app": [3]}}}},
            r"fleets\.a\.containers\.app: must be a list of names",
        ),
        (
            {"fleets": {"a": {"auto_upgrade": {"quiet_seconds": 100, "failed_quiet_seconds": 10}}}},
            r"fleets\.a\.auto_upgrade\.failed_quiet_seconds: must be at least quiet_seconds",
        ),
        ({"fleets": {}}, r"fleets: must be a non-empty mapping"),
        ({"fleets": {"a b": {}}}, r"fleets\.a b: fleet names use letters"),
        ({"lock_timeout_seconds": -1}, r"lock_timeout_seconds: must be a number >= 0"),
        ({"fleets": {"a": {"dry_run": "yes"}}}, r"fleets\.a\.dry_run: must be true or false"),
        (["not", "a", "mapping"], r"top level: must be a mapping, got list"),
        ({"fleet": {}}, r"top level: unknown key\(s\) fleet"),
    ],
)
def test_invalid_config_names_file_key_and_entry(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^cfg\.yaml: " + message):
        parse_config(data, "cfg.yaml")


def test_unparseable_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("fleets: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(path)


def test_warnings_say_which_step_frees_no_vram() -> None:
    warnings = config_warnings(default_config())
    larger = [w for w in warnings if "frees no VRAM" in w]
    assert larger == [
        "fleet default: phi3:mini (2200 MB) is larger than llama3.2:3b (2048 MB), so stepping "
        "down from llama3.2:3b to phi3:mini frees no VRAM (policy 'next' takes that step anyway)"
    ]
    skipping = parse_config({"fleets": {"default": {"policy": "next-smaller"}}})
    assert any("policy 'next-smaller' skips it" in w for w in config_warnings(skipping))


def test_warnings_for_threshold_and_missing_targets() -> None:
    config = parse_config(
        {
            "fleets": {
                "x": {
                    "max_vram_errors": 5,
                    "ladder": [{"name": "only", "size_mb": 10}],
                    "containers": {"use_labels": False},
                }
            }
        }
    )
    text = "\n".join(config_warnings(config))
    assert "max_vram_errors is 5 but the shipped alert rule fires at 3" in text
    assert "nothing to step down to" in text
    assert "no app_config targets" in text
    assert "a switch restarts nothing" in text


def test_effective_config_round_trips_through_the_parser() -> None:
    config = parse_config(
        {
            "fleets": {
                "a": {"policy": "fits", "app_config": [{"path": "p", "format": "yaml", "key": "m"}]}
            }
        }
    )
    eff = effective_config(config)
    again = parse_config({k: v for k, v in eff.items() if k != "source"}, "again")
    assert effective_config(again)["fleets"] == eff["fleets"]


def test_the_exporter_section_belongs_to_the_exporter() -> None:
    config = parse_config({"exporter": {"bind": "0.0.0.0:9842"}, "fleets": {"a": {}}}, "f")
    assert list(config.fleets) == ["a"]
