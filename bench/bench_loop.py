"""Time to remediation: from the third VRAM error to the application on the new model.

Runs the whole loop (simulator/loop.py: host processes, busybox containers without health
checks) with the shipped intervals (2 s exporter scrape, 2 s evaluation of the remediation
rules, 1 s group_wait) and measures each stage, several times:

  line -> metric      the docker log timestamp of the 3rd error's first line (three failed
                      loads of two lines, further apart than the exporter's incident
                      window) -> the exporter's gauge reads 3
  scrape              -> Prometheus has the sample
  rule evaluation     -> the alert's activeAt
  Alertmanager        -> the remediator accepted the webhook
  switch done         -> committed: pulled, unloaded, config written, both containers
                         restarted and verified running (the app restarts inside this stage)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import Row, median, table
from remediator.domain.alerts import parse_time
from simulator.loop import Loop, LoopOptions, sample_values, wait_until

STAGES = ("line -> metric", "scrape", "rule evaluation", "Alertmanager", "webhook -> switch done")


def _docker_time(text: str) -> float:
    return parse_time(text)


def third_error_time(loop: Loop, since: float) -> float:
    """Docker's timestamp of the first line of the newest failed load printed after ``since``."""
    raw = loop.server.logs(timestamps=True, since=int(since) - 1).decode().splitlines()
    stamps = [line.split(" ", 1)[0] for line in raw if "alloc_buffer: allocating" in line]
    return _docker_time(stamps[-1])


def accepted(loop: Loop) -> float:
    """How many webhooks the remediator accepted so far."""
    return sum(
        sample_values(
            loop.remediator_metrics(), "model_fleet_webhook_requests_total", outcome="accepted"
        )
    )


def one_run(loop: Loop) -> dict[str, float]:
    """Three errors, then time each stage until the app runs on the next rung."""
    assert loop.prometheus is not None
    prom = loop.prometheus
    switches = len(loop.history())
    hooks = accepted(loop)
    app_before = loop.started_at(loop.app)
    began = time.time()
    loop.emit_errors(3)
    t0 = third_error_time(loop, began)
    wait_until(lambda: loop.errors_since_start() >= 3, 30, "the exporter's gauge", interval=0.01)
    t1 = time.time()
    query = f'model_fleet_vram_errors_since_start{{fleet="{loop.fleet}"}} >= 3'
    sample = wait_until(lambda: prom.query(query), 30, "the sample in Prometheus", interval=0.02)
    t2 = float(sample[0]["value"][0])  # the scrape's own timestamp
    alert = wait_until(lambda: loop.firing("ModelFleetVRAMErrors"), 30, "the alert", interval=0.02)
    t3 = parse_time(alert[0]["activeAt"])
    wait_until(lambda: accepted(loop) > hooks, 30, "the webhook", interval=0.02)
    t4 = time.time()
    record = wait_until(lambda: loop.history()[switches:], 60, "the switch", interval=0.02)[0]
    t5 = float(record["time"])
    wait_until(lambda: loop.started_at(loop.app) > app_before, 30, "the app restart", interval=0.05)
    t6 = loop.started_at(loop.app).timestamp()
    marks = [t0, t1, t2, t3, t4, t5]
    result = {stage: b - a for stage, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)}
    result["webhook -> app container started"] = t6 - t4
    result["total: 3rd line -> app on the new model"] = t5 - t0
    return result


def settle(loop: Loop) -> None:
    """Back to the top of the ladder, with no alert left."""
    loop.post("/reset", {"reason": "benchmark run"})
    wait_until(lambda: loop.errors_since_start() == 0, 30, "errors back to 0")
    wait_until(lambda: not loop.firing("ModelFleetVRAMErrors"), 60, "the alert to resolve")
    time.sleep(6)  # one more evaluation round, so the next alert is a new one


def run(runs: int = 5) -> list[Row]:
    """Measure ``runs`` remediations; one row per stage (median and max)."""
    results: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="mf-bench-loop-") as tmp,
        Loop(Path(tmp), LoopOptions(cooldown_seconds=0)) as loop,
    ):
        for _ in range(runs):
            settle(loop)
            results.append(one_run(loop))
    name = f"time to remediation, host processes ({runs} runs, shipped intervals)"
    rows = []
    for stage in results[0]:
        values = [r[stage] for r in results]
        rows.append(Row(name, stage, f"median {median(values):.2f} s, max {max(values):.2f} s"))
    return rows


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(table(run(args.runs)))


if __name__ == "__main__":
    main()
