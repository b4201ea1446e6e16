"""Fleet configuration: defaults, several fleets, errors that name file, key and entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from remediator.config import (
    CONFIG_KEYS,
    DEPRECATED_KEYS,
    ConfigError,
    ServerSettings,
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
    assert fleet.counting == "consecutive"  # "3 consecutive VRAM errors", as the original meant
    assert fleet.policy == "next"
    assert fleet.offload_tolerance == 0.0  # any offload of the current model counts
    assert fleet.server == ServerSettings(kind="ollama", url="http://127.0.0.1:11434")
    assert (fleet.containers.server_names, fleet.containers.restart_server) == ((), True)
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
                        "server": {"kind": "ollama", "url": "http://10.0.0.2:11434/"},
                        "containers": {
                            "use_labels": False,
                            "server": ["o1"],
                            "app": ["a1", "a2"],
                            "restart_server": False,
                        },
                        "app_config": [
                            {"path": "/cfg/app.env", "format": "env"},
                            {"path": "/cfg/app.json", "format": "json", "key": "llm.model"},
                            {"path": "/cfg/model.txt", "format": "text"},
                        ],
                        "auto_upgrade": {"enabled": True, "quiet_seconds": 60},
                        "offload_tolerance": 0.1,
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
    assert g1.server.url == "http://10.0.0.2:11434"
    assert g1.containers.server_names == ("o1",)
    assert g1.containers.app_names == ("a1", "a2")
    assert not g1.containers.restart_server
    assert config.deprecated_keys == ()
    assert g1.app_config[0].key == "OLLAMA_MODEL"  # the env format's default key
    assert g1.app_config[1].key == "llm.model"
    assert g1.app_config[2].key is None
    assert g1.auto_upgrade.enabled and g1.auto_upgrade.quiet_seconds == 60
    assert (g0.offload_tolerance, g1.offload_tolerance) == (0.0, 0.1)
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
            {"fleets": {"a": {"server": {"url": "localhost:11434"}}}},
            r"fleets\.a\.server\.url: must be an http\(s\) URL",
        ),
        (
            {"fleets": {"a": {"server": {"kind": "vllm"}}}},
            r"fleets\.a\.server\.kind: unknown server kind 'vllm' \(known kinds: ollama\)",
        ),
        (
            {"fleets": {"a": {"server": {"kind": "ollama", "port": 1}}}},
            r"fleets\.a\.server: unknown key\(s\) port \(allowed: kind, runtime, unit, url\)",
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
        (
            {"fleets": {"a": {"counting": "daily"}}},
            r"fleets\.a\.counting: must be one of consecutive, since_start, got 'daily'",
        ),
        (
            {"fleets": {"a": {"offload_tolerance": 1.5}}},
            r"fleets\.a\.offload_tolerance: must be a fraction from 0 to 1 .*, got 1\.5",
        ),
        (
            {"fleets": {"a": {"offload_tolerance": -0.1}}},
            r"fleets\.a\.offload_tolerance: must be a number >= 0",
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


def test_the_old_server_keys_still_work_and_check_config_names_them() -> None:
    config = parse_config(
        {
            "fleets": {
                "a": {
                    "ollama_url": "http://10.0.0.2:11434/",
                    "containers": {"ollama": "o1", "restart_ollama": False},
                },
                "b": {"server": {"url": "http://10.0.0.3:11434"}},
            }
        },
        "old.yaml",
    )
    a = config.fleets["a"]
    assert a.server == ServerSettings(kind="ollama", url="http://10.0.0.2:11434")
    assert (a.containers.server_names, a.containers.restart_server) == (("o1",), False)
    assert config.deprecated_keys == (
        ("fleets.a.ollama_url", "fleets.a.server.url"),
        ("fleets.a.containers.ollama", "fleets.a.containers.server"),
        ("fleets.a.containers.restart_ollama", "fleets.a.containers.restart_server"),
    )
    warnings = config_warnings(config)
    assert warnings[:3] == [
        "fleets.a.ollama_url is deprecated: use fleets.a.server.url (the old key still works)",
        "fleets.a.containers.ollama is deprecated: use fleets.a.containers.server "
        "(the old key still works)",
        "fleets.a.containers.restart_ollama is deprecated: use "
        "fleets.a.containers.restart_server (the old key still works)",
    ]
    assert not any("fleets.b" in w and "deprecated" in w for w in warnings)
    # The effective config speaks the new keys only, and reads back the same.
    eff = effective_config(config)
    assert eff["fleets"]["a"]["server"] == {
        "kind": "ollama",
        "url": "http://10.0.0.2:11434",
        "runtime": "docker",
        "unit": None,
    }
    assert eff["fleets"]["a"]["containers"]["server"] == ["o1"]
    assert "ollama_url" not in eff["fleets"]["a"]
    again = parse_config({k: v for k, v in eff.items() if k != "source"}, "again")
    assert again.deprecated_keys == ()
    assert effective_config(again)["fleets"] == eff["fleets"]


@pytest.mark.parametrize(
    ("fleet", "old", "new"),
    [
        (
            {"ollama_url": "http://a:1", "server": {"url": "http://b:1"}},
            "fleets.a.ollama_url",
            "fleets.a.server.url",
        ),
        (
            {"containers": {"ollama": ["o"], "server": ["o"]}},
            "fleets.a.containers.ollama",
            "fleets.a.containers.server",
        ),
        (
            {"containers": {"restart_ollama": True, "restart_server": False}},
            "fleets.a.containers.restart_ollama",
            "fleets.a.containers.restart_server",
        ),
    ],
)
def test_old_and_new_key_for_one_setting_is_an_error(
    fleet: dict[str, object], old: str, new: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"fleets": {"a": fleet}}, "both.yaml")
    assert str(err.value) == (
        f"both.yaml: {old}: is the deprecated name of {new}, which is set too: keep only one"
    )


def test_an_old_key_beside_other_new_keys_is_fine() -> None:
    config = parse_config(
        {"fleets": {"a": {"ollama_url": "http://a:1", "server": {"kind": "ollama"}}}}
    )
    assert config.fleets["a"].server == ServerSettings(kind="ollama", url="http://a:1")


def test_config_keys_name_every_key_of_the_effective_config() -> None:
    def paths(value: object, where: str) -> set[str]:
        """The dotted paths of the keys in ``value``, written as CONFIG_KEYS writes them."""
        out: set[str] = set()
        if isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{'*' if where == 'fleets' else key}" if where else str(key)
                out |= {path} | paths(item, path)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out |= paths(value[0], f"{where}[]")
        return out

    fleet = {
        "app_config": [{"path": "p", "format": "json", "key": "m"}],
        "gpus": [0, 1],
        "placement": "move_first",
        "gpu_config": [{"path": "q"}],
    }
    config = parse_config({"fleets": {"a": fleet}})
    eff = {k: v for k, v in effective_config(config).items() if k != "source"}
    found = paths(eff, "")
    assert found <= CONFIG_KEYS, found - CONFIG_KEYS
    # What the effective config leaves out: the deprecated keys, what only the exporter
    # reads (its section, a fleet's synthetic probe) and a rung's create, which the default
    # ladder has none of (tests/test_custom_rungs.py shows it).
    creates = {k for k in CONFIG_KEYS if k.startswith("fleets.*.ladder[].create")}
    assert len(creates) == 8
    assert CONFIG_KEYS - found == set(DEPRECATED_KEYS) | {"exporter", "fleets.*.probe"} | creates
    assert set(DEPRECATED_KEYS.values()) <= CONFIG_KEYS
    assert {"fleets.*.server.kind", "fleets.*.app_config[].path", "alert_keys.ttl_seconds"} <= (
        CONFIG_KEYS
    )


@pytest.mark.parametrize(
    ("section", "data"),
    [
        ("", {"bogus": 1}),
        ("alert_keys", {"alert_keys": {"bogus": 1}}),
        ("notifications", {"notifications": {"bogus": 1}}),
        ("prometheus", {"prometheus": {"bogus": 1}}),
        ("fleets.*", {"fleets": {"a": {"bogus": 1}}}),
        ("fleets.*.server", {"fleets": {"a": {"server": {"bogus": 1}}}}),
        ("fleets.*.ladder[]", {"fleets": {"a": {"ladder": [{"bogus": 1}]}}}),
        ("fleets.*.containers", {"fleets": {"a": {"containers": {"bogus": 1}}}}),
        ("fleets.*.app_config[]", {"fleets": {"a": {"app_config": [{"bogus": 1}]}}}),
        ("fleets.*.auto_upgrade", {"fleets": {"a": {"auto_upgrade": {"bogus": 1}}}}),
    ],
)
def test_config_keys_are_what_the_parser_accepts(section: str, data: object) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) bogus \(allowed: ") as err:
        parse_config(data)
    allowed = str(err.value).rsplit("(allowed: ", 1)[1].rstrip(")").split(", ")
    prefix = f"{section}." if section else ""
    listed = {k[len(prefix) :] for k in CONFIG_KEYS if k.startswith(prefix)}
    assert set(allowed) == {k for k in listed if "." not in k and "[" not in k and k != "*"}


def test_counting_is_read_per_fleet_and_shown_by_check_config() -> None:
    config = parse_config(
        {"fleets": {"a": {}, "b": {"counting": "since_start"}}}, "model-fleet.yaml"
    )
    assert (config.fleets["a"].counting, config.fleets["b"].counting) == (
        "consecutive",
        "since_start",
    )
    shown = effective_config(config)["fleets"]
    assert (shown["a"]["counting"], shown["b"]["counting"]) == ("consecutive", "since_start")
