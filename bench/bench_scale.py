"""The per-host budget: series, scrape size and time of a real exporter and remediator.

Runs the exporter (its real NVML path against the fake libnvidia-ml.so with 1-8 GPUs, its real
Docker path against busybox model-server and app containers on the real engine) and the
remediator (under gunicorn, 2 workers) as host processes, as simulator/loop.py does, for
several shapes of a host: GPUs, fleets, watched model-server containers per fleet, models on
each fleet's ladder. Each fleet's model server is the Ollama stand-in (one model loaded, the
synthetic probe on), each model-server container holds VRAM on one GPU. It scrapes both
/metrics, counts the series and fits

    series = base + a*GPUs + b*fleets + c*containers + d*models

(containers: watched model-server containers; models: ladder rungs over all fleets) by least
squares, checked against a shape the fit did not see. bench/bench_scale_prom.py then measures
what those series cost a real Prometheus with K hosts, what a two-replica Alertmanager
cluster takes, and the alerts and deliveries one switch makes on the whole loop. Everything
it creates (containers labelled model-fleet.bench-scale, processes, temporary files) is
removed on exit.

    .venv/bin/python -m bench.bench_scale [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

from bench.common import Row, free_port, median, percentile, solve_least_squares, table
from remediator.config.ladder import DEFAULT_LADDER
from simulator import fake_nvml
from simulator.fake_ollama import FakeOllama
from simulator.images import BUSYBOX_IMAGE, build_busybox_image
from simulator.local_http import http_get, wait_until
from simulator.loop_setup import stop_group

SCALE_LABEL = "model-fleet.bench-scale"
MIB = 1024 * 1024
MAX_FLEETS = 16
SERVER_SCRIPT = (
    "trap 'exit 0' TERM; echo 'msg=\"Listening on [::]:11434\"'; while true; do sleep 1; done"
)
APP_SCRIPT = "trap 'exit 0' TERM; echo app running; while true; do sleep 1; done"


@dataclass(frozen=True)
class Shape:
    """One host: GPUs, fleets, watched model-server containers per fleet, rungs per ladder."""

    gpus: int
    fleets: int
    servers: int = 1
    rungs: int = 4

    @property
    def containers(self) -> int:
        """Watched model-server containers on the host."""
        return self.fleets * self.servers

    @property
    def models(self) -> int:
        """Ladder rungs over all fleets."""
        return self.fleets * self.rungs

    def terms(self) -> list[float]:
        """The fit's regressors: 1, GPUs, fleets, containers, models."""
        return [1.0, self.gpus, self.fleets, self.containers, self.models]

    def __str__(self) -> str:
        return f"{self.gpus} GPU, {self.fleets} fleet, {self.containers} ctr, {self.models} mdl"


# The fit's shapes (each term varies alone around 1 GPU, 1 fleet) and one it must predict.
FIT_SHAPES = (
    Shape(1, 1),
    Shape(2, 1),
    Shape(4, 1),
    Shape(8, 1),
    Shape(1, 4),
    Shape(1, 16),
    Shape(1, 4, servers=2),
    Shape(1, 4, rungs=2),
)
CHECK_SHAPE = Shape(8, 16)
QUICK_SHAPES = (Shape(1, 1), Shape(2, 1), Shape(1, 4), Shape(1, 4, servers=2), Shape(1, 4, rungs=2))
TERMS = ("base", "per GPU", "per fleet", "per container", "per model")


@dataclass(frozen=True)
class Scrape:
    """What one /metrics endpoint serves: series (ours and the runtime's), bytes, time."""

    series: int
    ours: int
    body_bytes: int
    p50_ms: float
    p99_ms: float


def scrape(url: str, times: int = 20) -> Scrape:
    """Scrape ``url`` ``times`` times; count the series of the last body."""
    durations, body = [], b""
    for _ in range(times):
        t0 = time.perf_counter()
        body = http_get(url, timeout=10)
        durations.append((time.perf_counter() - t0) * 1000)
    lines = [ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")]
    ours = sum(1 for ln in lines if ln.startswith("model_fleet_"))
    return Scrape(len(lines), ours, len(body), median(durations), percentile(durations, 99))


def formula(coef: Sequence[float]) -> str:
    """``base + a*GPU + ...`` with rounded coefficients."""
    parts = [f"{coef[0]:.0f}"]
    for c, name in zip(coef[1:], ("GPU", "fleet", "container", "model"), strict=True):
        parts.append(f"{c:.1f}*{name}")
    return " + ".join(parts)


class Host:
    """Containers for up to MAX_FLEETS fleets, and the stand-in every fleet's server is."""

    def __init__(self, workdir: Path, fleets: int = MAX_FLEETS) -> None:
        self.workdir = workdir
        self.fleets = fleets
        self.run = uuid.uuid4().hex[:8]
        self.client = docker.from_env(timeout=60)
        self.ollama = FakeOllama(models={"llama3.2:3b": 2048 * MIB})
        self.nvml = fake_nvml.build(workdir / "nvml")
        self.pids: dict[tuple[int, int], int] = {}  # (fleet, server) -> pid

    def start(self) -> None:
        """Start the stand-in and create every container (two servers and an app per fleet)."""
        build_busybox_image(self.client)
        self.ollama.start()
        self.ollama.load("llama3.2:3b")
        for i in range(self.fleets):
            for s in range(2):
                c = self._run(f"f{i:02d}", "ollama", SERVER_SCRIPT, i, extra=f"s{s}")
                c.reload()
                self.pids[(i, s)] = int(c.attrs["State"]["Pid"])
            self._run(f"f{i:02d}", "app", APP_SCRIPT, i, extra="app")

    def _run(self, fleet: str, role: str, script: str, index: int, extra: str) -> Any:
        labels = {
            "model-fleet.fleet": fleet,
            "model-fleet.role": role,
            SCALE_LABEL: self.run,
            f"{SCALE_LABEL}.{extra}": "yes",
            **{f"{SCALE_LABEL}.f{n}": "yes" for n in (1, 2, 4, 8, 16) if index < n},
        }
        return self.client.containers.run(
            BUSYBOX_IMAGE,
            ["sh", "-c", script],
            name=f"mf-scale-{self.run}-{fleet}-{extra}",
            labels=labels,
            detach=True,
        )

    def close(self) -> None:
        """Remove what start() created."""
        with contextlib.suppress(Exception):
            self.ollama.stop()
        for c in self.client.containers.list(
            all=True, filters={"label": f"{SCALE_LABEL}={self.run}"}
        ):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)

    def configure(self, shape: Shape) -> Path:
        """The fake NVML state and model-fleet.yaml of ``shape``; returns the config file."""
        procs: list[dict[int, int]] = [{} for _ in range(shape.gpus)]
        for i in range(shape.fleets):
            for s in range(shape.servers):
                procs[i % shape.gpus][self.pids[(i, s)]] = 2048 * MIB
        fake_nvml.FakeNvmlState(
            gpus=tuple(
                fake_nvml.FakeGpu(
                    uuid=f"GPU-5f2b6c1e-8a43-4d0e-9b7a-{g:012d}",
                    used=sum(procs[g].values()) + 300 * MIB,
                    processes=procs[g],
                )
                for g in range(shape.gpus)
            )
        ).write(self.workdir / "nvml.state")
        labels = {"model-fleet.role": "ollama", SCALE_LABEL: self.run}
        labels[f"{SCALE_LABEL}.f{shape.fleets}"] = "yes"
        if shape.servers == 1:
            labels[f"{SCALE_LABEL}.s0"] = "yes"
        fleets = {}
        for i in range(shape.fleets):
            app_env = self.workdir / f"app-f{i:02d}.env"
            app_env.write_text("OLLAMA_MODEL=llama3.2:3b\n")
            fleets[f"f{i:02d}"] = {
                "gpu": str(i % shape.gpus),
                "server": {"kind": "ollama", "url": self.ollama.url},
                "probe": {"enabled": True, "interval_seconds": 2},
                "ladder": [
                    {"name": r.name, "size_mb": r.size_mb} for r in DEFAULT_LADDER[: shape.rungs]
                ],
                "app_config": [{"path": str(app_env), "format": "env", "key": "OLLAMA_MODEL"}],
            }
        state = self.workdir / f"state-{uuid.uuid4().hex[:6]}.json"
        cfg = {
            "state_file": str(state),
            "exporter": {"labels": labels, "server_poll_seconds": 1},
            "fleets": fleets,
        }
        path = self.workdir / "model-fleet.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path


def _spawn(
    workdir: Path, name: str, argv: list[str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    with (workdir / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextlib.contextmanager
def services(host: Host, shape: Shape) -> Iterator[tuple[str, str]]:
    """The exporter and the remediator of ``shape``, running; yields their /metrics URLs."""
    cfg = host.configure(shape)
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("MODEL_FLEET_", "PROMETHEUS_"))
    }
    token = host.workdir / "token"
    token.write_text(uuid.uuid4().hex + "\n")
    rport, eport = free_port(), free_port()
    serve = [sys.executable, "-m", "", "serve", "--config", str(cfg), "--bind"]
    rem_argv = [*serve, f"127.0.0.1:{rport}", "--workers", "2"]
    rem_argv[2] = "remediator.cli"
    exp_argv = [*serve, f"127.0.0.1:{eport}"]
    exp_argv[2] = "exporter.cli"
    procs = [
        _spawn(
            host.workdir, "remediator", rem_argv, {**base, "MODEL_FLEET_TOKEN_FILE": str(token)}
        ),
        _spawn(
            host.workdir,
            "exporter",
            exp_argv,
            {**base, **fake_nvml.env_for(host.nvml, host.workdir / "nvml.state")},
        ),
    ]
    urls = (f"http://127.0.0.1:{eport}", f"http://127.0.0.1:{rport}")
    try:
        for url, proc in zip(urls, procs, strict=True):

            def up(url: str = url, proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args} exited: see {host.workdir}")
                return bool(http_get(url + "/healthz", timeout=1))

            wait_until(up, 60, url, interval=0.2)

        # Every watched container attached, every server polled and probed.
        def settled() -> bool:
            text = http_get(urls[0] + "/metrics").decode()
            attached = sum(
                1
                for ln in text.splitlines()
                if ln.startswith("model_fleet_log_stream_up{") and ln.endswith(" 1.0")
            )
            # Every probe answered (a failed one has no tokens-per-second series).
            probes = text.count("model_fleet_probe_tokens_per_second{")
            # Every fleet's server polled: its one model, in VRAM and in system memory.
            models = text.count("model_fleet_model_memory_bytes{")
            return (attached, probes, models) == (shape.containers, shape.fleets, 2 * shape.fleets)

        wait_until(settled, 60, f"the exporter to watch {shape}", interval=0.5)
        yield urls[0] + "/metrics", urls[1] + "/metrics"
    finally:
        for proc in procs:
            stop_group(proc)


@dataclass(frozen=True)
class Measured:
    """Both services' scrapes for one shape."""

    shape: Shape
    exporter: Scrape
    remediator: Scrape


def measure(host: Host, shapes: Sequence[Shape]) -> list[Measured]:
    """Run both services for each shape and scrape them."""
    out = []
    for shape in shapes:
        print(f"  {shape} ...", file=sys.stderr, flush=True)
        with services(host, shape) as (exp, rem):
            out.append(Measured(shape, scrape(exp), scrape(rem)))
    return out


def fit_rows(results: list[Measured], check: Measured | None) -> tuple[list[Row], dict[str, Any]]:
    """The table rows and the fitted coefficients (exporter, remediator, both)."""
    name = "scale: series per host"
    rows = [
        Row(
            name,
            str(m.shape),
            f"exporter {m.exporter.series} ({m.exporter.ours} model_fleet_*), "
            f"remediator {m.remediator.series} ({m.remediator.ours} model_fleet_*)",
        )
        for m in results
    ]
    x = [m.shape.terms() for m in results]
    fits: dict[str, Any] = {}
    for what, get in (
        ("exporter", lambda m: m.exporter.series),
        ("remediator", lambda m: m.remediator.series),
        ("exporter model_fleet_*", lambda m: m.exporter.ours),
        ("remediator model_fleet_*", lambda m: m.remediator.ours),
    ):
        coef = solve_least_squares(x, [float(get(m)) for m in results])
        fits[what] = coef
        worst = max(
            abs(sum(c * t for c, t in zip(coef, m.shape.terms(), strict=True)) - get(m))
            for m in results
        )
        rows.append(Row(name, f"fit, {what}", f"{formula(coef)} (max residual {worst:.1f})"))
        if check is not None:
            predicted = sum(c * t for c, t in zip(coef, check.shape.terms(), strict=True))
            rows.append(
                Row(
                    name,
                    f"check {check.shape}, {what}",
                    f"measured {get(check)}, fit {predicted:.0f}",
                )
            )
    big = check or results[-1]
    for what, s, interval in (("exporter", big.exporter, 2.0), ("remediator", big.remediator, 5.0)):
        rows.append(
            Row(
                "scale: scrape",
                f"{what}, {big.shape}",
                f"{s.series} series, {s.body_bytes:,} B, p50 {s.p50_ms:.1f} ms, "
                f"p99 {s.p99_ms:.1f} ms, {s.series / interval:.0f} samples/s "
                f"at the {interval:.0f} s interval",
            )
        )
    return rows, fits


def run(quick: bool = False, hosts: Sequence[int] = (1, 8, 32, 64)) -> list[Row]:
    """Series per host (fit and check), then the Prometheus and Alertmanager figures."""
    from bench import bench_scale_prom

    with tempfile.TemporaryDirectory(prefix="mf-bench-scale-") as tmp:
        host = Host(Path(tmp))
        try:
            host.start()
            shapes = QUICK_SHAPES if quick else FIT_SHAPES
            results = measure(host, shapes)
            check = None if quick else measure(host, [CHECK_SHAPE])[0]
            rows, _ = fit_rows(results, check)
            big = Shape(2, 4) if quick else CHECK_SHAPE
            print(f"  Prometheus with K hosts of {big} ...", file=sys.stderr, flush=True)
            with services(host, big) as urls:
                rows += bench_scale_prom.prometheus_rows(Path(tmp), urls, big, hosts)
        finally:
            host.close()
    rows += bench_scale_prom.alertmanager_rows(alerts=1000 if quick else 5000)
    with tempfile.TemporaryDirectory(prefix="mf-bench-switch-") as tmp:
        rows += bench_scale_prom.switch_rows(Path(tmp))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and hosts")
    parser.add_argument("--hosts", default="1,8,32,64", help="simulated hosts for Prometheus")
    args = parser.parse_args(argv)
    hosts = [int(h) for h in args.hosts.split(",")]
    print(table(run(args.quick, hosts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
