"""monitoring/: promtool and amtool checks, routing cases, and a real Alertmanager delivering
the webhook with the bearer token to a receiver in the test."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediator.config import default_config
from simulator.prom_env import (
    ALERTMANAGER_CONFIG,
    EXPORTER_JOB,
    PROMETHEUS_CONFIG,
    REMEDIATOR_JOB,
    REMEDIATOR_RECEIVER,
    REPO,
    RULES_FILE,
    Alertmanager,
    render_alertmanager_config,
    render_prometheus_config,
    start_alertmanager,
    wait_for,
)

TOKEN = "test-token-5f0c"
HUMAN_RECEIVERS = ("humans", "pager")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def _seconds(duration: str) -> float:
    """A Prometheus duration ("1s", "5m", "24h", "1h30m") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def _am_config() -> dict[str, Any]:
    return yaml.safe_load(ALERTMANAGER_CONFIG.read_text())  # type: ignore[no-any-return]


def _remediator_route() -> dict[str, Any]:
    routes = [r for r in _am_config()["route"]["routes"] if r["receiver"] == REMEDIATOR_RECEIVER]
    assert len(routes) == 1
    route: dict[str, Any] = routes[0]
    return route


def _remediator_webhook() -> dict[str, Any]:
    receivers = {r["name"]: r for r in _am_config()["receivers"]}
    return receivers[REMEDIATOR_RECEIVER]["webhook_configs"][0]  # type: ignore[no-any-return]


# --- Prometheus -----------------------------------------------------------------------------


def test_promtool_check_config_accepts_the_compose_file() -> None:
    result = _run("promtool", "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config_accepts_the_test_copy_with_its_rules(tmp_path: Path) -> None:
    config = render_prometheus_config(
        exporter="127.0.0.1:19842", remediator="127.0.0.1:18080", alertmanager="127.0.0.1:19093"
    )
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = _run("promtool", "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool loads the rule files the config names: proof the test copy points at ours.
    assert str(RULES_FILE) in result.stdout and "SUCCESS: 15 rules found" in result.stdout


def test_prometheus_test_copy_changes_only_the_addresses() -> None:
    original = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    rendered = render_prometheus_config(
        exporter="127.0.0.1:1", remediator="127.0.0.1:2", alertmanager="127.0.0.1:3"
    )
    jobs = {s["job_name"]: s for s in rendered["scrape_configs"]}
    assert jobs[EXPORTER_JOB]["static_configs"] == [{"targets": ["127.0.0.1:1"]}]
    assert jobs[REMEDIATOR_JOB]["static_configs"] == [{"targets": ["127.0.0.1:2"]}]
    alerting = rendered["alerting"]["alertmanagers"][0]
    assert alerting["static_configs"] == [{"targets": ["127.0.0.1:3"]}]
    assert rendered["rule_files"] == [str(RULES_FILE)]
    # Put the compose values back: what remains must be the compose file, unchanged.
    orig_jobs = {s["job_name"]: s for s in original["scrape_configs"]}
    for job in (EXPORTER_JOB, REMEDIATOR_JOB):
        jobs[job]["static_configs"] = orig_jobs[job]["static_configs"]
    alerting["static_configs"] = original["alerting"]["alertmanagers"][0]["static_configs"]
    rendered["rule_files"] = original["rule_files"]
    assert rendered == original


def test_compose_targets_and_rule_location() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {s["job_name"]: s["static_configs"][0]["targets"] for s in config["scrape_configs"]}
    assert targets == {EXPORTER_JOB: ["exporter:9842"], REMEDIATOR_JOB: ["remediator:8080"]}
    alerting = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alerting == ["alertmanager:9093"]


def test_worst_case_reaction_to_the_third_error_is_seconds() -> None:
    """Exporter scrape + remediation rule evaluation + the route's group_wait (no `for`)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    g = config["global"]
    (exporter,) = [s for s in config["scrape_configs"] if s["job_name"] == EXPORTER_JOB]
    scrape = _seconds(exporter.get("scrape_interval", g["scrape_interval"]))
    rules = yaml.safe_load(RULES_FILE.read_text())
    (group,) = [grp for grp in rules["groups"] if grp["name"] == "model-fleet-remediation"]
    evaluation = _seconds(group.get("interval", g["evaluation_interval"]))
    route = _remediator_route()
    reaction = scrape + evaluation + _seconds(route["group_wait"])
    assert reaction <= 6, f"{reaction:g} s from the third error to the webhook"
    # The route must flush faster than the rules evaluate (see alertmanager.yml's comment).
    assert _seconds(route["group_interval"]) < evaluation


# --- Alertmanager: static checks and routing ----------------------------------------------


def test_amtool_check_config_accepts_the_compose_file() -> None:
    result = _run("amtool", "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


ROUTING_CASES = [
    ({"alertname": "ModelFleetVRAMErrors", "remediation": "downgrade", "fleet": "default",
      "severity": "warning"}, "remediator"),
    ({"alertname": "ModelFleetCanStepUp", "remediation": "upgrade", "fleet": "gpu1",
      "severity": "info"}, "remediator"),
    ({"alertname": "ModelFleetCPUOffload", "remediation": "downgrade", "kind": "offload",
      "fleet": "default", "model": "llama3.2:3b", "severity": "warning"}, "remediator"),
    # The regex is anchored: a look-alike value is not a remediation.
    ({"alertname": "Other", "remediation": "downgrade-maybe", "fleet": "default"}, "humans"),
    ({"alertname": "ModelFleetAtSmallestModel", "fleet": "default", "severity": "critical"},
     "pager"),
    ({"alertname": "ModelFleetRemediationFailed", "fleet": "default", "step": "pull",
      "severity": "critical"}, "pager"),
    ({"alertname": "ModelFleetExporterDown", "job": "model-fleet-exporter",
      "severity": "critical"}, "pager"),
    ({"alertname": "GPUVRAMNearlyFull", "gpu": "0", "severity": "warning"}, "humans"),
    ({"alertname": "ModelFleetSwitchFlapping", "fleet": "default", "severity": "warning"},
     "humans"),
    ({"alertname": "GPUVRAMFillingUp", "gpu": "0", "severity": "info"}, "humans"),
    # Every switch, for people: never the remediator's webhook, never the pager.
    ({"alertname": "ModelFleetModelSwitched", "fleet": "default", "direction": "down",
      "trigger": "alert", "severity": "info"}, "humans"),
    ({"alertname": "ModelFleetRemediatorDown", "job": "model-fleet-remediator",
      "severity": "critical"}, "pager"),
    ({"alertname": "ModelFleetNVMLDown", "job": "model-fleet-exporter", "severity": "warning"},
     "humans"),
    ({"alertname": "ModelFleetLogStreamDown", "fleet": "default", "container": "ollama",
      "severity": "warning"}, "humans"),
    ({"alertname": "ModelFleetLogLinesLost", "fleet": "default", "container": "ollama",
      "severity": "warning"}, "humans"),
    ({"alertname": "ModelFleetProbeFailing", "fleet": "default", "model": "phi3:mini",
      "severity": "warning"}, "humans"),
]  # fmt: skip


@pytest.mark.parametrize(("labels", "receiver"), ROUTING_CASES, ids=lambda v: str(v))
def test_amtool_routes(labels: dict[str, str], receiver: str) -> None:
    pairs = [f"{k}={v}" for k, v in labels.items()]
    result = _run(
        "amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receiver}", *pairs,
    )  # fmt: skip
    assert result.returncode == 0, f"{labels} -> {result.stdout.strip()}, expected {receiver}"
    assert result.stdout.strip() == receiver


def test_every_alert_of_the_rules_has_a_routing_case_with_its_labels() -> None:
    rules = yaml.safe_load(RULES_FILE.read_text())
    alerts = {r["alert"]: r["labels"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    cases = {labels["alertname"]: labels for labels, _ in ROUTING_CASES}
    assert set(alerts) <= set(cases), f"no routing case for {set(alerts) - set(cases)}"
    for name, static in alerts.items():
        assert static.items() <= cases[name].items(), f"{name}: the case lacks {static}"


def test_remediator_route_and_webhook_settings() -> None:
    route = _remediator_route()
    assert route["matchers"] == ['remediation=~"downgrade|upgrade"']
    assert route.get("continue", False) is False
    root = _am_config()["route"]
    assert route.get("group_by", root["group_by"]) == ["host", "fleet", "alertname"]
    assert _seconds(route["group_wait"]) <= 5
    # A repeat carries the same fingerprint+startsAt: the remediator must still remember it.
    ttl = default_config().alert_key_ttl_seconds
    assert _seconds(route["repeat_interval"]) < ttl
    hook = _remediator_webhook()
    assert hook["url"] == "http://remediator:8080/webhook/alertmanager"
    assert hook["send_resolved"] is True
    auth = hook["http_config"]["authorization"]
    assert auth == {"type": "Bearer", "credentials_file": "/run/secrets/model_fleet_token"}


def test_inhibit_rules() -> None:
    rules = _am_config()["inhibit_rules"]
    as_tuples = {
        (tuple(r["source_matchers"]), tuple(r["target_matchers"]), tuple(r.get("equal", [])))
        for r in rules
    }
    assert (
        ('alertname="ModelFleetAtSmallestModel"',),
        ('remediation="downgrade"',),
        ("host", "fleet"),
    ) in as_tuples
    assert (
        ('alertname="ModelFleetSwitchFlapping"',),
        ('remediation="upgrade"',),
        ("host", "fleet"),
    ) in as_tuples


def test_human_receivers_deliver_to_the_remediators_notify_webhook() -> None:
    config = _am_config()
    receivers = {r["name"]: r for r in config["receivers"]}
    for name in HUMAN_RECEIVERS:
        [hook] = receivers[name]["webhook_configs"]
        assert hook["url"] == "http://remediator:8080/webhook/notify", name
        assert hook["send_resolved"] is True and hook["max_alerts"] == 0
        # The same token as the switch webhook.
        assert hook["http_config"] == _remediator_webhook()["http_config"]
    assert config["route"]["receiver"] == "humans"
    [pager] = [r for r in config["route"]["routes"] if r["receiver"] == "pager"]
    assert pager["matchers"] == ['severity="critical"']


def test_the_docs_example_of_native_receivers_passes_amtool(tmp_path: Path) -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "email_configs" in b]
    [example] = yaml.safe_load(block)
    config = _am_config()
    [pager] = [r for r in config["receivers"] if r["name"] == example["name"]]
    pager.update({k: v for k, v in example.items() if k != "webhook_configs"})  # "[...]"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    result = _run("amtool", "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"webhook_configs", "email_configs", "slack_configs"} <= set(pager)


NATIVE_PAGER = re.compile(
    r"^ *# --- native pager receiver ---\n(.*?)^ *# --- end of the native pager receiver ---\n",
    re.M | re.S,
)
# What an operator fills in, as a test would: the placeholders of the commented block.
PLACEHOLDER_VALUES = {
    "PAGERDUTY_ROUTING_KEY": "0123456789abcdef0123456789abcdef",
    "ONCALL_EMAIL": "oncall@example.com",
    "ALERTMANAGER_EMAIL": "alertmanager@example.com",
    "SMTP_HOST": "smtp.example.com",
}


def _with_native_pager(tmp_path: Path) -> Path:
    """The shipped file with the native pager receiver uncommented and filled in."""
    text = ALERTMANAGER_CONFIG.read_text()
    [block] = NATIVE_PAGER.findall(text)
    assert all(re.match(r"^ *# ", line) for line in block.splitlines()), "commented as shipped"
    placeholders = set(re.findall(r"<([A-Z_]+)>", block))
    assert placeholders == set(PLACEHOLDER_VALUES), placeholders
    live = re.sub(r"^( *)# ", r"\1", block, flags=re.M)
    live = re.sub(r"<([A-Z_]+)>", lambda m: PLACEHOLDER_VALUES[m.group(1)], live)
    path = tmp_path / "alertmanager.yml"
    path.write_text(text.replace(block, live))
    return path


def test_the_pager_has_a_native_receiver_ready_to_uncomment(tmp_path: Path) -> None:
    path = _with_native_pager(tmp_path)
    result = _run("amtool", "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    receivers = {r["name"]: r for r in yaml.safe_load(path.read_text())["receivers"]}
    pager = receivers["pager"]
    # Next to the remediator's webhook, not instead of it: status and forwarding stay.
    assert pager["webhook_configs"] == receivers["humans"]["webhook_configs"]
    [pagerduty] = pager["pagerduty_configs"]
    assert pagerduty["routing_key"] == PLACEHOLDER_VALUES["PAGERDUTY_ROUTING_KEY"]
    [email] = pager["email_configs"]
    assert email["smarthost"] == f"{PLACEHOLDER_VALUES['SMTP_HOST']}:587"
    assert all(c["send_resolved"] for c in (pagerduty, email))
    # Every page reaches it, the remediator's own absence first of all; other alerts do not.
    for labels, receiver in ROUTING_CASES:
        pairs = [f"{k}={v}" for k, v in labels.items()]
        result = _run(
            "amtool", "config", "routes", "test", f"--config.file={path}", *pairs
        )  # fmt: skip
        assert result.stdout.strip() == receiver, labels
    pages = [labels for labels, receiver in ROUTING_CASES if receiver == "pager"]
    assert any(p["alertname"] == "ModelFleetRemediatorDown" for p in pages)


def test_operations_doc_says_why_the_pager_needs_a_native_receiver() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    section = docs.split("## Notifications", 1)[1].split("\n## ", 1)[0]
    for word in ("ModelFleetRemediatorDown", "`pagerduty_configs`", "native pager receiver"):
        assert word in section, word


def test_alertmanager_test_copy_changes_only_the_webhook_addresses_and_token_file() -> None:
    rendered = render_alertmanager_config(
        webhook_url="http://127.0.0.1:1/webhook/alertmanager",
        credentials_file=Path("/x/token"),
        notify_url="http://127.0.0.1:2/webhook/notify",
    )
    hooks = {r["name"]: r["webhook_configs"][0] for r in rendered["receivers"]}
    assert hooks[REMEDIATOR_RECEIVER]["url"] == "http://127.0.0.1:1/webhook/alertmanager"
    for name in HUMAN_RECEIVERS:
        assert hooks[name]["url"] == "http://127.0.0.1:2/webhook/notify"
    shipped = {r["name"]: r["webhook_configs"][0] for r in _am_config()["receivers"]}
    for name, hook in hooks.items():
        assert hook["http_config"]["authorization"]["credentials_file"] == "/x/token"
        hook["url"] = shipped[name]["url"]
        hook["http_config"] = shipped[name]["http_config"]
    assert rendered == _am_config()
    # Without a notify URL the human receivers post to a local port, never to "remediator".
    default = render_alertmanager_config(
        webhook_url="http://127.0.0.1:1/webhook/alertmanager", credentials_file=Path("/x/token")
    )
    for receiver in default["receivers"]:
        assert receiver["webhook_configs"][0]["url"].startswith("http://127.0.0.1:")


# --- a real Alertmanager delivering to a webhook receiver ----------------------------------


class WebhookReceiver:
    """Records every POST: path, headers and decoded JSON body."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                with receiver._lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhook/alertmanager"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def matching(self, status: str, **labels: str) -> list[dict[str, Any]]:
        """Deliveries with an alert of this status carrying all ``labels``."""
        with self._lock:
            found = list(self.requests)
        return [
            r
            for r in found
            if any(
                a["status"] == status and all(a["labels"].get(k) == v for k, v in labels.items())
                for a in r["body"]["alerts"]
            )
        ]

    def wait(self, status: str, timeout: float, **labels: str) -> dict[str, Any]:
        """The first delivery with such an alert; fail after ``timeout`` seconds."""
        return wait_for(
            lambda: next(iter(self.matching(status, **labels)), None),
            timeout,
            f"a {status} webhook for {labels} (got {len(self.requests)} deliveries)",
        )


@pytest.fixture(scope="module")
def alerting(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Alertmanager, WebhookReceiver]]:
    """Alertmanager with the compose routing, delivering to a receiver in this test."""
    token_file = tmp_path_factory.mktemp("secrets") / "model_fleet_token"
    token_file.write_text(TOKEN + "\n")  # a trailing newline, as `echo` writes it
    receiver = WebhookReceiver()
    config = render_alertmanager_config(webhook_url=receiver.url, credentials_file=token_file)
    try:
        with start_alertmanager(config) as am:
            yield am, receiver
    finally:
        receiver.close()


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_alertmanager_delivers_downgrade_with_bearer_token_and_resolves(
    alerting: tuple[Alertmanager, WebhookReceiver],
) -> None:
    am, receiver = alerting
    labels = {
        "alertname": "ModelFleetVRAMErrors",
        "remediation": "downgrade",
        "fleet": "fleet-a",
        "severity": "warning",
    }
    start = datetime.now(UTC) - timedelta(seconds=1)
    result = _run(
        "amtool", "alert", "add", f"--alertmanager.url={am.url}",
        f"--start={start.strftime('%Y-%m-%dT%H:%M:%SZ')}", "--annotation=value=3",
        *[f"{k}={v}" for k, v in labels.items()],
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    began = time.monotonic()
    delivery = receiver.wait("firing", 10, fleet="fleet-a")
    took = time.monotonic() - began

    assert delivery["path"] == "/webhook/alertmanager"
    assert delivery["headers"]["Authorization"] == f"Bearer {TOKEN}"
    body = delivery["body"]
    assert body["receiver"] == "remediator" and body["status"] == "firing"
    assert body["groupLabels"] == {"fleet": "fleet-a", "alertname": "ModelFleetVRAMErrors"}
    [alert] = body["alerts"]
    assert alert["labels"] == labels
    assert alert["annotations"] == {"value": "3"}
    assert alert["fingerprint"] and alert["startsAt"].startswith(start.strftime("%Y-%m-%dT%H:%M"))
    assert took < 5, f"group_wait should be short; delivery took {took:.1f} s"

    # send_resolved: the end of the alert reaches the remediator too (after group_interval).
    am.post_alerts(
        [{"labels": labels, "annotations": {"value": "3"}, "startsAt": alert["startsAt"],
          "endsAt": _iso(datetime.now(UTC))}]
    )  # fmt: skip
    resolved = receiver.wait("resolved", 20, fleet="fleet-a")
    assert resolved["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert resolved["body"]["alerts"][0]["fingerprint"] == alert["fingerprint"]


def test_alertmanager_inhibits_downgrade_at_the_smallest_model(
    alerting: tuple[Alertmanager, WebhookReceiver],
) -> None:
    am, receiver = alerting
    now = _iso(datetime.now(UTC))
    am.post_alerts(
        [
            {"labels": {"alertname": "ModelFleetAtSmallestModel", "fleet": "fleet-b",
                        "severity": "critical"}, "startsAt": now},
            {"labels": {"alertname": "ModelFleetVRAMErrors", "remediation": "downgrade",
                        "fleet": "fleet-b", "severity": "warning"},
             "annotations": {"value": "4"}, "startsAt": now},
            # Same condition on another fleet, which can still step down: delivered. It is the
            # fence: once it has arrived, fleet-b's group (same group_wait) has been flushed.
            {"labels": {"alertname": "ModelFleetVRAMErrors", "remediation": "downgrade",
                        "fleet": "fleet-c", "severity": "warning"},
             "annotations": {"value": "3"}, "startsAt": now},
            {"labels": {"alertname": "ModelFleetCanStepUp", "remediation": "upgrade",
                        "fleet": "fleet-c", "gpu": "0", "severity": "info"}, "startsAt": now},
        ]
    )  # fmt: skip
    receiver.wait("firing", 10, fleet="fleet-c", remediation="downgrade")
    receiver.wait("firing", 10, fleet="fleet-c", remediation="upgrade")
    time.sleep(1.5)  # groups created in the same POST flush together; leave a margin

    [inhibited] = am.alerts('alertname="ModelFleetVRAMErrors"', 'fleet="fleet-b"')
    assert inhibited["status"]["state"] == "suppressed"
    assert inhibited["status"]["inhibitedBy"], inhibited["status"]
    assert not receiver.matching("firing", fleet="fleet-b"), "inhibited downgrade was delivered"
