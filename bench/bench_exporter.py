"""Exporter benchmarks: classification speed (next to mtail), Docker log following, /metrics.

1. Classification of a 1,000,000-line Ollama-like log with 0.1% error lines, on one core
   (target: at least 2,000,000 lines/s), and mtail on the same file with the same patterns,
   also on one core, in the same run; both counts must agree.
2. A real container printing 1,000,000 lines: the watcher's count must be exact and keep up
   with what ``docker logs`` delivers on the same machine (target ratio: at least 0.9), both
   for a finished container's whole log and for a container followed while it prints.
3. ``/metrics`` of a running exporter with 8 (fake) GPUs and 20 watched containers: median and
   p99 latency (target p99 below 20 ms), and the exporter's resident memory.

Run from the repository root: ``.venv/bin/python -m bench.bench_exporter``. Needs Docker,
gcc and mtail (scripts/bootstrap installs them); everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import Row, free_port, machine, median, percentile, table
from exporter.adapters.docker_logs import DockerLogSource
from exporter.classifier import DEFAULT_PATTERNS, LogClassifier, scan_stream
from exporter.config import ContainerSelection
from exporter.metrics import LogStore
from exporter.watcher import LogWatcher
from simulator import fake_nvml
from simulator.images import BUSYBOX_IMAGE, build_busybox_image

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
BENCH_LABEL = "model-fleet.bench"
ERROR_EVERY = 1000  # 0.1% of the lines

# Ordinary lines of a busy Ollama server (startup, scheduling, requests).
NORMAL_LINES = [
    'time=2024-08-16T07:56:25.534+10:00 level=INFO source=images.go:782 msg="total blobs: 35"',
    '[GIN] 2024/07/29 - 23:02:02 | 200 |    6.8410567s |       127.0.0.1 | POST     "/api/chat"',
    'time=2025-01-10T16:30:58.528+01:00 level=INFO source=server.go:104 msg="system memory" '
    'total="46.8 GiB" free="40.2 GiB" free_swap="62.0 GiB"',
    "time=2025-01-10T16:30:58.528+01:00 level=DEBUG source=memory.go:107 msg=evaluating "
    'library=cuda gpu_count=2 available="[23.3 GiB 15.5 GiB]"',
    "llama_new_context_with_model: KV self size  = 1024.00 MiB, K (f16):  512.00 MiB, "
    "V (f16):  512.00 MiB",
    "llm_load_tensors:      CUDA0 buffer size =  4155.99 MiB",
    'time=2024-07-29T23:01:47.646+08:00 level=INFO source=server.go:622 msg="llama runner '
    'started in 3.83 seconds"',
    'time=2025-08-06T19:47:23.957Z level=DEBUG source=cache.go:136 msg="loading cache slot" '
    "id=0 cache=1242 prompt=31570 used=64 remaining=31506",
]


def error_lines() -> list[str]:
    """Ollama's real VRAM error lines, from the test data."""
    classifier = LogClassifier()
    lines = []
    for path in sorted(DATA.glob("ollama_*.log")):
        for line in path.read_text().splitlines():
            if classifier.classify(line) is not None:
                lines.append(line)
    return lines


def write_log(path: Path, lines: int, seed: int = 1) -> int:
    """An Ollama-like log of ``lines`` lines, one in ERROR_EVERY an error; returns the errors."""
    rng = random.Random(seed)
    errors = error_lines()
    n_errors = 0
    with path.open("w") as f:
        for i in range(lines):
            if i % ERROR_EVERY == ERROR_EVERY // 2:
                f.write(rng.choice(errors) + "\n")
                n_errors += 1
            else:
                f.write(rng.choice(NORMAL_LINES) + "\n")
    return n_errors


@contextlib.contextmanager
def one_core(cpu: int) -> Iterator[None]:
    """Run the block pinned to one CPU."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def mtail_program(patterns: Mapping[str, Sequence[str]]) -> str:
    """The same classification as an mtail program: lines, then the first matching kind."""
    out = [
        "counter model_fleet_log_lines_total",
        "counter model_fleet_vram_errors_total by kind",
        "/^/ {",
        "  model_fleet_log_lines_total++",
        "}",
    ]
    kinds = list(patterns.items())
    for depth, (kind, kind_patterns) in enumerate(kinds):
        regex = "(?i)" + "|".join(f"(?:{p})" for p in kind_patterns)
        escaped = regex.replace("/", "\\/")
        indent = "  " * depth
        out.append(f"{indent}/{escaped}/ {{")
        out.append(f'{indent}  model_fleet_vram_errors_total["{kind}"]++')
        out.append(f"{indent}}}" + (" else {" if depth < len(kinds) - 1 else ""))
    out.extend("  " * depth + "}" for depth in reversed(range(len(kinds) - 1)))
    return "\n".join(out) + "\n"


def bench_classification(workdir: Path, lines: int, cpu: int) -> list[Row]:
    """Our classifier and mtail on the same file, each on one core."""
    log = workdir / "ollama-like.log"
    expected_errors = write_log(log, lines)
    size_mb = log.stat().st_size / 1e6
    classifier = LogClassifier()
    best = float("inf")
    result = None
    with one_core(cpu):
        for _ in range(3):
            with log.open("rb", buffering=0) as f:
                started = time.perf_counter()
                result = scan_stream(classifier, f.read, 64 * 1024)
                best = min(best, time.perf_counter() - started)
    assert result is not None
    ours = result.lines / best
    found = sum(result.counts.values())
    rows = [
        Row("classify", "file", f"{result.lines:,} lines, {size_mb:.0f} MB, {found} errors"),
        Row("classify", "exporter lines/s (1 core)", f"{ours:,.0f}", ">= 2,000,000"),
    ]
    if found != expected_errors or result.lines != lines:
        rows.append(Row("classify", "COUNT MISMATCH", f"{found} != {expected_errors}", "equal"))
    mtail = shutil.which("mtail")
    if mtail is None:
        return [*rows, Row("classify", "mtail", "not installed (apt-get install mtail)")]
    progs = workdir / "mtail"
    progs.mkdir(exist_ok=True)
    (progs / "vram.mtail").write_text(mtail_program(DEFAULT_PATTERNS))
    cmd = [mtail, "--one_shot", "--one_shot_format=prometheus", "--progs", str(progs)]
    cmd += ["--logs", str(log), "--address", "127.0.0.1", "--port", str(free_port())]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "GOMAXPROCS": "1"}, check=False
    )
    mtail_seconds = time.perf_counter() - started
    counts = {
        m.group(1): int(float(m.group(2)))
        for m in re.finditer(
            r'model_fleet_vram_errors_total\{kind="(\w+)"[^}]*\} (\S+)', proc.stdout
        )
    }
    mtail_rate = lines / mtail_seconds
    rows += [
        Row("classify", "mtail lines/s (1 core, same run)", f"{mtail_rate:,.0f}"),
        Row("classify", "exporter / mtail", f"{ours / mtail_rate:.1f}x"),
    ]
    ours_counts = {k: v for k, v in result.counts.items() if v}
    if proc.returncode != 0 or counts != ours_counts:
        rows.append(Row("classify", "mtail disagrees", f"{counts} vs {ours_counts}", "equal"))
    return rows


PRINTER = (
    'awk \'BEGIN{{for(i=0;i<{n};i++){{if(i%{every}=={half}) print "CUDA error: out of memory"; '
    'else print "time=2026-03-02T14:20:11.512Z level=INFO source=server.go:622 msg=\\"llama '
    'runner started in 3.83 seconds\\" line=" i}}}}\''
)


def _printer(n: int) -> str:
    return PRINTER.format(n=n, every=ERROR_EVERY, half=ERROR_EVERY // 2)


def _watch(label: str, live_since_ns: int | None) -> tuple[LogWatcher, LogStore]:
    selection = ContainerSelection(labels={BENCH_LABEL: label})
    classifier = LogClassifier()
    store = LogStore(classifier.kinds)
    # A window of 0: every matching line is an error, so each line's count shows.
    watcher = LogWatcher(
        selection,
        classifier,
        store,
        DockerLogSource(),
        live_since_ns=live_since_ns,
        incident_window_seconds=0,
    )
    return watcher, store


def _wait_lines(store: LogStore, name: str, n: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in store.snapshot():
            if s.container == name and s.lines >= n:
                return time.perf_counter()
        time.sleep(0.01)
    raise TimeoutError(f"{name}: fewer than {n} lines after {timeout} s: {store.snapshot()}")


def bench_docker(client: Any, lines: int) -> list[Row]:
    """The watcher against `docker logs` on the same 1M-line containers."""
    rows: list[Row] = []
    label = uuid.uuid4().hex[:10]
    errors = lines // ERROR_EVERY
    run = {"labels": {BENCH_LABEL: label}, "detach": True}
    containers = []
    try:
        # (a) a finished container's whole log, read by `docker logs`, then by the exporter
        done = client.containers.run(BUSYBOX_IMAGE, ["sh", "-c", _printer(lines)], **run)
        containers.append(done)
        done.wait(timeout=600)
        started = time.perf_counter()
        subprocess.run(["docker", "logs", done.id], stdout=subprocess.DEVNULL, check=True)
        cli = time.perf_counter() - started
        watcher, store = _watch(label, live_since_ns=0)  # count the history too
        started = time.perf_counter()
        watcher.start()
        ours = _wait_lines(store, done.name, lines) - started
        s = next(s for s in store.snapshot() if s.container == done.name)
        watcher.stop()
        exact = (
            s.lines == lines and s.errors["oom"] == s.error_lines["oom"] == s.since_start == errors
        )
        rows += [
            Row("docker logs", "whole log: docker logs (CLI)", f"{cli:.2f} s"),
            Row("docker logs", "whole log: exporter", f"{ours:.2f} s ({lines / ours:,.0f}/s)"),
            Row(
                "docker logs",
                "whole log: ratio CLI time / exporter time",
                f"{cli / ours:.2f}",
                ">= 0.9",
            ),
            Row("docker logs", "whole log: counts exact", _exact(exact, s), "True"),
        ]
        done.remove(force=True)

        # (b) one container followed while it prints, by `docker logs -f` and the exporter at
        # the same time: each one's time from the container's start to its last line
        watcher, store = _watch(label, live_since_ns=None)
        watcher.start()
        watcher.ready.wait(30)
        live = client.containers.create(
            BUSYBOX_IMAGE, ["sh", "-c", _printer(lines)], labels={BENCH_LABEL: label}
        )
        containers.append(live)
        cli_follower = subprocess.Popen(
            ["docker", "logs", "-f", live.id], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        cli_done: list[float] = []

        def wait_cli() -> None:
            cli_follower.wait(600)
            cli_done.append(time.perf_counter())

        waiter = threading.Thread(target=wait_cli)
        waiter.start()
        started = time.perf_counter()
        live.start()
        ours = _wait_lines(store, live.name, lines) - started
        s = next(s for s in store.snapshot() if s.container == live.name)
        waiter.join(600)
        cli = cli_done[0] - started
        watcher.stop()
        exact = (
            s.lines == lines and s.errors["oom"] == s.error_lines["oom"] == s.since_start == errors
        )
        rows += [
            Row("docker logs", "follow: docker logs -f (CLI)", f"{cli:.2f} s"),
            Row("docker logs", "follow: exporter", f"{ours:.2f} s ({lines / ours:,.0f}/s)"),
            Row(
                "docker logs",
                "follow: ratio CLI time / exporter time",
                f"{cli / ours:.2f}",
                ">= 0.9",
            ),
            Row("docker logs", "follow: counts exact", _exact(exact, s), "True"),
        ]
    finally:
        for c in containers:
            with contextlib.suppress(Exception):
                c.remove(force=True)
    return rows


def _exact(exact: bool, s: Any) -> str:
    return f"{exact} ({s.lines:,} lines, {s.errors['oom']} oom, since start {s.since_start})"


def _rss_kib(pid: int) -> tuple[int, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def bench_metrics(client: Any, workdir: Path, requests: int) -> list[Row]:
    """Latency of /metrics with 8 fake GPUs and 20 watched containers, and memory."""
    label = uuid.uuid4().hex[:10]
    containers = [
        client.containers.run(
            BUSYBOX_IMAGE,
            ["sh", "-c", 'while true; do echo "level=INFO msg=\\"tick\\""; sleep 1; done'],
            labels={
                BENCH_LABEL: label,
                "model-fleet.role": "ollama",
                "model-fleet.fleet": f"f{i % 4}",
            },
            detach=True,
        )
        for i in range(20)
    ]
    proc = None
    try:
        pids = []
        for c in containers:
            c.reload()
            pids.append(int(c.attrs["State"]["Pid"]))
        lib = fake_nvml.build(workdir / "nvml")
        gpus = tuple(
            fake_nvml.FakeGpu(
                name="NVIDIA RTX A4000",
                uuid=f"GPU-00000000-0000-4000-8000-{i:012d}",
                total=16 * 1024 * fake_nvml.MIB,
                used=(2 + i) * 1024 * fake_nvml.MIB,
                processes={pids[2 * i]: 1024 * fake_nvml.MIB, pids[2 * i + 1]: 512 * fake_nvml.MIB},
            )
            for i in range(8)
        )
        state = workdir / "nvml.state"
        fake_nvml.FakeNvmlState(gpus=gpus).write(state)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")}
        env.update(fake_nvml.env_for(lib, state))
        cmd = [sys.executable, "-m", "exporter.cli", "serve", "--bind", f"127.0.0.1:{port}"]
        proc = subprocess.Popen(
            [*cmd, "--label", f"{BENCH_LABEL}={label}", "--log-level", "WARNING"],
            cwd=workdir,
            env=env,
        )
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, ValueError):
                if len(json.loads(_get(port, "/healthz"))["containers"]) == len(containers):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("the exporter did not watch the 20 containers in time")
            time.sleep(0.1)
        for _ in range(50):  # warm up
            _get(port, "/metrics")
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            body = _get(port, "/metrics")
            latencies.append(time.perf_counter() - started)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        rss, peak = _rss_kib(proc.pid)
        return [
            Row("/metrics", "setup", f"8 GPUs (16 processes), 20 containers, {series} samples"),
            Row("/metrics", "latency p50", f"{median(latencies) * 1000:.2f} ms"),
            Row("/metrics", "latency p99", f"{percentile(latencies, 99) * 1000:.2f} ms", "< 20 ms"),
            Row(
                "/metrics",
                "resident memory (peak)",
                f"{rss / 1024:.1f} MiB ({peak / 1024:.1f} MiB)",
            ),
        ]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        for c in containers:
            with contextlib.suppress(Exception):
                c.remove(force=True)


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def run(
    lines: int = 1_000_000, *, cpu: int = 0, requests: int = 2000, docker_too: bool = True
) -> list[Row]:
    """Run the exporter's benchmarks; return their rows (bench.run prints them with others)."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mf-bench-exporter-") as tmp:
        workdir = Path(tmp)
        rows += bench_classification(workdir, lines, cpu)
        if docker_too:
            import docker

            client = docker.from_env(timeout=120)
            build_busybox_image(client)
            rows += bench_docker(client, lines)
            rows += bench_metrics(client, workdir, requests)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print one table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--cpu", type=int, default=0, help="the core for the 1-core runs")
    parser.add_argument("--requests", type=int, default=2000, help="/metrics requests")
    parser.add_argument("--skip-docker", action="store_true", help="classification only")
    args = parser.parse_args(argv)
    rows = run(args.lines, cpu=args.cpu, requests=args.requests, docker_too=not args.skip_docker)
    print(f"machine: {machine()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
