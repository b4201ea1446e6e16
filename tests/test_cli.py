"""The ``model-fleet`` command: subcommands, the original flags, messages and exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from remediator.cli import main as cli
from remediator.cli import tables
from remediator.config import parse_config
from remediator.report.queries import ExitCode
from remediator.store.locks import file_lock
from remediator.store.state import StateStore
from simulator.fake_ollama import FakeOllama


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


def fleet_settings(ollama: FakeOllama, workdir: Path) -> dict[str, object]:
    """A fleet that switches for real without containers: Ollama stand-in, one config file."""
    return {
        "server": {"kind": "ollama", "url": ollama.url},
        "containers": {"use_labels": False},
        "app_config": [{"path": str(workdir / "app.env"), "format": "env"}],
    }


def write_config(workdir: Path, ollama: FakeOllama, *fleets: str, **top: object) -> None:
    settings = fleet_settings(ollama, workdir)
    data = {**top, "fleets": {name: settings for name in fleets}}
    (workdir / "model-fleet.yaml").write_text(yaml.safe_dump(data))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ollama: FakeOllama) -> Path:
    """A working directory whose model-fleet.yaml has the default fleet, as the seed had."""
    monkeypatch.chdir(tmp_path)
    for var in ("MODEL_FLEET_CONFIG", "MODEL_FLEET_STATE_FILE", "MODEL_FLEET_URL"):
        monkeypatch.delenv(var, raising=False)
    write_config(tmp_path, ollama, "default")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_prints_the_original_shape(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "status")
    assert code == ExitCode.OK
    status = json.loads(out)
    assert status["current_model"] == {
        "name": "llama3.2:3b",
        "size_mb": 2048,
        "description": "Large model - 3B parameters",
        "index": 0,
    }
    assert status["vram_error_count"] == 0
    assert status["max_vram_errors"] == 3
    assert status["available_models"] == [
        "llama3.2:3b",
        "phi3:mini",
        "tinyllama:1.1b",
        "qwen2.5:0.5b",
    ]
    assert status["fleet_size"] == 4
    assert status["can_downgrade"] is True


def test_downgrade_walks_the_ladder_then_stops_at_the_smallest(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = []
    for _ in range(3):
        code, out, _ = run(capsys, "downgrade", "--reason", "testing")
        assert code == ExitCode.OK
        seen.append(json.loads(out)["to"])
    assert seen == ["phi3:mini", "tinyllama:1.1b", "qwen2.5:0.5b"]
    code, _, err = run(capsys, "downgrade")
    assert code == ExitCode.NOTHING_TO_DO
    assert "qwen2.5:0.5b is the smallest model" in err
    code, out, _ = run(capsys, "status")
    assert json.loads(out)["can_downgrade"] is False
    code, out, _ = run(capsys, "history")
    history = json.loads(out)
    assert [h["to"] for h in history] == seen
    assert [h["reason"] for h in history] == ["testing"] * 3
    # The CLI performed the switch itself: the application's config names the model.
    assert (workdir / "app.env").read_text() == "OLLAMA_MODEL=qwen2.5:0.5b\n"
    assert all(h["trigger"] == "manual" and h["direction"] == "down" for h in history)


def test_upgrade_reset_and_the_ends_of_the_ladder(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "upgrade")
    assert code == ExitCode.NOTHING_TO_DO and "largest model" in err
    code, _, err = run(capsys, "reset")
    assert code == ExitCode.NOTHING_TO_DO and "already at llama3.2:3b" in err
    run(capsys, "downgrade")
    run(capsys, "downgrade")
    code, out, _ = run(capsys, "upgrade")
    assert (code, json.loads(out)["to"]) == (ExitCode.OK, "phi3:mini")
    code, out, _ = run(capsys, "reset", "--reason", "new GPU")
    assert (code, json.loads(out)["to"]) == (ExitCode.OK, "llama3.2:3b")
    code, out, _ = run(capsys, "history", "--limit", "1")
    assert json.loads(out)[0]["direction"] == "reset"


def test_dry_run_changes_nothing(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "downgrade", "--dry-run")
    result = json.loads(out)
    assert code == ExitCode.OK
    assert result["dry_run"] is True and result["switched"] is False
    assert not (workdir / "model_fleet_state.json").exists()
    _, out, _ = run(capsys, "status")
    assert json.loads(out)["current_model"]["index"] == 0


def test_several_fleets_and_unknown_fleet(
    workdir: Path, ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(workdir, ollama, "gpu0", "gpu1")
    code, out, _ = run(capsys, "status")
    assert code == ExitCode.OK
    assert set(json.loads(out)["fleets"]) == {"gpu0", "gpu1"}
    code, out, _ = run(capsys, "status", "--fleet", "gpu1")
    assert json.loads(out)["fleet"] == "gpu1"
    code, _, err = run(capsys, "downgrade")
    assert code == ExitCode.UNKNOWN_FLEET and "several fleets" in err
    code, _, err = run(capsys, "downgrade", "--fleet", "gpu9")
    assert code == ExitCode.UNKNOWN_FLEET and "unknown fleet 'gpu9'" in err
    code, _, err = run(capsys, "status", "--fleet", "gpu9")
    assert code == ExitCode.UNKNOWN_FLEET
    code, out, _ = run(capsys, "downgrade", "--fleet", "gpu1")
    assert code == ExitCode.OK
    _, out, _ = run(capsys, "status")
    fleets = json.loads(out)["fleets"]
    assert (fleets["gpu0"]["current_model"]["index"], fleets["gpu1"]["current_model"]["index"]) == (
        0,
        1,
    )


def test_invalid_config_exits_2_with_file_and_key(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "bad.yaml").write_text("fleets:\n  a:\n    policy: biggest\n")
    code, _, err = run(capsys, "--config", "bad.yaml", "status")
    assert code == ExitCode.USAGE
    assert "bad.yaml: fleets.a.policy: must be one of" in err
    code, _, err = run(capsys, "check-config", "--config", "bad.yaml")
    assert code == ExitCode.USAGE


def test_check_config_prints_effective_config_and_warnings(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "check-config")
    assert code == ExitCode.OK
    assert json.loads(out)["fleets"]["default"]["ladder"][1]["name"] == "phi3:mini"
    assert "phi3:mini (2200 MB) is larger than llama3.2:3b (2048 MB)" in err


def test_check_config_names_the_old_keys_and_refuses_old_and_new_together(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "old.yaml").write_text(
        "fleets:\n  a:\n    ollama_url: http://10.0.0.2:11434\n"
        "    containers: {restart_ollama: false}\n"
    )
    code, out, err = run(capsys, "check-config", "--config", "old.yaml")
    assert code == ExitCode.OK
    assert json.loads(out)["fleets"]["a"]["server"] == {
        "kind": "ollama",
        "url": "http://10.0.0.2:11434",
        "runtime": "docker",
        "unit": None,
    }
    assert "warning: fleets.a.ollama_url is deprecated: use fleets.a.server.url" in err
    assert (
        "warning: fleets.a.containers.restart_ollama is deprecated: use "
        "fleets.a.containers.restart_server"
    ) in err
    (workdir / "both.yaml").write_text(
        "fleets:\n  a:\n    ollama_url: http://a:1\n    server: {url: 'http://b:1'}\n"
    )
    code, _, err = run(capsys, "check-config", "--config", "both.yaml")
    assert code == ExitCode.USAGE
    assert "both.yaml: fleets.a.ollama_url: is the deprecated name of fleets.a.server.url" in err


def test_lock_not_obtained_in_time(
    workdir: Path, ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(workdir, ollama, "default", lock_timeout_seconds=0.2)
    store = StateStore(parse_config({"lock_timeout_seconds": 0.2}))
    with file_lock(store.lock_path, 1.0):
        code, _, err = run(capsys, "downgrade", "--reason", "while locked")
        assert code == ExitCode.LOCKED
        assert "could not lock the state" in err
        # Reads take no lock (the file is replaced atomically): status answers meanwhile.
        code, out, _ = run(capsys, "status")
    assert code == ExitCode.OK
    assert json.loads(out)["current_model"]["name"] == "llama3.2:3b"


def test_the_installed_command_and_the_original_flags(workdir: Path) -> None:
    exe = Path(sys.executable).with_name("model-fleet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")}

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
        )

    r = call("--downgrade", "--reason", "legacy flag")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["to"] == "phi3:mini"
    r = call("--status")
    assert json.loads(r.stdout)["current_model"]["name"] == "phi3:mini"
    r = call("--reset")
    assert r.returncode == 0 and json.loads(r.stdout)["to"] == "llama3.2:3b"
    state = json.loads((workdir / "model_fleet_state.json").read_text())
    assert state["fleets"]["default"]["history"][0]["reason"] == "legacy flag"
    r = call()
    assert r.returncode == ExitCode.USAGE


def _on_a_terminal(workdir: Path, *args: str) -> str:
    """What ``model-fleet args`` prints when its standard output is a terminal (a pty)."""
    exe = Path(sys.executable).with_name("model-fleet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")}
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [str(exe), *args],
            cwd=workdir,
            env=env,
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
        os.close(follower)
        assert done.returncode == 0, done.stderr
        out = b""
        with contextlib.suppress(OSError):  # EIO: the pty's other end is closed and drained
            while chunk := os.read(leader, 65536):
                out += chunk
    finally:
        os.close(leader)
    return out.decode().replace("\r\n", "\n")


def test_status_and_history_are_tables_on_a_terminal_and_json_when_piped(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "downgrade", "--reason", "tables")
    assert code == 0
    table = _on_a_terminal(workdir, "status")
    header, row = table.splitlines()[:2]
    assert header.split() == [
        "FLEET",
        "MODEL",
        "RUNG",
        "ERRORS",
        "FREE",
        "VRAM",
        "LAST",
        "SWITCH",
        "WAITING",
    ]
    assert row.split()[:4] == ["default", "phi3:mini", "2/4", "0/3"] and "(phi3:mini)" in row
    history = _on_a_terminal(workdir, "history").splitlines()
    assert history[0].split()[:3] == ["TIME", "(UTC)", "FLEET"]
    assert "llama3.2:3b -> phi3:mini" in history[1] and "tables" in history[1]
    # JSON with --json, and the original --status always (scripts read it).
    for args in (("status", "--json"), ("--status",)):
        assert json.loads(_on_a_terminal(workdir, *args))["current_model"]["name"] == "phi3:mini"
    code, out, _ = run(capsys, "history")  # captured: not a terminal
    assert json.loads(out)[0]["to"] == "phi3:mini"


def test_status_table_shows_what_waits() -> None:
    status = {
        "fleet": "gpu0",
        "current_model": {"name": "tinyllama:1.1b", "index": 2},
        "fleet_size": 4,
        "vram_error_count": 2,
        "max_vram_errors": 3,
        "free_vram_bytes": 512 * 1024 * 1024,
        "last_switch": {"time": 1000.0, "to": "tinyllama:1.1b"},
        "deferred_alerts": [{"reason": "cooldown", "acts_at": "2026-12-05T10:00:00Z"}],
        "switch_in_progress": {"to": "qwen2.5:0.5b"},
        "notices": ["the state file was recovered"],
    }
    text = tables.status_table(status, now=1000.0 + 7200)
    row = text.splitlines()[1]
    assert "tinyllama:1.1b" in row and "3/4" in row and "2/3" in row and "512 MiB" in row
    assert "2 h ago (tinyllama:1.1b)" in row
    assert "switching to qwen2.5:0.5b; 1 deferred (cooldown, acts 2026-12-05T10:00:00Z)" in row
    assert text.splitlines()[-1] == "notice: the state file was recovered"
    several = tables.status_table({"fleets": {"a": status, "b": {**status, "fleet": "b"}}}, now=0)
    assert [line.split()[0] for line in several.splitlines()] == [
        "FLEET",
        "a",
        "b",
        *["notice:"] * 2,
    ]
    assert tables.history_table([]) == "no switches yet"
