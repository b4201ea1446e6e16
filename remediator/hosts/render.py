"""``model-fleet render-monitoring``: the inventory -> Prometheus' and Alertmanager's files.

Writes, under the output directory::

    targets/exporters.json     file_sd: one target per host, labelled host=<name>
    targets/remediators.json   the same for the remediators (__scheme__ https when so)
    prometheus.yml             monitoring/prometheus.yml with file_sd jobs, honor_labels
    alertmanager.yml           monitoring/alertmanager.yml with one remediator route per host

The structure is monitoring/'s (tests/test_render.py keeps them in step). The output is a
function of the inventory alone: the same inventory gives byte-identical files, each written
atomically (a temporary file renamed over the old), and one more host adds its target entries,
its route and its receiver without touching what the others rendered. Adding a host is one
inventory line and one command; Prometheus re-reads targets/ by itself, a reload
(SIGHUP or /-/reload) picks up the rest.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Final

import yaml

from fleet_contract.labels import HOST_LABEL
from remediator.hosts.inventory import HostEntry, Inventory

__all__ = ["EXPORTER_JOB", "REMEDIATOR_JOB", "render_files", "write_files"]

# Job names are part of the alert rules (ModelFleetExporterDown, ModelFleetRemediatorDown).
EXPORTER_JOB: Final = "model-fleet-exporter"
REMEDIATOR_JOB: Final = "model-fleet-remediator"
TARGETS_DIR: Final = "targets"

_HEADER: Final = (
    "# Rendered by `model-fleet render-monitoring` from the inventory {name}: edit the\n"
    "# inventory and render again rather than this file (docs/multi-host.md).\n"
)


def _targets(inventory: Inventory, which: str) -> list[dict[str, Any]]:
    entries = []
    for host in inventory.hosts.values():
        labels = {HOST_LABEL: host.name}
        if which == "exporter":
            address = host.exporter
        else:
            address = host.remediator_address
            if host.remediator_scheme == "https":
                labels["__scheme__"] = "https"
        entries.append({"targets": [address], "labels": labels})
    return entries


def _prometheus(inventory: Inventory) -> dict[str, Any]:
    """monitoring/prometheus.yml's settings, the jobs reading targets/ (relative to the file)."""
    return {
        "global": {
            "scrape_interval": "5s",
            "scrape_timeout": "4s",
            "evaluation_interval": "5s",
            "external_labels": {
                "monitor": "model-fleet",
                "runbook_base_url": inventory.runbook_base_url,
            },
        },
        "rule_files": [inventory.rules],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": list(inventory.alertmanagers)}]}]
        },
        "scrape_configs": [
            {
                "job_name": EXPORTER_JOB,
                # The VRAM-error count: the first half of the downgrade delay.
                "scrape_interval": "2s",
                "scrape_timeout": "2s",
                # The service's own host label (model-fleet.yaml's host) is kept; the target's
                # (the inventory's name) labels `up`. check-config --inventory makes them agree.
                "honor_labels": True,
                "file_sd_configs": [{"files": [f"{TARGETS_DIR}/exporters.json"]}],
            },
            {
                "job_name": REMEDIATOR_JOB,
                "honor_labels": True,
                "file_sd_configs": [{"files": [f"{TARGETS_DIR}/remediators.json"]}],
            },
        ],
    }


def _webhook(url: str, credentials_file: str) -> dict[str, Any]:
    return {
        "url": url,
        "send_resolved": True,
        "max_alerts": 0,  # every alert of the group, never truncated
        "http_config": {"authorization": {"type": "Bearer", "credentials_file": credentials_file}},
    }


def _people(inventory: Inventory) -> list[dict[str, Any]]:
    """Where alerts for people go: the inventory's notify_url, else every host's notify.

    Every host's /webhook/notify, so that a notification reaches people while any one host is
    up, above all the ModelFleetRemediatorDown of a host that cannot relay its own. Each
    remediator forwards what it gets, so hosts that forward to the same chat deliver it once
    per host: a notify_url (a chat gateway, not a host) delivers it once.
    """
    if inventory.notify_url is not None:
        return [_webhook(inventory.notify_url, inventory.credentials_file)]
    return [
        _webhook(f"{host.remediator}/webhook/notify", host.credentials_file)
        for host in inventory.hosts.values()
    ]


def _receiver_name(host: HostEntry) -> str:
    return f"remediator-{host.name}"


def _alertmanager(inventory: Inventory) -> dict[str, Any]:
    """monitoring/alertmanager.yml with the remediator's route and receiver made per host."""
    hosts = inventory.hosts.values()
    return {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": "humans",
            "group_by": [HOST_LABEL, "fleet", "alertname"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": [
                *(_remediator_route(host) for host in hosts),
                # A remediation alert no host claims (a fleet missing from the inventory) must
                # not switch anything: people hear of it instead.
                {"receiver": "pager", "matchers": ['severity="critical"']},
            ],
        },
        "receivers": [
            *(_remediator_receiver(host) for host in hosts),
            {"name": "humans", "webhook_configs": _people(inventory)},
            {"name": "pager", "webhook_configs": _people(inventory)},
        ],
        "inhibit_rules": _inhibit_rules(),
    }


def _remediator_route(host: HostEntry) -> dict[str, Any]:
    """The route of ``host``'s remediation alerts to its own remediator."""
    return {
        "receiver": _receiver_name(host),
        "matchers": [
            'remediation=~"downgrade|upgrade"',
            f'{HOST_LABEL}="{host.name}"',
            f'fleet=~"^({"|".join(host.fleets)})$"',
        ],
        # As the shipped file: no wait, flush every second, repeat far inside the key TTL.
        "group_wait": "1s",
        "group_interval": "1s",
        "repeat_interval": "24h",
    }


def _remediator_receiver(host: HostEntry) -> dict[str, Any]:
    return {
        "name": _receiver_name(host),
        "webhook_configs": [
            _webhook(f"{host.remediator}/webhook/alertmanager", host.credentials_file)
        ],
    }


def _inhibit_rules() -> list[dict[str, Any]]:
    """monitoring/alertmanager.yml's inhibitions, each within one host's fleet or GPU."""
    return [
        {
            "source_matchers": ['alertname="ModelFleetAtSmallestModel"'],
            "target_matchers": ['remediation="downgrade"'],
            "equal": [HOST_LABEL, "fleet"],
        },
        {
            "source_matchers": ['alertname="ModelFleetSwitchFlapping"'],
            "target_matchers": ['remediation="upgrade"'],
            "equal": [HOST_LABEL, "fleet"],
        },
        {
            "source_matchers": ['alertname="GPUVRAMNearlyFull"'],
            "target_matchers": ['alertname="GPUVRAMFillingUp"'],
            "equal": [HOST_LABEL, "gpu", "uuid"],
        },
    ]


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def render_files(inventory: Inventory) -> dict[str, str]:
    """Relative path -> content of every file ``render-monitoring`` writes."""
    header = _HEADER.format(name=Path(inventory.source).name)
    return {
        f"{TARGETS_DIR}/exporters.json": _json(_targets(inventory, "exporter")),
        f"{TARGETS_DIR}/remediators.json": _json(_targets(inventory, "remediator")),
        "prometheus.yml": header + _yaml(_prometheus(inventory)),
        "alertmanager.yml": header + _yaml(_alertmanager(inventory)),
    }


def write_files(inventory: Inventory, out: str | os.PathLike[str]) -> list[Path]:
    """Write the rendered files under ``out``, each atomically; return those that changed."""
    root = Path(out)
    changed = []
    for relative, content in render_files(inventory).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if path.read_text(encoding="utf-8") == content:
                continue  # unchanged: not even its mtime moves (file_sd watches it)
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        changed.append(path)
    return changed
