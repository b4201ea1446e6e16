"""Which model-fleet runs (``--version``, ``model_fleet_build_info``) and its logs as JSON
(``--log-format json``, ``MODEL_FLEET_LOG_FORMAT``), gunicorn's access log included."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fleet_contract import logformat, version
from fleet_contract.metrics import BUILD_INFO
from simulator.local_http import free_port

REPO = Path(__file__).resolve().parents[1]
PYPROJECT_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
BIN = Path(sys.executable).parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_both_commands_print_the_pyproject_version_and_the_revision() -> None:
    env = {**os.environ, "MODEL_FLEET_REVISION": COMMIT}
    for command in ("model-fleet", "model-fleet-exporter"):
        done = subprocess.run(
            [str(BIN / command), "--version"], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{command} {PYPROJECT_VERSION} (revision {COMMIT[:12]})\n"


def test_the_revision_is_read_from_a_checkout_without_git(tmp_path: Path) -> None:
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(COMMIT + "\n")
    assert version.revision(git.parent) == COMMIT[:12]
    # A ref only in packed-refs (after git gc), and a detached HEAD.
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{COMMIT} refs/heads/main\n")
    assert version.revision(git.parent) == COMMIT[:12]
    (git / "HEAD").write_text("fedcba9876543210fedcba9876543210fedcba98\n")
    assert version.revision(git.parent) == "fedcba987654"
    # A worktree: .git is a file naming its git dir, whose refs live in the common dir.
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    wt_git = git / "worktrees" / "wt"
    wt_git.mkdir(parents=True)
    (wt_git / "HEAD").write_text("ref: refs/heads/main\n")
    (wt_git / "commondir").write_text("../..\n")
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {wt_git}\n")
    assert version.revision(worktree) == COMMIT[:12]
    assert version.revision(tmp_path / "no-checkout") == "unknown"


def test_both_services_export_build_info() -> None:
    from exporter.config import parse_config as exporter_config
    from exporter.main import build_exporter
    from tests.support.list_source import ListLogSource

    exporter = build_exporter(
        exporter_config({"exporter": {"nvml": False}}), source=ListLogSource()
    )
    exposed = _build_info(_render(exporter.registry))
    assert exposed == {"version": PYPROJECT_VERSION, "revision": version.revision()}


def test_the_remediator_exports_build_info(tmp_path: Path) -> None:
    from remediator.app.service import create_app
    from remediator.config import parse_config

    config = parse_config({"state_file": str(tmp_path / "state.json")}, "test")
    app = create_app(config, token="t")
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert _build_info(text) == {"version": PYPROJECT_VERSION, "revision": version.revision()}


def test_json_lines_carry_the_records_fields() -> None:
    formatter = logformat.JsonFormatter()
    record = logging.LogRecord(
        "remediator.intake", logging.INFO, "x.py", 1, "fleet %s: %s", ("a", "b"), None
    )
    record.__dict__.update({"fleet": "a", "alert_key": "k@t", "reason": "cooldown"})
    line = json.loads(formatter.format(record))
    assert line["level"] == "info" and line["logger"] == "remediator.intake"
    assert line["message"] == "fleet a: b"
    assert (line["fleet"], line["alert_key"], line["reason"]) == ("a", "k@t", "cooldown")
    assert line["time"].endswith("Z") and "T" in line["time"]
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, "x.py", 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(formatter.format(failed))["exception"]


def test_the_format_is_chosen_by_flag_else_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_FLEET_LOG_FORMAT", raising=False)
    assert logformat.chosen() == "text"
    monkeypatch.setenv("MODEL_FLEET_LOG_FORMAT", "json")
    assert logformat.chosen() == "json" and logformat.chosen("text") == "text"
    monkeypatch.setenv("MODEL_FLEET_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="MODEL_FLEET_LOG_FORMAT='xml'"):
        logformat.chosen()


def test_the_exporter_logs_json(tmp_path: Path) -> None:
    bad = subprocess.run(
        [str(BIN / "model-fleet-exporter"), "scan", "-"],
        input="",
        capture_output=True,
        text=True,
        env={**os.environ, "MODEL_FLEET_LOG_FORMAT": "xml"},
        timeout=60,
    )
    assert bad.returncode == 2 and "expected one of text, json" in bad.stderr
    port = free_port()
    argv = [str(BIN / "model-fleet-exporter"), "--log-format", "json", "serve", "--no-nvml"]
    argv += ["--no-docker", "--bind", f"127.0.0.1:{port}"]
    out = tmp_path / "exporter.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_ok(f"http://127.0.0.1:{port}/healthz", out)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = [json.loads(line) for line in out.read_text().splitlines()]  # every line is JSON
    assert any(line["message"].startswith("serving http://") for line in lines), lines


def test_serve_logs_json_gunicorn_and_its_access_log_included(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")}
    env["MODEL_FLEET_STATE_FILE"] = str(tmp_path / "state.json")
    argv = [str(BIN / "model-fleet"), "--log-format", "json", "serve", "--no-auth"]
    argv += ["--bind", f"127.0.0.1:{port}", "--workers", "1"]
    out = tmp_path / "serve.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert (
                    requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
                )
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, out.read_text()
                time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    lines = [json.loads(line) for line in out.read_text().splitlines()]  # every line is JSON
    loggers = {line["logger"] for line in lines}
    assert {"remediator.serve", "gunicorn.error", "gunicorn.access"} <= loggers
    [access] = [line for line in lines if line["logger"] == "gunicorn.access"]
    assert (access["status"], access["request"]) == (200, "GET /healthz HTTP/1.1")
    assert isinstance(access["duration_ms"], int)


def _wait_ok(url: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert requests.get(url, timeout=2).status_code == 200
            return
        except requests.ConnectionError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)


def _render(registry: object) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()  # type: ignore[arg-type]


def _build_info(text: str) -> dict[str, str]:
    [family] = [f for f in text_string_to_metric_families(text) if f.name == BUILD_INFO]
    [sample] = family.samples
    assert sample.value == 1
    return {k: v for k, v in sample.labels.items() if k != "host"}
