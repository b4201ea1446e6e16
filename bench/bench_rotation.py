"""Counts across log rotation: lines written, counted, recovered and reported as gaps.

    .venv/bin/python -m bench.bench_rotation [--trials 3]

A busybox model server prints numbered OOM lines into json-file logs, paced and in bursts,
while the exporter's log watcher follows it (simulator/rotation.py); every trial runs on the
real Docker engine of this machine. tests/test_exporter_rotation.py runs one of each.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from bench.common import Row, machine, table
from simulator.images import build_busybox_image
from simulator.rotation import Mode, RotationResult, rotation_trial

# (mode, lines, log options): the sizes, then the recommended ones
CASES: tuple[tuple[Mode, int, dict[str, str]], ...] = (
    ("paced", 4000, {"max-size": "1m", "max-file": "3"}),
    ("burst", 20000, {"max-size": "1m", "max-file": "3"}),
    ("paced", 4000, {"max-size": "10m", "max-file": "5"}),
    ("burst", 20000, {"max-size": "10m", "max-file": "5"}),
    ("burst", 100000, {"max-size": "10m", "max-file": "5"}),
)


def summary(results: list[RotationResult]) -> str:
    """Totals over the trials of one case."""
    written = sum(r.written for r in results)
    counted = sum(r.counted for r in results)
    over = sum(max(0, r.counted - r.written) for r in results)
    return (
        f"written {written}, counted {counted} (over {over}), recovered "
        f"{sum(r.recovered for r in results)}, gaps {sum(r.gaps for r in results)}, "
        f"Docker kept {sum(r.retained for r in results)}; exact "
        f"{sum(r.exact for r in results)}/{len(results)}, accounted "
        f"{sum(r.accounted for r in results)}/{len(results)}"
    )


def run(trials: int = 3, client: Any = None) -> list[Row]:
    """Run every case ``trials`` times; one row per case."""
    if client is None:
        import docker

        client = docker.from_env(timeout=120)
    build_busybox_image(client)
    rows = []
    for mode, lines, opts in CASES:
        results = [rotation_trial(client, mode, lines, log_opts=opts) for _ in range(trials)]
        rows.append(
            Row(
                "log rotation",
                f"{mode}, {lines} lines, json-file {results[0].log_opts}",
                summary(results),
                "counted exact, or the shortfall reported (gaps > 0); never over",
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trials and print one table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args(argv)
    rows = run(args.trials)
    print(f"machine: {machine()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
