"""People hear of switches: a real Alertmanager with the shipped routing delivers the alerts
for people to a real remediator (``model-fleet serve``), which forwards them to an HTTP
endpoint in this test, one stack per notification format.

The human routes wait the shipped group_wait (30 s) before the first delivery: both stacks
run at once and every alert is posted before the first wait, so the module waits once.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from remediator.domain.alerts import parse_webhook
from remediator.report.notifications import alert_line
from simulator.prom_env import (
    Alertmanager,
    render_alertmanager_config,
    start_alertmanager,
    wait_for,
)
from simulator.services import RunningRemediator, start_remediator
from tests.support.http_sink import HttpSink

pytestmark = pytest.mark.slow

TOKEN = "notify-e2e-token"
FORMATS = ("generic", "slack")
# The alerts as Prometheus sends them: the rule's labels, rendered annotations.
SWITCHED = {
    "labels": {
        "alertname": "ModelFleetModelSwitched",
        "fleet": "default",
        "direction": "down",
        "trigger": "alert",
        "severity": "info",
    },
    "annotations": {
        "summary": "Fleet default switched models (down, trigger alert)",
        "description": "Fleet default made 1 switch(es) down (trigger alert) in the last 2 "
        "minutes; it now runs phi3:mini. See `model-fleet history` for the reason.",
    },
}
FAILED = {
    "labels": {
        "alertname": "ModelFleetRemediationFailed",
        "fleet": "default",
        "step": "pull",
        "severity": "critical",
    },
    "annotations": {"summary": "Fleet default: remediation step pull failed"},
}
DOWNGRADE = {
    "labels": {
        "alertname": "ModelFleetVRAMErrors",
        "fleet": "default",
        "container": "ollama",
        "started_at": "2026-11-27T10:00:00Z",
        "remediation": "downgrade",
        "severity": "warning",
    },
    "annotations": {"value": "3", "summary": "Fleet default: 3 VRAM errors"},
}


@dataclass
class Stack:
    """Alertmanager -> remediator -> chat endpoint; the switch webhook goes to ``switches``."""

    alertmanager: Alertmanager
    remediator: RunningRemediator
    chat: HttpSink
    switches: HttpSink


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read()) if "json" in resp.headers["Content-Type"] else resp.read()


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stack]]:
    with ExitStack() as stack:
        started: dict[str, Stack] = {}
        for fmt in FORMATS:
            workdir = tmp_path_factory.mktemp(f"notify-{fmt}")
            token_file = workdir / "token"
            token_file.write_text(TOKEN + "\n")
            chat, switches = HttpSink(), HttpSink("/webhook/alertmanager")
            stack.callback(chat.close)
            stack.callback(switches.close)
            # No model server: nothing here may switch (the switch webhook goes to the test).
            remediator = start_remediator(
                workdir,
                "http://127.0.0.1:9",
                TOKEN,
                workers=2,
                notifications={"webhook_url": chat.url, "format": fmt},
            )
            stack.callback(remediator.stop)
            config = render_alertmanager_config(
                webhook_url=switches.url,
                credentials_file=token_file,
                notify_url=f"{remediator.url}/webhook/notify",
            )
            am = stack.enter_context(start_alertmanager(config))
            started[fmt] = Stack(am, remediator, chat, switches)
        now = datetime.now(UTC)
        times = {
            "startsAt": _iso(now - timedelta(seconds=5)),
            "endsAt": _iso(now + timedelta(minutes=5)),
        }
        alerts = [{**a, **times} for a in (SWITCHED, FAILED, DOWNGRADE)]
        for s in started.values():
            s.alertmanager.post_alerts(alerts)
        # group_wait of the human routes (30 s) + delivery; the switch route is much faster.
        for s in started.values():
            wait_for(lambda s=s: len(s.chat.bodies()) >= 2, 60, "two deliveries to the chat")
        yield started


def test_generic_format_forwards_the_alertmanager_payloads(stacks: dict[str, Stack]) -> None:
    bodies = {b["receiver"]: b for b in stacks["generic"].chat.bodies()}
    assert set(bodies) == {"humans", "pager"}
    for receiver, sent in (("humans", SWITCHED), ("pager", FAILED)):
        body = bodies[receiver]
        assert body["version"] == "4" and body["status"] == "firing"
        assert body["groupLabels"] == {
            "fleet": "default",
            "alertname": sent["labels"]["alertname"],
        }
        [alert] = body["alerts"]
        assert alert["labels"] == sent["labels"]
        assert alert["annotations"] == sent["annotations"]


def test_slack_format_forwards_a_text_per_delivery(stacks: dict[str, Stack]) -> None:
    texts = sorted(b["text"] for b in stacks["slack"].chat.bodies())
    assert texts == [
        "[FIRING] ModelFleetModelSwitched fleet default (info): "
        "Fleet default switched models (down, trigger alert)",
        "[FIRING] ModelFleetRemediationFailed fleet default (critical): "
        "Fleet default: remediation step pull failed",
    ]
    assert all(set(b) == {"text"} for b in stacks["slack"].chat.bodies())


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_status_shows_the_notifications(stacks: dict[str, Stack], fmt: str) -> None:
    status = _get(f"{stacks[fmt].remediator.url}/status")
    seen = {
        (n["alertname"], n["severity"], n["status"], n["outcome"]) for n in status["notifications"]
    }
    assert seen == {
        ("ModelFleetModelSwitched", "info", "firing", "forwarded"),
        ("ModelFleetRemediationFailed", "critical", "firing", "forwarded"),
    }  # fmt: skip
    metrics = _get(f"{stacks[fmt].remediator.url}/metrics").decode()
    # Every sample carries the remediator's host (fleet_contract.labels.HOST_LABEL).
    assert re.search(
        r'model_fleet_notifications_total\{host="[^"]+",outcome="forwarded"\} 2\.0', metrics
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_downgrade_alert_goes_to_the_switch_webhook_only(
    stacks: dict[str, Stack], fmt: str
) -> None:
    s = stacks[fmt]
    [delivery] = s.switches.requests
    assert delivery["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert [a["labels"]["remediation"] for a in delivery["body"]["alerts"]] == ["downgrade"]
    forwarded = json.dumps(s.chat.bodies())
    assert "ModelFleetVRAMErrors" not in forwarded
    status = _get(f"{s.remediator.url}/status")
    assert "ModelFleetVRAMErrors" not in {n["alertname"] for n in status["notifications"]}


def test_the_remediator_logs_each_alert(stacks: dict[str, Stack]) -> None:
    log = Path(stacks["generic"].remediator.log).read_text()
    expected = parse_webhook(
        {"version": "4", "alerts": [{**SWITCHED, "status": "firing", "fingerprint": "f",
                                     "startsAt": "2026-11-27T00:00:00Z"}]}
    )  # fmt: skip
    assert f"WARNING remediator.notifications: notify: {alert_line(expected[0])}" in log
