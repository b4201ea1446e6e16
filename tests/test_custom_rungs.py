"""Custom rungs (a ladder entry's ``create``): what the config accepts and refuses, what
check-config shows, and a switch that makes the model on the Ollama stand-in."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediator.adapters.ollama import OllamaServer
from remediator.app.remediator import Remediator
from remediator.app.wiring import fleet_actions
from remediator.cli import main as cli
from remediator.config import ConfigError, FleetConfig, load_config, parse_config
from remediator.ports.model_server import CreateSpec
from remediator.report.queries import ExitCode
from remediator.store.state import StateStore
from remediator.switch.actions import FleetActions
from remediator.switch.journal import PLANNED
from simulator.fake_ollama import FakeOllama

MODELFILE = '''# the brief assistant of ACME
FROM llama3.2:3b
PARAMETER num_ctx 2048
PARAMETER stop "<|eot_id|>"
SYSTEM """You answer in one sentence."""
'''


def ladder(*custom: dict[str, Any]) -> dict[str, Any]:
    """A fleet whose ladder is llama3.2:3b, then the custom rungs given."""
    rungs = [{"name": "llama3.2:3b", "size_mb": 2048}]
    rungs += [{"name": f"custom-{i}:1", "size_mb": 1000 - i, **c} for i, c in enumerate(custom)]
    return {"fleets": {"a": {"ladder": rungs}}}


def parse(data: dict[str, Any], source: str = "test.yaml") -> Any:
    return parse_config(data, source).fleets["a"].ladder


def test_a_parameters_rung_and_a_quantization_rung() -> None:
    rungs = parse(
        ladder(
            {"create": {"from": "llama3.2:3b", "parameters": {"num_ctx": 2048}, "system": "Hi"}},
            {"create": {"from": "llama3.1:8b-instruct-fp16", "quantize": "Q4_K_M"}},
        )
    )
    assert rungs[0].create is None
    assert rungs[1].create == CreateSpec(
        "llama3.2:3b", parameters=(("num_ctx", 2048),), system="Hi"
    )
    assert rungs[2].create == CreateSpec("llama3.1:8b-instruct-fp16", quantize="q4_K_M")


def test_a_modelfile_is_read_from_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "Modelfile.brief").write_text(MODELFILE)
    config = conf / "model-fleet.yaml"
    config.write_text("")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    rung = parse(ladder({"create": {"modelfile": "Modelfile.brief"}}), str(config))[1]
    assert rung.create == CreateSpec(
        "llama3.2:3b",
        parameters=(("num_ctx", 2048), ("stop", ("<|eot_id|>",))),
        system="You answer in one sentence.",
        modelfile="Modelfile.brief",
    )
    # `from` may repeat the Modelfile's FROM (ollama's `name:latest` rule applies).
    same = {"from": "llama3.2:3b", "modelfile": "Modelfile.brief", "quantize": "q8_0"}
    assert parse(ladder({"create": same}), str(config))[1].create.quantize == "q8_0"


@pytest.mark.parametrize(
    ("create", "message"),
    [
        ({}, "create.from: is required: a custom model is made from another model"),
        ({"from": "x", "pull": True}, "create: unknown key(s) pull (allowed: from, license"),
        ({"from": "x", "quantize": "q2_K"}, "create.quantize: 'q2_K' is not a type Ollama"),
        ({"from": "custom-0:1"}, "create.from: is the rung itself (custom-0:1)"),
        ({"from": "./llama.gguf"}, "create.from: './llama.gguf' names weights on disk"),
        ({"from": "x", "parameters": {"num_cxt": 2048}}, "parameters.num_cxt: is not an Ollama"),
        ({"from": "x", "parameters": {"stop": 3}}, "parameters.stop: must be a string or a list"),
        ({"from": "x", "parameters": {"top_k": [1]}}, "parameters.top_k: must be a number"),
        ({"from": "x", "parameters": []}, "create.parameters: must be a non-empty mapping"),
        ({"from": "x", "system": ""}, "create.system: must be a non-empty string"),
        ({"modelfile": "missing"}, "create.modelfile: cannot read the Modelfile"),
    ],
)
def test_what_the_config_refuses_names_the_key(create: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(ladder({"create": create}))
    assert str(err.value).startswith("test.yaml: fleets.a.ladder[1].create")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("modelfile", "create", "message"),
    [
        ("SYSTEM hi\n", {}, "create.from: is required: the Modelfile has no FROM and"),
        (MODELFILE, {"from": "phi3:mini"}, "create.from: is phi3:mini but the Modelfile says "),
        (MODELFILE, {"system": "Hello"}, "create.system: is set in the Modelfile too: keep one"),
        (MODELFILE, {"parameters": {"seed": 1}}, "create.parameters: is set in the Modelfile too"),
        ("FROM x\nADAPTER ./a.gguf\n", {}, "Modelfile: line 2: ADAPTER needs the adapter"),
        ("FROM ./w.gguf\n", {}, "FROM ./w.gguf names weights on disk"),
        ("FROM x\nPARAMETER num_cxt 1\n", {}, "create.modelfile.num_cxt: is not an Ollama"),
    ],
)
def test_a_modelfile_that_cannot_be_sent_is_refused(
    tmp_path: Path, modelfile: str, create: dict[str, Any], message: str
) -> None:
    (tmp_path / "Modelfile").write_text(modelfile)
    data = ladder({"create": {"modelfile": str(tmp_path / "Modelfile"), **create}})
    with pytest.raises(ConfigError) as err:
        parse(data)
    assert message in str(err.value)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("MODEL_FLEET_CONFIG", "MODEL_FLEET_STATE_FILE", "MODEL_FLEET_URL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "Modelfile.brief").write_text(MODELFILE.replace("llama3.2:3b", "qwen2.5:0.5b"))
    (tmp_path / "app.env").write_text("OLLAMA_MODEL=llama3.2:3b\n")
    return tmp_path


def write_config(workdir: Path, url: str, create: dict[str, Any]) -> None:
    fleet = {
        "server": {"kind": "ollama", "url": url},
        "containers": {"use_labels": False},
        "app_config": [{"path": str(workdir / "app.env"), "format": "env"}],
        "ladder": [
            {"name": "llama3.2:3b", "size_mb": 2048},
            {"name": "acme-brief:0.5b-ctx2k", "size_mb": 450, "create": create},
        ],
    }
    (workdir / "model-fleet.yaml").write_text(yaml.safe_dump({"fleets": {"a": fleet}}))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_shows_the_request_and_refuses_a_broken_rung(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(workdir, "http://127.0.0.1:1", {"modelfile": "Modelfile.brief"})
    code, out, _ = run(capsys, "check-config")
    assert code == ExitCode.OK
    assert json.loads(out)["fleets"]["a"]["ladder"][1]["create"] == {
        "from": "qwen2.5:0.5b",
        "parameters": {"num_ctx": 2048, "stop": ["<|eot_id|>"]},
        "system": "You answer in one sentence.",
        "modelfile": "Modelfile.brief",
    }
    write_config(workdir, "http://127.0.0.1:1", {"modelfile": "Modelfile.gone"})
    code, _, err = run(capsys, "check-config")
    assert code == ExitCode.USAGE
    assert "fleets.a.ladder[1].create.modelfile: cannot read the Modelfile" in err


def test_a_switch_creates_the_rung_and_the_app_gets_it(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOllama({"llama3.2:3b": 2048 << 20}, registry={"qwen2.5:0.5b": 397 << 20}) as fake:
        write_config(workdir, fake.url, {"modelfile": "Modelfile.brief"})
        code, out, _ = run(capsys, "downgrade", "--dry-run")
        assert code == ExitCode.OK, out
        assert (
            "would create acme-brief:0.5b-ctx2k from qwen2.5:0.5b (pulling qwen2.5:0.5b first)"
            in out
        )
        assert fake.calls_to("/api/create") == []
        code, out, _ = run(capsys, "downgrade")
        assert code == ExitCode.OK, out
        assert [c.body["model"] for c in fake.calls_to("/api/pull")] == ["qwen2.5:0.5b"]
        assert fake.calls_to("/api/create")[0].body["from"] == "qwen2.5:0.5b"
        assert "acme-brief:0.5b-ctx2k:latest" not in fake.models
        assert fake.models["acme-brief:0.5b-ctx2k"] == 397 << 20
        assert (workdir / "app.env").read_text() == "OLLAMA_MODEL=acme-brief:0.5b-ctx2k\n"


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama({"llama3.2:3b": 2048 << 20}, registry={"qwen2.5:0.5b": 397 << 20}) as f:
        yield f


def remediator(workdir: Path, on_step: Callable[[str], None] | None = None) -> Remediator:
    config = load_config(workdir / "model-fleet.yaml")

    def actions(fc: FleetConfig) -> FleetActions:
        return fleet_actions(fc, server=OllamaServer(fc.server.url))

    return Remediator(config, StateStore(config), actions, on_step=on_step)


def test_the_journal_plans_and_records_the_create(workdir: Path, fake: FakeOllama) -> None:
    write_config(workdir, fake.url, {"modelfile": "Modelfile.brief"})
    r = remediator(workdir)
    seen: list[Any] = []
    r.on_step = lambda step: seen.append(r.store.read().fleets["a"].journal)
    assert r.request("a", "down", reason="test").switched
    assert seen[0].planned == ["pulled", "created", *PLANNED[1:]]
    assert seen[-1].done[:3] == [
        "pulled qwen2.5:0.5b",
        "created acme-brief:0.5b-ctx2k",
        "found",
    ]


def test_a_switch_that_dies_after_the_create_is_rolled_back(
    workdir: Path, fake: FakeOllama
) -> None:
    write_config(workdir, fake.url, {"modelfile": "Modelfile.brief"})

    def die(step: str) -> None:
        if step == "created":
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        remediator(workdir, die).request("a", "down")
    r = remediator(workdir)
    with r.store.switch_lock("a"):
        r.resolve_open(r.config.fleets["a"])
    state = r.store.read().fleets["a"]
    assert (state.journal, state.current_model) == (None, "llama3.2:3b")
    assert (workdir / "app.env").read_text() == "OLLAMA_MODEL=llama3.2:3b\n"
    assert "acme-brief:0.5b-ctx2k" in fake.models  # left in the store: the next switch uses it
    assert r.request("a", "down").steps[0] == "acme-brief:0.5b-ctx2k already created"
    assert len(fake.calls_to("/api/create")) == 1


@pytest.mark.parametrize(
    ("breakage", "step", "cause"),
    [
        (
            "create_mid_stream",
            "create",
            "create acme-brief:0.5b-ctx2k from qwen2.5:0.5b: Ollama reported: write "
            "/root/.ollama/models/blobs: no space left on device",
        ),
        (
            "create_refused",
            "create",
            "create acme-brief:0.5b-ctx2k from qwen2.5:0.5b: HTTP 500: internal error",
        ),
        (
            "base_pull_refused",
            "pull",
            "base of acme-brief:0.5b-ctx2k: ollama pull of 'qwen2.5:0.5b' failed: HTTP 500: "
            "pull refused",
        ),
    ],
)
def test_a_failed_create_rolls_back_as_a_failed_pull_does(
    workdir: Path, fake: FakeOllama, breakage: str, step: str, cause: str
) -> None:
    write_config(workdir, fake.url, {"modelfile": "Modelfile.brief"})
    if breakage == "create_mid_stream":
        fake.fail_create_mid_stream("write /root/.ollama/models/blobs: no space left on device")
    elif breakage == "create_refused":
        fake.fail("/api/create")
    else:
        fake.refuse_pull()
    r = remediator(workdir)
    outcome = r.request("a", "down")
    assert outcome.failure is not None
    assert (outcome.failure.step, outcome.failure.cause) == (step, cause)
    state = r.store.read().fleets["a"]
    assert (state.journal, state.current_model, state.history) == (None, "llama3.2:3b", [])
    assert state.last_failure is not None and state.last_failure["step"] == step
    assert (workdir / "app.env").read_text() == "OLLAMA_MODEL=llama3.2:3b\n"
    assert fake.calls_to("/api/generate") == []  # nothing unloaded: nothing to undo
    assert "acme-brief:0.5b-ctx2k" not in fake.models
