"""All benchmarks in one command, printing one table (and writing BENCHMARKS.md with --write).

    .venv/bin/python -m bench.run [--write] [--runs 5] [--lines 1000000] [--scale]
                                  [--rotation-trials 3] [--crash-trials 200] [--scenario-runs 1]

With --scale it also measures the per-host budget (bench/bench_scale.py, about 6 minutes),
printed as its own table and written as its own section of BENCHMARKS.md; without it, --write
keeps the section the last --scale run wrote.

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
    bench_journal,
    bench_limits,
    bench_loop,
    bench_rotation,
    bench_scale,
    bench_scenario,
    bench_webhook,
)
from bench.common import Row, machine, table

REPO = Path(__file__).resolve().parent.parent

# Which path each benchmark measures (BENCHMARKS.md states it with the figures).
PATHS = """Paths measured:
- classify, docker logs, /metrics: the exporter's code on this machine (host processes; the
  docker-logs rows against the real Docker engine and busybox containers).
- log rotation (bench/bench_rotation.py): the exporter's log watcher in process, following
  busybox containers on the real Docker engine (20.10, json-file) through rotations.
- webhook storm: the remediator under gunicorn on 127.0.0.1, switches through the Ollama
  stand-in; 50 http.client threads of one process, then the same storm of /healthz (the floor).
- bounded work (bench/bench_limits.py): the remediator under gunicorn (default settings) on
  127.0.0.1: /healthz and one delivery under 1,000 half-sent requests (replaced when the
  service drops them), and /healthz under one 10,000-alert delivery.
- time to remediation (bench/bench_loop.py): the loop on host processes (exporter,
  remediator, real Prometheus and Alertmanager binaries) with busybox containers that have no
  health checks: the figure for the detection and decision path alone.
- time to remediation, compose stack (bench/bench_compose.py): the deployed system, the
  shipped images and compose files started by scripts/up (stand-ins only for Ollama,
  Prometheus and Alertmanager, no GPU), shipped intervals and health checks, Prometheus
  restarted between runs so the phase varies. The issue's target applies to this one.
- time to settle, chain scenario (bench/bench_scenario.py): the loop of the scenario suite on
  the shipped config/model-fleet.yaml, monitoring/ and alert_rules/ files (host processes,
  real binaries, busybox containers, a simulated GPU on which the second rung fails at once),
  with the shipped 60 s cooldown: from the first model's third error to a model that fits.
- per-host budget (bench/bench_scale.py, --scale): a real exporter (fake NVML, 1-8 GPUs,
  busybox containers on the real Docker engine) and remediator (gunicorn) per host shape,
  their /metrics series fitted per GPU, fleet, container and model; a real Prometheus (shipped
  config and rules, file_sd) scraping them as K hosts; a real two-replica Alertmanager
  cluster (shipped config) taking a burst of alerts. docs/scale.md derives the sizing.
- crash recovery (bench/bench_crash.py, with --crash-trials): the remediator under gunicorn
  (2 workers) on 127.0.0.1, SIGKILLed as a process group at random moments of a switch of
  two busybox containers on the real Docker engine (Ollama stand-in), then restarted.

"""
SCALE_HEADING = "## Per-host budget (bench/bench_scale.py)"


def later_sections(scale_rows: list[Row] | None, when: str) -> str:
    """The BENCHMARKS.md sections after the main table: the ones already written (separate
    runs, e.g. the crash and rotation trials), with the per-host budget replaced by this run's
    --scale figures when there are any."""
    old = (REPO / "BENCHMARKS.md").read_text() if (REPO / "BENCHMARKS.md").exists() else ""
    start = old.find("\n## ")
    sections = [] if start < 0 else ["## " + part for part in old[start + 4 :].split("\n## ")]
    if scale_rows is not None:
        new = (
            f"{SCALE_HEADING}\n\nMachine: {machine()}\n\nRun: {when}, "
            f"`.venv/bin/python -m bench.run --scale`\n\n{table(scale_rows)}\n"
        )
        sections = [s for s in sections if not s.startswith(SCALE_HEADING)] + [new]
    return "\n".join(s.rstrip("\n") + "\n" for s in sections)


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
        "--rotation-trials", type=int, default=3, help="trials per log rotation case (0: skip)"
    )
    parser.add_argument(
        "--scale", action="store_true", help="also measure the per-host budget (docs/scale.md)"
    )
    parser.add_argument(
        "--crash-trials",
        type=int,
        default=0,
        help="random SIGKILLs mid-switch (bench/bench_crash.py; 0: skip, its default is 200)",
    )
    parser.add_argument(
        "--journal",
        action="store_true",
        help="also compare the journal's readers (bench/bench_journal.py; boots a systemd bed)",
    )
    parser.add_argument(
        "--scenario-runs",
        type=int,
        default=1,
        help="chain scenarios for the time to settle (about 1.5 min each; 0: skip)",
    )
    args = parser.parse_args(argv)
    started = time.time()
    rows: list[Row] = []
    for name, bench in (
        ("exporter", lambda: bench_exporter.run(lines=args.lines)),
        ("log rotation", lambda: bench_rotation.run(args.rotation_trials)),
        ("webhook storm", bench_webhook.run),
        ("bounded work", bench_limits.run),
        ("time to remediation", lambda: bench_loop.run(args.runs)),
        ("compose stack", lambda: bench_compose.run(args.compose_runs)),
        ("crash recovery", lambda: bench_crash.run(args.crash_trials)),
        ("chain scenario", lambda: bench_scenario.run(args.scenario_runs)),
        ("journal readers", bench_journal.run),
    ):
        if name == "compose stack" and args.compose_runs <= 0:
            continue
        if name == "log rotation" and args.rotation_trials <= 0:
            continue
        if name == "crash recovery" and args.crash_trials <= 0:
            continue
        if name == "chain scenario" and args.scenario_runs <= 0:
            continue
        if name == "journal readers" and not args.journal:
            continue
        print(f"running the {name} benchmark ...", file=sys.stderr, flush=True)
        rows += bench()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    scale_rows = None
    if args.scale:
        print("running the scale benchmark ...", file=sys.stderr, flush=True)
        scale_rows = bench_scale.run()
    text = (
        f"Machine: {machine()}\n\nRun: {when}, `.venv/bin/python -m bench.run --write` "
        f"({time.time() - started:.0f} s)\n\n{table(rows)}\n"
    )
    print(text)
    if scale_rows is not None:
        print(table(scale_rows))
    if args.write:
        (REPO / "BENCHMARKS.md").write_text(
            "# Benchmarks\n\nThe table `python -m bench.run` printed, committed as it came out. "
            "Targets come from the issues; figures from a shared, noisy machine.\n\n"
            + PATHS
            + text
            + "\n"
            + later_sections(scale_rows, when)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
