"""Live figures for the tests of decisions and status fed from a real Prometheus.

:func:`live_figures` is the exporter's exposition: each GPU's free VRAM, each fleet's VRAM
errors since start (one series with its own, older timestamp) and the models loaded with their
offload; :func:`live_prometheus` runs a real Prometheus that scrapes it. Fleets ``tight``,
``roomy``, ``spacious`` and ``unseen`` sit on GPUs 0, 1, 2 and 7 (7 has no series).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from remediator.app.remediator import Remediator
from remediator.config import Config, FleetConfig, parse_config
from remediator.domain.alerts import WebhookAlert, parse_webhook
from remediator.store.state import StateStore
from remediator.switch.plan import SwitchPlan
from simulator.prom_env import MetricsEndpoint, Prometheus, start_prometheus, wait_for

MIB = 1024 * 1024
# Free VRAM per GPU. From llama3.2:3b (2048 MiB) with 512 MiB headroom, phi3:mini (2200 MiB)
# fits when free + 2048 >= 2200 + 512, i.e. from 664 MiB free on.
FREE_MIB = {"0": 300, "1": 1000, "2": 4000}
# Errors since start per (fleet, container): the fleet's figure is its worst container.
ERRORS = {("tight", "ollama"): 2, ("tight", "ollama-b"): 1, ("roomy", "ollama"): 1}
# roomy's error series carries its own timestamp, this old: the status must tell its age.
OLD_SECONDS = 45
# tight's server has llama3.2:3b loaded, 548 of its 2048 MiB offloaded to system memory.
LOADED = {("tight", "llama3.2:3b"): (1500 * MIB, 548 * MIB)}
# The host the remediator under test runs for: every series above carries it.
HOST = "gpu-live"
# Another GPU host scraped by the same Prometheus, with the same GPU and fleet names and other
# figures: a remediator that read them would decide for roomy with 10 MiB free and 7 errors.
OTHER_HOST = "gpu-other"
OTHER_FREE_MIB = {"1": 10}
OTHER_ERRORS = {("roomy", "ollama"): 7}
# Errors of each series before its server last served a request: since_start counts them.
SERVED_BEFORE = 10


def live_figures(scrape: int) -> str:
    """The exporter's figures, as Prometheus text (explicit timestamps where told)."""
    old = int((time.time() - OLD_SECONDS) * 1000)
    lines = ["# TYPE model_fleet_gpu_memory_free_bytes gauge"]
    for host, free in ((HOST, FREE_MIB), (OTHER_HOST, OTHER_FREE_MIB)):
        for gpu, mib in free.items():
            labels = f'host="{host}",gpu="{gpu}",uuid="GPU-{host}-{gpu}",name="Fake T4"'
            lines.append(f"model_fleet_gpu_memory_free_bytes{{{labels}}} {mib * MIB}")
    # The errors counted as the shipped counting (consecutive) counts them; since the start,
    # SERVED_BEFORE more came before the server last served a request.
    for metric, more in (
        ("model_fleet_vram_errors_consecutive", 0),
        ("model_fleet_vram_errors_since_start", SERVED_BEFORE),
    ):
        lines.append(f"# TYPE {metric} gauge")
        for host, errors in ((HOST, ERRORS), (OTHER_HOST, OTHER_ERRORS)):
            for (fleet, container), count in errors.items():
                stamp = f" {old}" if fleet == "roomy" else ""
                labels = f'host="{host}",fleet="{fleet}",container="{container}"'
                lines.append(f"{metric}{{{labels}}} {count + more}{stamp}")
    lines.append("# TYPE model_fleet_model_memory_bytes gauge")
    for (fleet, model), (vram, system) in LOADED.items():
        for location, size in (("vram", vram), ("system", system)):
            labels = f'host="{HOST}",fleet="{fleet}",model="{model}",location="{location}"'
            lines.append(f"model_fleet_model_memory_bytes{{{labels}}} {size}")
    return "\n".join(lines) + "\n"


@contextmanager
def live_prometheus() -> Iterator[Prometheus]:
    """A real Prometheus that scrapes :func:`live_figures` every second."""
    with MetricsEndpoint(live_figures) as exporter:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "exporter", "static_configs": [{"targets": [exporter.target]}]}
            ],
        }
        with start_prometheus(config) as prom:
            wait_for(
                lambda: (
                    len(prom.query("model_fleet_vram_errors_since_start"))
                    == len(ERRORS) + len(OTHER_ERRORS)
                ),
                45,
                "Prometheus to scrape the live figures",
            )
            yield prom


class Recorder:
    """Actions that only record the plans they are given."""

    def __init__(self) -> None:
        self.plans: list[SwitchPlan] = []
        self.lock = threading.Lock()

    def for_fleet(self, fleet: FleetConfig) -> Recorder:
        return self

    def execute(self, plan: SwitchPlan, dry_run: bool, record: object = None) -> list[str]:
        with self.lock:
            self.plans.append(plan)
        return [f"switched to {plan.to_rung.name}"]


FLEETS: dict[str, dict[str, Any]] = {
    "tight": {"gpu": 0, "policy": "fits"},
    "roomy": {"gpu": 1, "policy": "fits"},
    "spacious": {"gpu": 2, "policy": "fits"},
    "unseen": {"gpu": 7, "policy": "fits"},  # no series of GPU 7 in Prometheus
}


def make_config(tmp_path: Path, url: str | None, timeout: float = 2.0) -> Config:
    auto = {"enabled": True, "quiet_seconds": 0, "failed_quiet_seconds": 0}
    fleets = {
        name: {**settings, "cooldown_seconds": 0, "auto_upgrade": auto}
        for name, settings in FLEETS.items()
    }
    return parse_config(
        {
            "host": HOST,
            "state_file": str(tmp_path / "state.json"),
            "prometheus": {"url": url, "timeout_seconds": timeout},
            "fleets": fleets,
        },
        "test",
    )


def put_on_rung(config: Config, fleet: str, index: int, errors: int = 0) -> None:
    with StateStore(config).transaction() as state:
        fs = state.fleets[fleet]
        fs.index, fs.current_model = index, config.fleets[fleet].ladder[index].name
        fs.vram_error_count = errors


def webhook(fleet: str, remediation: str, value: str | None = None) -> list[WebhookAlert]:
    body = {
        "version": "4",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "A", "fleet": fleet, "remediation": remediation},
                "annotations": {} if value is None else {"value": value},
                "startsAt": "2026-11-27T03:10:00Z",
                "fingerprint": f"{fleet}-{remediation}",
            }
        ],
    }
    return parse_webhook(body)


def judge(remediator: Remediator, alerts: list[WebhookAlert]) -> tuple[list[Any], list[Any]]:
    """Deliver ``alerts``, run what they leave to do; (accepted, ignored) as answered."""
    acceptance = remediator.accept_alerts(alerts)
    for work in acceptance.pending:
        work.run()
    return acceptance.accepted, acceptance.ignored
