"""Test copies of the shipped monitoring configs, with only the addresses rewritten.

The render_* functions turn the compose configs of monitoring/ into test copies by rewriting
only the addresses (targets, webhook URLs, token file, rule files); ``render_rules`` shortens
only the ``for`` of named alerts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from simulator.local_http import free_port

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = REPO / "monitoring" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "monitoring" / "alertmanager.yml"
RULES_FILE = REPO / "alert_rules" / "model_fleet.rules.yml"

EXPORTER_JOB = "model-fleet-exporter"
REMEDIATOR_JOB = "model-fleet-remediator"
REMEDIATOR_RECEIVER = "remediator"
# Where monitoring/alertmanager.yml reaches the remediator under compose.
COMPOSE_REMEDIATOR_URL = "http://remediator:8080/"


def _job(config: dict[str, Any], job: str) -> dict[str, Any]:
    for scrape in config["scrape_configs"]:
        if scrape["job_name"] == job:
            return scrape  # type: ignore[no-any-return]
    raise KeyError(f"no scrape job {job!r} in the Prometheus config")


def render_prometheus_config(
    *,
    exporter: str,
    remediator: str,
    alertmanager: str | None = None,
    rule_files: Sequence[Path] = (RULES_FILE,),
    source: Path = PROMETHEUS_CONFIG,
) -> dict[str, Any]:
    """monitoring/prometheus.yml with test targets ("127.0.0.1:PORT") and rule file paths.

    Only the two scrape targets, the Alertmanager target and rule_files change; intervals,
    job names and everything else stay as compose runs them. No Alertmanager: a local port
    nothing listens on, so notifications fail fast instead of resolving a compose host name.
    """
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    _job(config, EXPORTER_JOB)["static_configs"] = [{"targets": [exporter]}]
    _job(config, REMEDIATOR_JOB)["static_configs"] = [{"targets": [remediator]}]
    am = alertmanager or f"127.0.0.1:{free_port()}"
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [am]}]
    config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    return config


def render_alertmanager_config(
    *,
    webhook_url: str,
    credentials_file: Path,
    notify_url: str | None = None,
    source: Path = ALERTMANAGER_CONFIG,
) -> dict[str, Any]:
    """monitoring/alertmanager.yml with the remediator's URLs and token file rewritten.

    The remediator receiver posts to ``webhook_url``; the human receivers (their webhooks go
    to the remediator's /webhook/notify) post to ``notify_url``, or to a local port nothing
    listens on when None, so that tests of the switch webhook see nothing else.
    """
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    found = False
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if not hook["url"].startswith(COMPOSE_REMEDIATOR_URL):
                continue
            if receiver["name"] == REMEDIATOR_RECEIVER:
                hook["url"], found = webhook_url, True
            else:
                hook["url"] = notify_url or f"http://127.0.0.1:{free_port()}/webhook/notify"
            hook["http_config"]["authorization"]["credentials_file"] = str(credentials_file)
    if not found:
        raise KeyError(f"no receiver {REMEDIATOR_RECEIVER!r} in the Alertmanager config")
    return config


def render_rules(durations: Mapping[str, str], source: Path = RULES_FILE) -> dict[str, Any]:
    """alert_rules/model_fleet.rules.yml with the ``for`` of the alerts named in ``durations``
    (alert name -> Prometheus duration) replaced: a fast test copy. Nothing else changes."""
    doc: dict[str, Any] = yaml.safe_load(source.read_text())
    rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}
    for name, duration in durations.items():
        if name not in rules:
            raise KeyError(f"no alert {name!r} in {source.name}")
        rules[name]["for"] = duration
    return doc


def config_text(config: str | Mapping[str, Any]) -> str:
    """``config`` as YAML text (given as text or as a mapping)."""
    return config if isinstance(config, str) else yaml.safe_dump(dict(config), sort_keys=False)
