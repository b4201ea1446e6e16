"""All benchmarks in one command, printing one table (and writing BENCHMARKS.md with --write).

    .venv/bin/python -m bench.run [--write] [--runs 5] [--lines 1000000] [--crash-trials 200]

Everything runs on this machine against 127.0.0.1; nothing here is a pass/fail test, the
figures are read against the targets in the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import (
    bench_compose,
    bench_crash,
    bench_exporter,
    bench_limits,
    bench_loop,
    bench_webhook,
)
from bench.common import Row, machine, table

REPO = Path(__file__).resolve().parent.parent

# Which path each benchmark measures (BENCHMARKS.md states it with the figures).
PATHS = """Paths measured:
- classify, docker logs, /metrics: the exporter's code on this machine (host processes; the
  docker-logs rows against the real Docker engine and busybox containers).
- webhook storm: the remediator under gunicorn on 127.0.0.1, switches through the Ollama
  stand-in.
- bounded work (bench/bench_limits.py): the remediator under gunicorn (default settings) on
  127.0.0.1: /healthz under 100 half-sent requests and under one 10,000-alert delivery.
- time to remediation (bench/bench_loop.py): the loop on host processes (exporter,
  remediator, real Prometheus and Alertmanager binaries) with busybox containers that have no
  health checks: the figure for the detection and decision path alone.
- time to remediation, compose stack (bench/bench_compose.py): the deployed system, the
  shipped images and compose files started by scripts/up (stand-ins only for Ollama,
  Prometheus and Alertmanager, no GPU), shipped intervals and health checks, Prometheus
  restarted between runs so the phase varies. The issue's target applies to this one.
- crash recovery (bench/bench_crash.py, with --crash-trials): the remediator under gunicorn
  (2 workers) on 127.0.0.1, SIGKILLed as a process group at random moments of a switch of
  two busybox containers on the real Docker engine (Ollama stand-in), then restarted.

"""


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark and print the combined table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="also write BENCHMARKS.md")
    parser.add_argument("--runs", type=int, default=5, help="time-to-remediation runs")
    parser.add_argument("--lines", type=int, default=1_000_000, help="log lines for the exporter")
    parser.add_argument(
        "--compose-runs", type=int, default=10, help="runs on the compose stack (0: skip)"
    )
    parser.add_argument(
        "--crash-trials",
        type=int,
        default=0,
        help="random SIGKILLs mid-switch (bench/bench_crash.py; 0: skip, its default is 200)",
    )
    args = parser.parse_args(argv)
    started = time.time()
    rows: list[Row] = []
    for name, bench in (
        ("exporter", lambda: bench_exporter.run(lines=args.lines)),
        ("webhook storm", bench_webhook.run),
        ("bounded work", bench_limits.run),
        ("time to remediation", lambda: bench_loop.run(args.runs)),
        ("compose stack", lambda: bench_compose.run(args.compose_runs)),
        ("crash recovery", lambda: bench_crash.run(args.crash_trials)),
    ):
        if name == "compose stack" and args.compose_runs <= 0:
            continue
        if name == "crash recovery" and args.crash_trials <= 0:
            continue
        print(f"running the {name} benchmark ...", file=sys.stderr, flush=True)
        rows += bench()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    text = (
        f"Machine: {machine()}\n\nRun: {when}, `.venv/bin/python -m bench.run --write` "
        f"({time.time() - started:.0f} s)\n\n{table(rows)}\n"
    )
    print(text)
    if args.write:
        (REPO / "BENCHMARKS.md").write_text(
            "# Benchmarks\n\nThe table `python -m bench.run` printed, committed as it came out. "
            "Targets come from the issues; figures from a shared, noisy machine.\n\n" + PATHS + text
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
