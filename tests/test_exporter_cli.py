"""``model-fleet-exporter``: scan, configuration (file and flags) and the HTTP service."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from exporter.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from exporter.config import (
    DEFAULT_FLEET,
    ConfigError,
    load_config,
    parse_config,
)
from tests.support.exporter_env import (
    DATA,
    REPO,
    ExporterProcess,
    http_get,
    sample,
)

LOAD_OOM = DATA / "ollama_load_oom.log"


def write_config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "model-fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_scan_prints_the_errors_and_lines_of_each_kind(capsys: pytest.CaptureFixture[str]) -> None:
    # Two failed loads, printing two and three matching lines: 2 errors (incidents), 5 lines.
    assert main(["scan", str(LOAD_OOM)]) == EXIT_OK
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        ["kind", "incidents", "lines"],
        ["oom", "2", "5"],
        ["system_memory", "0", "0"],
        ["vram_recovery_timeout", "0", "0"],
        ["log", "lines", "24"],
        ["consecutive", "(after", "the", "last", "served", "request):", "2"],
        ["served", "requests", "that", "ended", "a", "run", "of", "errors:", "0"],
        ["incident", "window:", "2", "s"],
    ]


def test_scan_reads_standard_input_and_prints_json() -> None:
    data = (DATA / "ollama_vram_timeout.log").read_bytes() + LOAD_OOM.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "scan", "-", "--json"],
        input=data,
        capture_output=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout) == {
        "lines": 33,
        "incident_window_seconds": 2.0,
        "incidents": {"oom": 2, "system_memory": 0, "vram_recovery_timeout": 2},
        "error_lines": {"oom": 5, "system_memory": 0, "vram_recovery_timeout": 4},
        "consecutive": 4,
        "successes": 0,
    }


def test_scan_tries_the_patterns_of_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path, {"exporter": {"patterns": {"ggml_assert": [r"GGML_ASSERT\(.*\) failed"]}}}
    )
    assert main(["scan", str(DATA / "ollama_vram_timeout.log"), "--config", str(config)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    counts = {row[0]: row[1:] for row in rows[1:5]}
    # the assertion's two lines are one failed load
    assert counts == {
        "oom": ["0", "0"],
        "system_memory": ["0", "0"],
        "vram_recovery_timeout": ["2", "4"],
        "ggml_assert": ["1", "2"],
    }


def test_scan_takes_the_incident_window_of_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, {"exporter": {"incident_window_seconds": 0}})
    assert main(["scan", str(LOAD_OOM), "--config", str(config)]) == EXIT_OK
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[1] == ["oom", "5", "5"] and rows[-1] == ["incident", "window:", "0", "s"]


def test_scan_of_a_missing_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tmp_path / "nope.log")]) == EXIT_FAILED
    assert "nope.log" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("exporter_section", "where"),
    [
        ({"patterns": {"oom": ["cudaMalloc failed(: out of memory"]}}, "exporter.patterns.oom[0]"),
        ({"patterns": {"Bad Kind": ["x"]}}, "exporter.patterns.Bad Kind"),
        ({"bind": "localhost"}, "exporter.bind"),
        ({"labels": ["model-fleet.role"]}, "exporter.labels"),
        ({"nvml": "yes"}, "exporter.nvml"),
        ({"incident_window_seconds": -1}, "exporter.incident_window_seconds"),
        ({"incident_window_seconds": "2s"}, "exporter.incident_window_seconds"),
        ({"colour": "blue"}, "exporter: unknown key(s) colour"),
        ({"patterns": {}, "default_patterns": False}, "exporter.patterns"),
    ],
)
def test_config_errors_name_the_file_and_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exporter_section: object, where: str
) -> None:
    config = write_config(tmp_path, {"exporter": exporter_section})
    assert main(["scan", str(LOAD_OOM), "--config", str(config)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(config) in err and where in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bind", "9842"], "--bind: expected HOST:PORT"),
        (["--label", "novalue"], "--label: expected KEY=VALUE"),
        (["--container", "=f1"], "--container: expected NAME[=FLEET]"),
    ],
)
def test_bad_flags_are_usage_errors(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "serve", *flags, "--no-docker", "--no-nvml"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert result.returncode == EXIT_USAGE
    assert message in result.stderr


def test_the_exporter_reads_what_it_needs_from_the_fleets(tmp_path: Path) -> None:
    config = parse_config(
        {
            "state_file": "/var/lib/model-fleet/state.json",  # the remediator's business
            "fleets": {
                "big": {"gpu": 0, "containers": {"ollama": ["ollama-big"], "use_labels": False}},
                "small": {"containers": {"server": "ollama-small", "use_labels": False}},
            },
            "exporter": {
                "containers": {"legacy-ollama": "big"},
                "patterns": {"oom": ["ROCm error: out of memory"]},
            },
        },
        "test.yaml",
    )
    s = config.selection
    assert dict(s.names) == {"ollama-big": "big", "ollama-small": "small", "legacy-ollama": "big"}
    assert s.use_labels is False  # every fleet turned labels off
    assert config.patterns["oom"][-1] == "ROCm error: out of memory"  # added to the defaults
    assert "cudaMalloc failed: out of memory" in config.patterns["oom"]
    assert s.fleet_of("ollama-small", {}) == "small"
    assert s.fleet_of("other", {"model-fleet.role": "ollama"}) is None


def test_labels_select_containers_and_name_their_fleet() -> None:
    s = parse_config({}).selection
    assert s.fleet_of("x", {"model-fleet.role": "ollama", "model-fleet.fleet": "f2"}) == "f2"
    assert s.fleet_of("x", {"model-fleet.role": "ollama"}) == DEFAULT_FLEET
    assert s.fleet_of("x", {"model-fleet.role": "app"}) is None


def test_the_shipped_compose_config_is_valid_for_the_exporter() -> None:
    config = load_config(REPO / "config" / "model-fleet.yaml")
    assert config.selection.use_labels and config.nvml and config.docker


def test_a_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_serve_answers_healthz_and_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    with ExporterProcess(["--no-docker", "--no-nvml"], log_path=tmp_path / "log") as exporter:
        exporter.wait_ready()
        status, body = http_get(exporter.url + "/healthz")
        assert status == 200
        assert json.loads(body) == {
            "status": "ok",
            "nvml_up": False,
            "docker_up": False,
            "journal_up": False,
            "containers": [],
        }
        exporter.metrics()
        m = exporter.metrics()
        assert sample(m, "model_fleet_exporter_scrape_duration_seconds_count") == 1
        assert sample(m, "model_fleet_exporter_docker_up") == 0
        assert http_get(exporter.url + "/nope")[0] == 404
        started = time.monotonic()
        assert exporter.stop() == EXIT_OK
        assert time.monotonic() - started < 3
        assert "stopped" in exporter.log()


def test_serve_fails_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "exporter.cli", "serve", "--bind", f"127.0.0.1:{port}"]
        result = subprocess.run(
            [*cmd, "--no-docker", "--no-nvml"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=30,
            check=False,
        )
    assert result.returncode == EXIT_FAILED
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
