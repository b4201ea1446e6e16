"""Time to settle: the chain scenario on the shipped configuration.

    .venv/bin/python -m bench.bench_scenario [--runs 1]

Runs the chain of tests/test_scenarios.py (simulator/scenario.py): the whole loop on the
shipped config/model-fleet.yaml, monitoring/ and alert_rules/ files (only addresses, paths,
token and fleet name changed), a simulated GPU on which other work leaves room only for
tinyllama:1.1b. llama3.2:3b fails, the fleet steps to phi3:mini, which fails at once, and
steps on to tinyllama:1.1b when the shipped 60 s cooldown allows. Prints the seconds from
the first model's third error (Docker's timestamp of its first line) to the switch to a model
that fits (committed: the app answers on it), and the second step's margin inside its bound
(cooldown + 10 s after the first). Each run starts a fresh loop (about 1.5 minutes). No
pass/fail.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import Row, median, table
from simulator.scenario import ChainTimes, chain_time_to_settle


def run(runs: int = 1) -> list[Row]:
    """``runs`` chains; the time to settle and the margin (median and max)."""
    results: list[ChainTimes] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="mf-bench-scenario-") as tmp:
            results.append(chain_time_to_settle(Path(tmp)))
    name = f"chain scenario, shipped configuration ({runs} run{'s' if runs > 1 else ''})"
    settle = [r.time_to_settle for r in results]
    margin = [r.margin for r in results]
    return [
        Row(
            name,
            "time to settle: 3rd error of the first model -> on a model that fits",
            f"median {median(settle):.1f} s, max {max(settle):.1f} s",
            "cooldown (60 s) + 2 alert rounds",
        ),
        Row(
            name,
            "second step inside cooldown + 10 s after the first: margin",
            f"median {median(margin):.1f} s, min {min(margin):.1f} s",
            ">= 0 s",
        ),
    ]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(table(run(args.runs)))


if __name__ == "__main__":
    main()
