"""``model-fleet watch`` (and the original ``--monitor``): frames from a real Prometheus that
scraped live figures and evaluated a rule, from the state file or a running remediator."""

from __future__ import annotations

import json
import os
import pty
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from remediator.adapters.prometheus import PrometheusAPI, PrometheusError
from remediator.cli import main as cli
from remediator.cli.watch import Live, Snapshot, ago, render
from remediator.report.queries import ExitCode
from simulator.fake_ollama import FakeOllama
from simulator.prom_env import (
    GIB,
    MetricsEndpoint,
    Prometheus,
    exposition,
    free_port,
    start_prometheus,
    wait_for,
)
from simulator.services import start_remediator

REPO = Path(__file__).resolve().parents[1]
TOKEN = "watch-test-token"
# The host of the fleets below (model-fleet.yaml's host), and another one the same Prometheus
# scrapes (docs/multi-host.md).
HOST = "gpu-watch"
OTHER_HOST = "gpu-elsewhere"
RULES = {
    "groups": [
        {
            "name": "watch-test",
            "rules": [
                {
                    "alert": "WatchTestVRAMErrors",
                    "expr": "max by (fleet) (model_fleet_vram_errors_since_start) >= 2",
                    "labels": {"severity": "warning"},
                },
                # Like ExporterDown: no fleet label, shown apart from the fleets.
                {"alert": "WatchTestNoFleet", "expr": "vector(1)", "labels": {"severity": "page"}},
            ],
        }
    ]
}


def live_figures(scrape: int) -> str:
    """Fleet "default" on GPU 0 (2 errors since the start in its worst container, 1 in a row),
    fleet "other" on GPU 1 (5 since the start, 4 in a row), on host HOST; and OTHER_HOST's GPU
    0, more free: a local watch shows only its own host's."""
    samples: list[tuple[str, Mapping[str, str], float]] = []
    for host, gpu, used, total in (
        (HOST, "0", 6 * GIB, 16 * GIB),
        (HOST, "1", 1 * GIB, 24 * GIB),
        (OTHER_HOST, "0", 1 * GIB, 16 * GIB),
    ):
        labels = {"host": host, "gpu": gpu, "uuid": f"GPU-{host}-{gpu}", "name": "Fake T4"}
        samples.append(("model_fleet_gpu_memory_used_bytes", labels, used))
        samples.append(("model_fleet_gpu_memory_free_bytes", labels, total - used))
    for host, fleet, container, errors, in_a_row in (
        (HOST, "default", "ollama", 2, 0),
        (HOST, "default", "ollama-b", 1, 1),
        (HOST, "other", "ollama", 5, 4),
        (OTHER_HOST, "default", "ollama", 1, 0),
    ):
        labels = {"host": host, "fleet": fleet, "container": container}
        samples.append(("model_fleet_vram_errors_since_start", labels, errors))
        samples.append(("model_fleet_vram_errors_consecutive", labels, in_a_row))
    return exposition(samples)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    rules = tmp_path_factory.mktemp("rules") / "watch.rules.yml"
    rules.write_text(yaml.safe_dump(RULES))
    with MetricsEndpoint(live_figures) as exporter:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "exporter", "static_configs": [{"targets": [exporter.target]}]}
            ],
        }
        with start_prometheus(config, [rules]) as prom:
            wait_for(
                lambda: len(prom.query('ALERTS{alertstate="firing"}')) == 3,
                45,
                "the test rules to fire",
            )
            yield prom


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ollama: FakeOllama) -> Path:
    """Two fleets, "default" on GPU 0 and "other" on GPU 1, switching without containers."""
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("MODEL_FLEET_"):
            monkeypatch.delenv(var)
    fleets = {
        name: {
            "gpu": gpu,
            "server": {"url": ollama.url},
            "containers": {"use_labels": False},
            "app_config": [{"path": str(tmp_path / f"{name}.env"), "format": "env"}],
            "counting": counting,
        }
        # "default" counts as shipped (consecutive), "other" since the model server started.
        for name, gpu, counting in (("default", 0, "consecutive"), ("other", 1, "since_start"))
    }
    (tmp_path / "model-fleet.yaml").write_text(yaml.safe_dump({"host": HOST, "fleets": fleets}))
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def block(frame: str, fleet: str) -> str:
    """The lines of one fleet in a frame, from its heading to the next blank line."""
    start = frame.index(f"\nfleet {fleet}")
    end = frame.find("\n\n", start + 1)
    return frame[start : end if end >= 0 else None]


def command_env(**extra: str) -> dict[str, str]:
    """The environment for ``python -m remediator.cli``: this checkout first, no MODEL_FLEET_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


# --- against a real Prometheus ---------------------------------------------------------------


def test_local_frame_shows_live_errors_vram_alerts_and_the_last_switch(
    workdir: Path, prometheus: Prometheus, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "downgrade", "--fleet", "default", "--reason", "watch test")
    assert code == ExitCode.OK
    code, out, err = run(capsys, "watch", "--once", "--prometheus", prometheus.url)
    assert code == ExitCode.OK, err
    assert "\x1b" not in out  # not a terminal: plain text
    assert "status: state file" in out and f"Prometheus at {prometheus.url}" in out
    default = block(out, "default")
    assert "phi3:mini (rung 2 of 4, 2200 MB)" in default
    # The worst container's count, live, in the fleet's counting (the one its downgrade alert
    # compares: 1 in a row, not the 2 since the start); the status JSON's vram_error_count
    # still says 0.
    in_a_row = "1 in a row since the model server last served a request (a downgrade at 3)"
    assert f"VRAM errors  {in_a_row}" in default
    assert "GPU 0: 6.0 GiB used, 10.0 GiB free" in default
    assert "llama3.2:3b -> phi3:mini (down, manual) at " in default
    assert "s ago: watch test" in default
    assert "alerts       WatchTestVRAMErrors (severity=warning)" in default
    other = block(out, "other")
    assert "llama3.2:3b (rung 1 of 4" in other and "last switch  none yet" in other
    assert "VRAM errors  5 since the model server started (a downgrade at 3)" in other
    assert "GPU 1: 1.0 GiB used, 23.0 GiB free" in other
    assert "alerts without a fleet\n  WatchTestNoFleet (severity=page)" in out
    _, status, _ = run(capsys, "status", "--fleet", "default")
    assert json.loads(status)["vram_error_count"] == 0


def test_one_fleet_only_and_an_unknown_fleet(
    workdir: Path, prometheus: Prometheus, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "watch", "--once", "--fleet", "other", "--prometheus", prometheus.url
    )
    assert code == ExitCode.OK
    assert "fleet other" in out and "fleet default" not in out
    assert out.count("WatchTestVRAMErrors") == 1
    code, _, err = run(capsys, "watch", "--once", "--fleet", "nope")
    assert code == ExitCode.UNKNOWN_FLEET and "unknown fleet 'nope'" in err


def test_prometheus_from_the_environment(
    workdir: Path,
    prometheus: Prometheus,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODEL_FLEET_PROMETHEUS_URL", prometheus.url)
    code, out, _ = run(capsys, "watch", "--once")
    assert code == ExitCode.OK
    assert "GPU 0: 6.0 GiB used" in out


def test_remote_frame_through_a_running_remediator(
    tmp_path: Path,
    prometheus: Prometheus,
    ollama: FakeOllama,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in list(os.environ):
        if var.startswith("MODEL_FLEET_"):
            monkeypatch.delenv(var)
    remediator = start_remediator(tmp_path, ollama.url, TOKEN, workers=1)
    try:
        monkeypatch.setenv("MODEL_FLEET_TOKEN", TOKEN)
        code, _, err = run(capsys, "downgrade", "--url", remediator.url, "--reason", "remote")
        assert code == ExitCode.OK, err
        argv = ["watch", "--once", "--url", remediator.url, "--prometheus", prometheus.url]
        code, out, err = run(capsys, *argv)
        assert code == ExitCode.OK, err
        assert f"status: remediator at {remediator.url}" in out
        default = block(out, "default")
        assert "phi3:mini (rung 2 of 4" in default
        assert "(down, manual)" in default and "ago: remote" in default
        assert "VRAM errors  1 in a row" in default and "GPU 0: 6.0 GiB used" in default
        assert "WatchTestVRAMErrors" in default
        code, _, _ = run(capsys, *argv, "--fleet", "nope")
        assert code == ExitCode.UNKNOWN_FLEET
    finally:
        remediator.stop()
    # The remediator is gone: the frame says so, and still shows the live figures.
    code, out, _ = run(capsys, *argv)
    assert code == ExitCode.UNREACHABLE
    assert "!! status unavailable: cannot reach the remediator" in out
    assert "alerts without a fleet" in out


# --- Prometheus missing or wrong ---------------------------------------------------------------


def test_prometheus_unreachable_still_shows_the_status(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, _ = run(capsys, "watch", "--once", "--prometheus", url)
    assert code == ExitCode.OK
    assert f"!! Prometheus unreachable at {url}: " in out
    assert "Connection refused" in out
    assert "llama3.2:3b (rung 1 of 4" in block(out, "default")
    assert "VRAM errors  unknown: no live figures" in out


class FakeQueryAPI:
    """An HTTP server that answers every request with one fixed (status, body)."""

    def __init__(self, status: int, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "says"),
    [
        (200, b"<html>not Prometheus</html>", "not a vector: no JSON"),
        (404, b"404 page not found", "answered HTTP 404: 404 page not found"),
        (400, b'{"status":"error","error":"parse error"}', "answered HTTP 400: parse error"),
        (200, b'{"status":"success","data":{"resultType":"matrix","result":[]}}', "'matrix'"),
        (200, b'{"status":"success","data":{"resultType":"vector","result":[{}]}}', "malformed"),
        (200, b'{"status":"success","data":{"resultType":"vector"}}', "no result list"),
    ],
)
def test_a_bad_answer_is_shown_never_raised(
    workdir: Path, capsys: pytest.CaptureFixture[str], status: int, body: bytes, says: str
) -> None:
    api = FakeQueryAPI(status, body)
    try:
        with pytest.raises(PrometheusError, match=says.replace("(", r"\(").replace(")", r"\)")):
            PrometheusAPI(api.url).query("up")
        code, out, _ = run(capsys, "watch", "--once", "--prometheus", api.url)
    finally:
        api.close()
    assert code == ExitCode.OK
    assert f"!! Prometheus at {api.url} " in out and says in out
    assert "fleet default" in out


# --- the command as a process ------------------------------------------------------------------


def test_the_original_monitor_flag(workdir: Path, prometheus: Prometheus) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "remediator.cli", "--monitor", "--once"],
        cwd=workdir,
        env=command_env(MODEL_FLEET_PROMETHEUS_URL=prometheus.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("model-fleet watch - ")
    assert "VRAM errors  1 in a row" in block(r.stdout, "default")


def _lines(stream: IO[str]) -> queue.Queue[str]:
    found: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            found.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return found


def ctrl_c_reaches_it() -> None:
    """In the child before exec: Ctrl-C as from a terminal. A test run started in the
    background (a non-interactive shell's ``cmd &``) passes SIGINT on ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_the_loop_refreshes_and_ctrl_c_exits_0(workdir: Path, prometheus: Prometheus) -> None:
    argv = ["watch", "--interval", "0.2", "--prometheus", prometheus.url]
    proc = subprocess.Popen(
        [sys.executable, "-m", "remediator.cli", *argv],
        cwd=workdir,
        env=command_env(),
        preexec_fn=ctrl_c_reaches_it,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines, frames = _lines(proc.stdout), 0
        deadline = time.monotonic() + 30
        while frames < 2:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            frames += line.startswith("model-fleet watch - ")
        assert "every 0.2s, Ctrl-C to quit" in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err and "KeyboardInterrupt" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_on_a_terminal_frames_redraw_in_place_and_the_cursor_comes_back(workdir: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "remediator.cli", "watch", "--interval", "0.2", "--prometheus", url],
        cwd=workdir,
        env=command_env(),
        preexec_fn=ctrl_c_reaches_it,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    seen = b""

    def read_for(seconds: float, until: bytes | None = None) -> None:
        nonlocal seen
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (until is None or seen.count(until) < 2):
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    return

    try:
        read_for(30, until=b"model-fleet watch - ")
        assert seen.count(b"model-fleet watch - ") >= 2
        assert seen.startswith(b"\x1b[?25l")  # cursor hidden while drawing
        assert b"\x1b[H" in seen and b"\x1b[K" in seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        read_for(1)
        assert seen.endswith(b"\x1b[?25h")  # and shown again
        assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)


# --- the pure parts ----------------------------------------------------------------------------


def test_render_is_a_pure_function_of_the_snapshot_and_now() -> None:
    fleet = {
        "fleet": "gpu0",
        "gpu": "0",
        "current_model": {"name": "tinyllama:1.1b", "size_mb": 637, "index": 2},
        "fleet_size": 4,
        "max_vram_errors": 3,
        "dry_run": True,
        "last_switch": {
            "time": 1000.0,
            "from": "phi3:mini",
            "to": "tinyllama:1.1b",
            "direction": "down",
            "trigger": "alert",
            "reason": "",
        },
        "last_failure": {"time": 1200.0, "step": "pull", "message": "pull failed: boom"},
    }
    live = Live(
        errors={},
        used={"0": 2 * GIB},
        free={},
        alerts=[{"alertname": "A", "alertstate": "firing", "fleet": "gpu9"}],
    )
    snap = Snapshot(
        taken_at=1303.0,
        status_from="state file s.json",
        prometheus_url="http://p:9090",
        fleets=[fleet, {"fleet": "broken"}],
        notices=[{"message": "state file was corrupt"}],
        live=live,
    )
    frame = render(snap, now=1303.0)
    assert frame == render(snap, now=1303.0)
    assert "fleet gpu0 (dry run)" in frame
    assert "tinyllama:1.1b (rung 3 of 4, 637 MB)\n" in frame
    assert "no data: Prometheus has no error series for this fleet" in frame
    assert "GPU 0: 2.0 GiB used, free ?" in frame
    assert "phi3:mini -> tinyllama:1.1b (down, alert) at " in frame
    assert ", 5m 3s ago\n" in frame
    assert "last failure step pull, 1m 43s ago: pull failed: boom" in frame
    assert "alerts       none firing" in frame  # gpu9's alert belongs to no fleet shown
    assert "alerts without a fleet" not in frame
    broken = block(frame, "broken")
    assert "model        unknown" in broken and "the status names no GPU" in broken
    assert frame.endswith("\nnotice: state file was corrupt\n")
    assert "Ctrl-C" not in frame  # a single frame


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m 0s"), (3725, "1h 2m"), (90000, "1d 1h")],
)
def test_ago(seconds: float, text: str) -> None:
    assert ago(seconds) == text
