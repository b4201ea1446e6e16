"""Time to remediation on the deployed system: the shipped compose stack on real Docker.

Path measured: the shipped images and compose files (docker-compose.gpu.yml +
docker-compose.monitoring.yml with the CI override of simulator/standins/compose.ci.yml:
stand-in Ollama, Debian's Prometheus and Alertmanager, no GPU), started by scripts/up, with
the shipped intervals and health checks. One run:

  t0   Docker's timestamp of the last line of the third failed load (Ollama's own texts for
       the shipped version, simulator/ollama_corpus.py) on the Ollama container's stdout
       (written with ``docker exec``; the three loads further apart than the exporter's
       incident window, so that each is an error of its own)
  t1   the remediator's status says the next rung (the switch is committed: pulled, config
       written, Ollama restarted and listing the model, the app restarted and naming it)
  t2   the app answers a prompt on the next rung (``GET /?prompt=...`` through Ollama)

and the figure is ``max(t1, t2) - t0``. Between runs the fleet is reset to the top over HTTP
and Prometheus is restarted, so the phase of scrape and rule evaluation against the error
varies from run to run as it does in life.

    .venv/bin/python -m bench.bench_compose [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import docker

from bench.common import Row, median, percentile, table
from remediator.domain.alerts import parse_time
from simulator.loop import ERROR_SPACING_SECONDS
from simulator.ollama_corpus import failed_load, printed_now
from simulator.stack import ComposeStack, build_standin_images

TOP, NEXT = "llama3.2:3b", "phi3:mini"
BENCH = "time to remediation, compose stack"


def _post(url: str, token: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def _model(stack: ComposeStack) -> str:
    return str(stack.status()["current_model"]["name"])


def _app_model(stack: ComposeStack) -> str | None:
    answer = stack.get_json(f"{stack.url('app', 8000)}/?prompt=hello", timeout=10)
    return str(answer["model"]) if answer.get("response") is not None else None


def _quiet(stack: ComposeStack) -> bool:
    """No VRAM-error alert active and the exporter's count back at 0 for the fleet.

    Alerts come from the rule manager (/api/v1/alerts), not the ALERTS series: a restarted
    Prometheus keeps returning the last ALERTS sample from before the restart for the whole
    lookback window (5 min), since shutting down writes no staleness marker.
    """
    prom = stack.url("prometheus", 9090)
    alerts = stack.get_json(f"{prom}/api/v1/alerts")["data"]["alerts"]
    query = f'max(model_fleet_vram_errors_since_start{{fleet="{stack.fleet}"}})'
    errors = stack.get_json(f"{prom}/api/v1/query?query={quote(query)}")["data"]["result"]
    vram_alerts = [
        a
        for a in alerts
        if a["labels"].get("alertname") == "ModelFleetVRAMErrors"
        and a["labels"].get("fleet") == stack.fleet
    ]
    return not vram_alerts and bool(errors) and float(errors[0]["value"][1]) == 0


def prepare_run(stack: ComposeStack) -> None:
    """Back to the top rung, a restarted Prometheus, and nothing firing."""
    if _model(stack) != TOP:
        _post(f"{stack.url('remediator', 8080)}/reset", stack.token, {"fleet": stack.fleet})
    # Prometheus must have scraped the count back at 0 before it stops: after the restart it
    # evaluates the last sample it has until the first new scrape.
    stack.wait(lambda: _quiet(stack), 60, "a quiet fleet after the reset", interval=0.5)
    stack.compose("restart", "prometheus")
    stack.wait(lambda: _quiet(stack), 60, "a quiet fleet after the restart", interval=0.5)
    time.sleep(random.uniform(0, 2))  # a phase of its own against the 2 s scrape and evaluation


PHASES = (
    "3rd line -> alert active (scrape + evaluation)",
    "alert active -> switch begins (Alertmanager, webhook, decision)",
    "switch (pull check, config, restarts, readiness)",
    "switch committed -> app answers",
)


def _switch_seconds(stack: ComposeStack) -> float:
    """The duration the remediator logged for its last switch ("now on X (1.93 s)")."""
    logs = stack.compose("logs", "--tail", "200", "remediator").stdout
    found = re.findall(rf"now on {re.escape(NEXT)} \((\d+\.\d+) s\)", logs)
    return float(found[-1])


def one_run(stack: ComposeStack, client: docker.DockerClient) -> dict[str, float]:
    """Three errors; the total from the third to the app answering on the next rung, by phase.

    The alert's startsAt (its key in the state: fingerprint@startsAt) is Prometheus' first
    evaluation that saw it; the commit time is the history record's.
    """
    server = client.containers.get(stack.container_id("ollama"))
    since = int(time.time()) - 1
    for i in range(3):
        if i:
            time.sleep(ERROR_SPACING_SECONDS)
        stack.write_server_log(printed_now(failed_load()))
    logged = server.logs(timestamps=True, since=since).decode().splitlines()
    t0 = parse_time(logged[-1].split(" ", 1)[0])  # the last line of the third failed load
    stack.wait(lambda: _model(stack) == NEXT, 120, f"the switch to {NEXT}", interval=0.05)
    t1 = time.time()
    stack.wait(lambda: _app_model(stack) == NEXT, 60, f"the app on {NEXT}", interval=0.05)
    t2 = max(t1, time.time())
    last = stack.status()["last_switch"]
    active = parse_time(str(last["alert_key"]).rsplit("@", 1)[1])
    committed = float(last["time"])
    took = _switch_seconds(stack)
    return {
        "total": t2 - t0,
        PHASES[0]: active - t0,
        PHASES[1]: committed - took - active,
        PHASES[2]: took,
        PHASES[3]: t2 - committed,
    }


def run(runs: int = 10) -> list[Row]:
    """Start the stack with scripts/up, time ``runs`` remediations, tear it down."""
    client = docker.from_env()
    build_standin_images(client)
    with tempfile.TemporaryDirectory(prefix="mf-bench-compose-") as tmp:
        stack = ComposeStack(
            Path(tmp),
            project="model-fleet-bench",
            fleet="bench",
            # Back-to-back runs: no cooldown, no hourly cap (the shipped values would refuse).
            fleet_overrides={"cooldown_seconds": 0, "max_switches_per_hour": 1000},
        )
        stack.prepare()
        try:
            stack.run_script("up")
            results: list[dict[str, float]] = []
            for i in range(runs):
                prepare_run(stack)
                try:
                    results.append(one_run(stack, client))
                except TimeoutError:
                    # What the remediator said, for the reader of a failed run.
                    logs = stack.compose("logs", "--tail", "2000", "remediator").stdout
                    # Its own log lines, not gunicorn's access log.
                    own = [line for line in logs.splitlines() if '" 20' not in line][-30:]
                    print(f"run {i + 1} failed; remediator log:", *own, sep="\n", file=sys.stderr)
                    exporter = stack.compose("logs", "--tail", "30", "exporter").stdout
                    print("exporter log:", exporter, sep="\n", file=sys.stderr)
                    prom = stack.url("prometheus", 9090)
                    query = f'model_fleet_vram_errors_since_start{{fleet="{stack.fleet}"}}'
                    for path in (f"/api/v1/query?query={quote(query)}", "/api/v1/alerts"):
                        print(path, stack.get_json(prom + path), file=sys.stderr)
                    raise
                parts = ", ".join(f"{v:.2f}" for v in results[-1].values())
                print(f"run {i + 1}/{runs}: {parts}", file=sys.stderr, flush=True)
        finally:
            stack.down()
            client.close()
    figures = [r["total"] for r in results]
    phases = [
        Row(
            BENCH,
            phase,
            f"median {median([r[phase] for r in results]):.2f} s, "
            f"max {max(r[phase] for r in results):.2f} s",
        )
        for phase in PHASES
    ]
    return [
        *phases,
        Row(BENCH, "runs, total (s)", ", ".join(f"{f:.2f}" for f in figures)),
        Row(BENCH, "median", f"{median(figures):.2f} s", "<= 8 s"),
        Row(BENCH, "p95", f"{percentile(figures, 95):.2f} s", "<= 12 s"),
        Row(BENCH, "min / max", f"{min(figures):.2f} s / {max(figures):.2f} s"),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the table for ``--runs`` runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, Ctrl-C's cousin) still tears the stack down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(table(run(args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
