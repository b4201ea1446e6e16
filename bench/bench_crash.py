"""Crash recovery: SIGKILL of the whole remediator at random moments of a switch, many times.

    .venv/bin/python -m bench.bench_crash [--trials 200] [--max-delay 3.0] [--seed 13]

Each trial starts ``model-fleet serve`` (gunicorn, 2 workers, its own session) on a fleet of
two busybox containers on the real Docker engine with the Ollama stand-in as its model
server (simulator/crash.py), sends a fresh downgrade alert, SIGKILLs the process group after
a random delay, starts the service again and waits until its start-up recovery has resolved
the open journal entry. Then the state file, the app config, the running app, the model
server container and the stand-in's loaded models must agree. Prints the trials, the
disagreements (the target is 0), how many were rolled forward and back (the rest died before
the intent or after the commit), the time from the restart to a resolved state, and the cost
of one journal step record. No pass/fail.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import docker

from bench.common import Row, percentile, table
from remediator.config import load_config
from remediator.domain.records import SwitchJournal
from remediator.store.state import StateStore
from remediator.switch.journal import Journal
from simulator.crash import LADDER, CrashRig
from simulator.images import build_busybox_image

BENCH_LABEL = "model-fleet.bench"


def step_cost(rig: CrashRig, records: int = 200) -> list[float]:
    """Seconds per journal step record (one state transaction) on the rig's state file."""
    config = load_config(str(rig.config))
    store = StateStore(config)
    journal = Journal(store, rig.fleet)
    journal.open(SwitchJournal(time.time(), LADDER[0], LADDER[1], 1, "down", "manual", "bench"))
    for i in range(records):
        journal.record("bench", str(i))
    with store.transaction() as state:
        state.fleets[rig.fleet].journal = None
    return journal.write_seconds


def run(trials: int = 200, max_delay: float = 3.0, seed: int = 13) -> list[Row]:
    """Run the trials; return the figures as rows."""
    client = docker.from_env(timeout=60)
    build_busybox_image(client)
    chance = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="model-fleet-bench-crash-"))
    rig = CrashRig(workdir, client, labels={BENCH_LABEL: "crash"})
    outcomes = {"rolled_forward": 0, "rolled_back": 0, "failed": 0, "nothing open": 0}
    recovery_times: list[float] = []
    disagreements = 0
    try:
        for trial in range(trials):
            if LADDER.index(rig.state_model()) >= len(LADDER) - 1:
                rig.reset()
            rig.serve()
            rig.alert()
            time.sleep(chance.uniform(0.0, max_delay))
            rig.kill()
            started = time.monotonic()
            rig.serve()
            rig.wait_resolved(60)
            recovery_times.append(time.monotonic() - started)
            counted = {k: v for k, v in rig.recoveries().items() if v}
            for outcome in counted:
                outcomes[outcome] += 1
            if not counted:
                outcomes["nothing open"] += 1
            problems = rig.disagreements()
            if problems:
                disagreements += 1
                print(f"trial {trial}: DISAGREEMENT: {problems}", file=sys.stderr, flush=True)
            rig.kill()
            if (trial + 1) % 10 == 0:
                print(f"{trial + 1}/{trials} trials: {outcomes}", file=sys.stderr, flush=True)
        cost = step_cost(rig)
    finally:
        rig.close()
    name = f"crash recovery ({trials} random SIGKILLs, gunicorn 2 workers)"
    return [
        Row(name, "trials", str(trials)),
        Row(name, "disagreements after recovery", str(disagreements), "0"),
        Row(name, "rolled forward", str(outcomes["rolled_forward"])),
        Row(name, "rolled back", str(outcomes["rolled_back"])),
        Row(name, "recovery failed", str(outcomes["failed"]), "0"),
        Row(
            name,
            "nothing open (killed before the intent or after the commit)",
            str(outcomes["nothing open"]),
        ),
        Row(
            name,
            "restart -> resolved (p50 / p95)",
            f"{percentile(recovery_times, 50):.2f} s / {percentile(recovery_times, 95):.2f} s",
        ),
        Row(
            name,
            "journal step record (p50 / p95)",
            f"{percentile(cost, 50) * 1000:.1f} ms / {percentile(cost, 95) * 1000:.1f} ms",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=200, help="random kills (default 200)")
    parser.add_argument(
        "--max-delay", type=float, default=3.0, help="kill within this many seconds of the alert"
    )
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    started = time.time()
    rows = run(args.trials, args.max_delay, args.seed)
    print(table(rows))
    print(f"\n({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
