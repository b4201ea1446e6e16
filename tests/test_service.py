"""The Flask service: webhook validation, idempotency, auth, manual switches, status, metrics.

The outside world sits behind the project's own ``Actions`` seam here (a recorder that can be
told to fail); the real adapters are exercised in test_switch_real.py and under gunicorn.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

from remediator.app.service import create_app, log_level
from remediator.config import Config, FleetConfig, parse_config
from remediator.domain.alerts import parse_time
from remediator.http.common import EXTENSION
from remediator.store.state import StateStore
from remediator.switch.deferrals import Pass, judge_due
from remediator.switch.plan import SwitchFailed, SwitchPlan

DATA = Path(__file__).parent / "data"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


class RecordingActions:
    """Records plans; fails at a named step when told to."""

    def __init__(self) -> None:
        self.plans: list[SwitchPlan] = []
        self.fail_step: str | None = None
        self.delay = 0.0
        self.lock = threading.Lock()

    def for_fleet(self, fleet: FleetConfig) -> RecordingActions:
        return self

    def execute(self, plan: SwitchPlan, dry_run: bool, record: object = None) -> list[str]:
        time.sleep(self.delay)
        if self.fail_step:
            raise SwitchFailed(self.fail_step, "simulated failure")
        with self.lock:
            if not dry_run:
                self.plans.append(plan)
        return [
            f"would switch to {plan.to_rung.name}"
            if dry_run
            else f"switched to {plan.to_rung.name}"
        ]


def make_config(tmp_path: Path, **fleet: object) -> Config:
    return parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "fleets": {"default": {"cooldown_seconds": 0, **fleet}},
        },
        "test",
    )


@pytest.fixture
def actions() -> RecordingActions:
    return RecordingActions()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def app(config: Config, actions: RecordingActions) -> Flask:
    return create_app(config, token=TOKEN, actions_for=actions.for_fleet)


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def drain(app: Flask) -> None:
    """Wait until background switches have finished."""
    executor = app.extensions["model_fleet"].background
    executor.submit(lambda: None).result(timeout=30)
    executor.shutdown(wait=True)


def index(config: Config) -> int:
    return StateStore(config).read().fleets["default"].index


def alert_key(body: dict[str, Any]) -> str:
    """The idempotency key of a delivery's first alert."""
    alert = body["alerts"][0]
    return f"{alert['fingerprint']}@{alert['startsAt']}"


def test_parse_time_handles_alertmanager_nanoseconds() -> None:
    assert parse_time("2026-11-27T03:10:00.123456789Z") == pytest.approx(1795749000.123456)
    assert parse_time("2026-11-27T04:10:00+01:00") == parse_time("2026-11-27T03:10:00Z")
    with pytest.raises(ValueError):
        parse_time("2026-11-27T03:10:00")  # no time zone


def test_the_log_level_setting_applies_to_the_service_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MODEL_FLEET_LOG_LEVEL", raising=False)
    assert log_level() == logging.INFO
    for value, level in (("warning", logging.WARNING), ("DEBUG", logging.DEBUG), ("error", 40)):
        monkeypatch.setenv("MODEL_FLEET_LOG_LEVEL", value)
        assert log_level() == level
    monkeypatch.setenv("MODEL_FLEET_LOG_LEVEL", "loud")
    assert log_level() == logging.INFO
    assert "MODEL_FLEET_LOG_LEVEL='loud' is not a log level" in caplog.text


def test_refuses_to_start_without_a_token(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_FLEET_TOKEN", raising=False)
    monkeypatch.delenv("MODEL_FLEET_TOKEN_FILE", raising=False)
    monkeypatch.delenv("MODEL_FLEET_NO_AUTH", raising=False)
    with pytest.raises(RuntimeError, match="no bearer token configured"):
        create_app(config, actions_for=RecordingActions().for_fleet)
    open_app = create_app(
        config, token=None, allow_no_auth=True, actions_for=RecordingActions().for_fleet
    )
    assert open_app.test_client().post("/downgrade").status_code == 200


def test_token_from_a_file(config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("MODEL_FLEET_TOKEN_FILE", str(tmp_path / "token"))
    app = create_app(config, actions_for=RecordingActions().for_fleet)
    client = app.test_client()
    assert client.post("/reset", headers={"Authorization": "Bearer from-file"}).status_code == 409
    assert client.post("/reset", headers=AUTH).status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": "Basic " + TOKEN},
    ],
)
def test_mutating_endpoints_need_the_bearer_token(
    app: Flask, config: Config, headers: dict[str, str]
) -> None:
    client = app.test_client()
    for path in ("/downgrade", "/upgrade", "/reset", "/webhook/alertmanager", "/webhook/notify"):
        resp = client.post(path, json=payload("alertmanager_firing.json"), headers=headers)
        assert resp.status_code == 401, path
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    drain(app)
    assert index(config) == 0
    metrics = client.get("/metrics").get_data(as_text=True)
    host = f'host="{config.host}"'
    assert f'model_fleet_webhook_requests_total{{{host},outcome="unauthorized"}} 1.0' in metrics


def test_reads_are_open_by_default_and_can_be_protected(tmp_path: Path) -> None:
    open_app = create_app(
        make_config(tmp_path), token=TOKEN, actions_for=RecordingActions().for_fleet
    )
    assert open_app.test_client().get("/status").status_code == 200
    closed = parse_config({"state_file": str(tmp_path / "s.json"), "protect_reads": True})
    app = create_app(closed, token=TOKEN, actions_for=RecordingActions().for_fleet)
    client = app.test_client()
    for path in ("/status", "/history", "/metrics"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=AUTH).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_a_firing_alert_switches_once_in_the_background(
    app: Flask, config: Config, actions: RecordingActions
) -> None:
    client = app.test_client()
    resp = client.post(
        "/webhook/alertmanager", json=payload("alertmanager_firing.json"), headers=AUTH
    )
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["outcome"] == "accepted"
    assert [a["fingerprint"] for a in body["accepted"]] == ["3f2a9c1b8e7d6054"]
    wait_for(lambda: index(config) == 1)
    # Delivered again (Alertmanager retries, a second replica): answered, never acted on.
    again = client.post(
        "/webhook/alertmanager", json=payload("alertmanager_firing.json"), headers=AUTH
    )
    assert again.status_code == 202
    assert again.get_json()["outcome"] == "duplicate"
    drain(app)
    assert [(p.from_rung.name, p.to_rung.name) for p in actions.plans] == [
        ("llama3.2:3b", "phi3:mini")
    ]
    record = StateStore(config).read().fleets["default"].history[-1]
    assert (record.trigger, record.direction) == ("alert", "down")
    assert record.alert_key == "3f2a9c1b8e7d6054@2026-11-27T03:10:00.123456789Z"
    metrics = client.get("/metrics").get_data(as_text=True)
    host = f'host="{config.host}"'
    assert (
        f'model_fleet_switches_total{{direction="down",fleet="default",{host},trigger="alert"}} 1.0'
        in metrics
    )
    assert f'model_fleet_webhook_requests_total{{{host},outcome="duplicate"}} 1.0' in metrics


def test_the_error_count_comes_from_the_alert_and_resets_on_switch(
    app: Flask, config: Config
) -> None:
    body = payload("alertmanager_firing.json")
    body["alerts"][0]["annotations"]["value"] = "4"
    body["alerts"][0]["labels"]["remediation"] = "downgrade"
    store = StateStore(config)
    with store.transaction() as state:  # a switch after the alert started: it is stale
        state.fleets["default"].last_switch_at = parse_time(body["alerts"][0]["startsAt"]) + 1
    client = app.test_client()
    resp = client.post("/webhook/alertmanager", json=body, headers=AUTH)
    assert resp.get_json()["ignored"][0]["reason"] == "stale_alert"
    assert client.get("/status").get_json()["vram_error_count"] == 4
    assert client.post("/downgrade", headers=AUTH).status_code == 200
    assert client.get("/status").get_json()["vram_error_count"] == 0


def test_resolved_alerts_are_recorded_not_acted_on(
    app: Flask, config: Config, actions: RecordingActions, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="remediator")
    resp = app.test_client().post(
        "/webhook/alertmanager", json=payload("alertmanager_resolved.json"), headers=AUTH
    )
    assert resp.status_code == 202
    assert resp.get_json()["ignored"][0]["reason"] == "resolved"
    assert "resolved" in caplog.text
    drain(app)
    assert actions.plans == [] and index(config) == 0


def test_a_group_is_sorted_into_accepted_and_ignored_with_reasons(
    app: Flask, config: Config
) -> None:
    resp = app.test_client().post(
        "/webhook/alertmanager", json=payload("alertmanager_group.json"), headers=AUTH
    )
    body = resp.get_json()
    assert resp.status_code == 202
    assert [a["fingerprint"] for a in body["accepted"]] == ["3f2a9c1b8e7d6054"]
    reasons = {i["fingerprint"]: i["reason"] for i in body["ignored"]}
    assert reasons == {
        "aa11bb22cc33dd44": "no_remediation",
        "0011223344556677": "resolved",
        "8899aabbccddeeff": "unknown_fleet",
    }
    wait_for(lambda: index(config) == 1)
    drain(app)


def test_an_alert_of_another_host_is_ignored_and_counted(
    tmp_path: Path, actions: RecordingActions
) -> None:
    """Per-host autonomy: a remediator acts only on alerts of its host (the `host` label);
    an alert without the label is its own (single-host setups, manual POSTs)."""
    config = parse_config(
        {
            "host": "gpu-a",
            "state_file": str(tmp_path / "state.json"),
            "fleets": {"default": {"cooldown_seconds": 0}},
        },
        "test",
    )
    app = create_app(config, token=TOKEN, actions_for=actions.for_fleet)
    client = app.test_client()
    body = payload("alertmanager_firing.json")
    body["alerts"][0]["labels"]["host"] = "gpu-b"
    resp = client.post("/webhook/alertmanager", json=body, headers=AUTH)
    assert resp.status_code == 202
    answer = resp.get_json()
    assert answer["outcome"] == "ignored" and answer["accepted"] == []
    [ignored] = answer["ignored"]
    assert ignored["reason"] == "other_host" and "gpu-a" in ignored["detail"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'model_fleet_webhook_requests_total{host="gpu-a",outcome="ignored"} 1.0' in metrics
    assert index(config) == 0 and actions.plans == []
    # The same alert for this host switches the fleet.
    body["alerts"][0]["labels"]["host"] = "gpu-a"
    resp = client.post("/webhook/alertmanager", json=body, headers=AUTH)
    assert resp.get_json()["outcome"] == "accepted"
    wait_for(lambda: index(config) == 1)
    drain(app)


def test_a_truncated_group_still_acts_on_the_alerts_it_carries(app: Flask, config: Config) -> None:
    resp = app.test_client().post(
        "/webhook/alertmanager", json=payload("alertmanager_truncated.json"), headers=AUTH
    )
    assert resp.get_json()["outcome"] == "accepted"
    wait_for(lambda: index(config) == 1)
    drain(app)


def test_a_stale_alert_yields_no_switch(
    app: Flask, config: Config, actions: RecordingActions
) -> None:
    with StateStore(config).transaction() as state:
        state.fleets["default"].last_switch_at = parse_time(
            "2026-11-27T03:10:01Z"
        )  # after startsAt
    resp = app.test_client().post(
        "/webhook/alertmanager", json=payload("alertmanager_firing.json"), headers=AUTH
    )
    assert resp.get_json()["ignored"][0]["reason"] == "stale_alert"
    drain(app)
    assert actions.plans == []


def test_an_alert_refused_for_the_cooldown_acts_when_it_ends_without_a_redelivery(
    tmp_path: Path, actions: RecordingActions
) -> None:
    config = make_config(tmp_path, cooldown_seconds=3600)
    with StateStore(config).transaction() as state:
        state.fleets["default"].last_switch_at = 1.0  # long ago, but ...
    now = [2.0]  # ... the clock says 1 s later
    app = create_app(config, token=TOKEN, actions_for=actions.for_fleet, clock=lambda: now[0])
    remediator = app.extensions[EXTENSION].remediator
    body = payload("alertmanager_firing.json")
    body["alerts"][0]["startsAt"] = "1970-01-01T00:00:01.5Z"
    resp = app.test_client().post("/webhook/alertmanager", json=body, headers=AUTH)
    answer = resp.get_json()
    assert (resp.status_code, answer["outcome"], answer["accepted"]) == (202, "deferred", [])
    [deferred] = answer["deferred"]
    assert (deferred["reason"], deferred["acts_at"]) == ("cooldown", "1970-01-01T01:00:01+00:00")
    fs = StateStore(config).read().fleets["default"]
    assert fs.processed_alerts == {} and list(fs.deferred) == [alert_key(body)]
    [shown] = app.test_client().get("/status").get_json()["deferred_alerts"]
    assert (shown["alert_key"], shown["reason"], shown["acts_at_epoch"]) == (
        alert_key(body),
        "cooldown",
        3601.0,
    )
    assert shown["alertname"] == body["alerts"][0]["labels"]["alertname"]
    # Not due yet: nothing happens.
    assert judge_due(remediator) == Pass()
    # The cooldown ends: the remediator judges the alert again by itself.
    now[0] = 3601.5
    assert judge_due(remediator) == Pass(judged=1, switched=1)
    # Read on the service's clock (a reader on the real one would expire the alert keys).
    fs = remediator.store.read().fleets["default"]
    assert fs.index == 1 and actions.plans[-1].alert_key == alert_key(body)
    assert fs.deferred == {} and alert_key(body) in fs.processed_alerts
    assert app.test_client().get("/status").get_json()["deferred_alerts"] == []
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    host = f'host="{config.host}"'
    counted = f'model_fleet_alerts_deferred_total{{fleet="default",{host},reason="cooldown"}} 1.0'
    assert counted in metrics
    # Alertmanager's repeat of it later is a duplicate.
    resp = app.test_client().post("/webhook/alertmanager", json=body, headers=AUTH)
    assert resp.get_json()["outcome"] == "duplicate"
    drain(app)


def test_a_deferred_alert_that_resolves_or_is_redelivered_is_not_judged_again(
    tmp_path: Path, actions: RecordingActions
) -> None:
    config = make_config(tmp_path, cooldown_seconds=3600)
    with StateStore(config).transaction() as state:
        state.fleets["default"].last_switch_at = 1.0
    now = [2.0]
    app = create_app(config, token=TOKEN, actions_for=actions.for_fleet, clock=lambda: now[0])
    remediator = app.extensions[EXTENSION].remediator
    body = payload("alertmanager_firing.json")
    body["alerts"][0]["startsAt"] = "1970-01-01T00:00:01.5Z"
    client = app.test_client()
    assert client.post("/webhook/alertmanager", json=body, headers=AUTH).get_json()["deferred"]
    # Alertmanager tells of its resolution: the deferral ends, nothing is judged at the end.
    resolved = copy.deepcopy(body)
    resolved["status"] = resolved["alerts"][0]["status"] = "resolved"
    assert client.post("/webhook/alertmanager", json=resolved, headers=AUTH).status_code == 202
    assert StateStore(config).read().fleets["default"].deferred == {}
    now[0] = 3602.0
    assert judge_due(remediator) == Pass()
    assert actions.plans == []
    # Deferred again, then redelivered once the cooldown has ended: it acts on the redelivery,
    # and the deferral is over.
    body["alerts"][0]["startsAt"] = "1970-01-01T00:00:03Z"
    now[0] = 3.0
    assert client.post("/webhook/alertmanager", json=body, headers=AUTH).get_json()["deferred"]
    now[0] = 3602.0
    assert client.post("/webhook/alertmanager", json=body, headers=AUTH).get_json()["accepted"]
    wait_for(lambda: index(config) == 1)
    assert StateStore(config).read().fleets["default"].deferred == {}
    assert judge_due(remediator) == Pass()
    assert len(actions.plans) == 1
    drain(app)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: "not json", "the body must be a JSON object"),
        (lambda b: {**b, "version": "3"}, "version: expected"),
        (lambda b: {**b, "alerts": {"a": 1}}, "alerts: must be a list"),
        (lambda b: {**b, "alerts": [42]}, r"alerts\[0\]: must be an object"),
        (lambda b: {**b, "truncatedAlerts": -1}, "truncatedAlerts"),
        (lambda b: _alert(b, status="pending"), r"alerts\[0\]\.status"),
        (lambda b: _alert(b, startsAt="yesterday"), r"alerts\[0\]\.startsAt: not an RFC 3339 time"),
        (lambda b: _alert(b, startsAt=17), r"alerts\[0\]\.startsAt"),
        (lambda b: _alert(b, fingerprint=""), r"alerts\[0\]\.fingerprint"),
        (
            lambda b: _alert(b, labels={"fleet": 1}),
            r"alerts\[0\]\.labels: must be an object of strings",
        ),
        (lambda b: _alert(b, annotations=["x"]), r"alerts\[0\]\.annotations"),
    ],
)
def test_malformed_payloads_get_400_and_change_nothing(
    app: Flask, config: Config, actions: RecordingActions, mutate: Any, message: str
) -> None:
    client = app.test_client()
    body = mutate(payload("alertmanager_firing.json"))
    if isinstance(body, str):
        resp = client.post(
            "/webhook/alertmanager", data=body, headers=AUTH, content_type="application/json"
        )
    else:
        resp = client.post("/webhook/alertmanager", json=body, headers=AUTH)
    assert resp.status_code == 400
    assert re.search(message, resp.get_json()["error"])
    drain(app)
    assert actions.plans == []
    assert not config.state_file.exists()


def _alert(body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["alerts"][0].update(fields)
    return body


def test_garbage_bytes_get_400(app: Flask) -> None:
    resp = app.test_client().post("/webhook/alertmanager", data=b"\xff\x00{", headers=AUTH)
    assert resp.status_code == 400


def test_upgrade_alert_needs_auto_upgrade(tmp_path: Path, actions: RecordingActions) -> None:
    config = make_config(tmp_path)
    app = create_app(config, token=TOKEN, actions_for=actions.for_fleet)
    with StateStore(config).transaction() as state:
        state.fleets["default"].apply_switch(
            config.fleets["default"], 2, direction="down", trigger="manual", reason="", now=1.0
        )
    resp = app.test_client().post(
        "/webhook/alertmanager", json=payload("alertmanager_upgrade.json"), headers=AUTH
    )
    assert resp.get_json()["ignored"][0]["reason"] == "auto_upgrade_disabled"

    config = make_config(
        tmp_path, auto_upgrade={"enabled": True, "quiet_seconds": 60, "failed_quiet_seconds": 120}
    )
    app = create_app(config, token=TOKEN, actions_for=actions.for_fleet)
    resp = app.test_client().post(
        "/webhook/alertmanager", json=payload("alertmanager_upgrade.json"), headers=AUTH
    )
    assert resp.get_json()["outcome"] == "accepted"
    wait_for(lambda: index(config) == 1)
    drain(app)
    record = StateStore(config).read().fleets["default"].history[-1]
    assert (record.direction, record.trigger) == ("up", "auto")


def test_manual_endpoints(app: Flask, config: Config, actions: RecordingActions) -> None:
    client = app.test_client()
    resp = client.post("/downgrade", json={"reason": "load test tonight"}, headers=AUTH)
    assert resp.status_code == 200
    assert resp.get_json()["to"] == "phi3:mini"
    resp = client.post("/downgrade", json={"fleet": "default", "dry_run": True}, headers=AUTH)
    assert resp.status_code == 200 and resp.get_json()["dry_run"] is True
    assert index(config) == 1
    assert client.post("/upgrade", headers=AUTH).get_json()["to"] == "llama3.2:3b"
    assert client.post("/upgrade", headers=AUTH).status_code == 409
    assert client.post("/reset", headers=AUTH).status_code == 409
    assert client.post("/downgrade", json={"fleet": "nope"}, headers=AUTH).status_code == 404
    assert client.post("/downgrade", json=["x"], headers=AUTH).status_code == 400
    assert client.post("/downgrade", json={"dry_run": "yes"}, headers=AUTH).status_code == 400
    history = client.get("/history").get_json()
    assert [(h["direction"], h["trigger"]) for h in history] == [
        ("down", "manual"),
        ("up", "manual"),
    ]
    assert history[0]["reason"] == "load test tonight"
    assert client.get("/history?fleet=nope").status_code == 404


def test_a_failed_switch_answers_502_counts_and_changes_no_state(
    app: Flask, config: Config, actions: RecordingActions
) -> None:
    actions.fail_step = "pull"
    client = app.test_client()
    resp = client.post("/downgrade", headers=AUTH)
    assert resp.status_code == 502
    body = resp.get_json()
    assert body["failed_step"] == "pull" and "simulated failure" in body["error"]
    status = client.get("/status").get_json()
    assert status["current_model"]["name"] == "llama3.2:3b"
    assert status["last_failure"]["step"] == "pull"
    metrics = client.get("/metrics").get_data(as_text=True)
    host = f'host="{config.host}"'
    assert (
        f'model_fleet_remediation_failures_total{{fleet="default",{host},step="pull"}} 1.0'
        in metrics
    )


def test_metrics_follow_the_contract(app: Flask) -> None:
    client = app.test_client()
    client.post("/downgrade", headers=AUTH)
    text = client.get("/metrics").get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "model_fleet_current_model_info",
        "model_fleet_current_model_index",
        "model_fleet_ladder_size",
        "model_fleet_can_downgrade",
        "model_fleet_ladder_model_bytes",
        "model_fleet_next_larger_model_bytes",
        "model_fleet_switches",
        "model_fleet_remediation_failures",
        "model_fleet_webhook_requests",
        "model_fleet_notifications",
        "model_fleet_last_switch_timestamp_seconds",
    ):
        assert name in families, name

    def value(name: str, **labels: str) -> float:
        samples = [s for f in families.values() for s in f.samples if s.name == name]
        for s in samples:
            if all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"{name}{labels} missing")

    assert value("model_fleet_current_model_info", fleet="default", model="phi3:mini") == 1
    assert value("model_fleet_current_model_index", fleet="default") == 1
    assert value("model_fleet_ladder_size", fleet="default") == 4
    assert value("model_fleet_can_downgrade", fleet="default") == 1
    assert (
        value("model_fleet_ladder_model_bytes", model="qwen2.5:0.5b", rung="3") == 397 * 1024 * 1024
    )
    assert (
        value("model_fleet_next_larger_model_bytes", fleet="default", gpu="0") == 2048 * 1024 * 1024
    )
    assert value("model_fleet_last_switch_timestamp_seconds", fleet="default") > 1e9
    assert value("model_fleet_switches_total", direction="down", trigger="manual") == 1
    assert value("model_fleet_switches_total", direction="up", trigger="alert") == 0
    for outcome in ("forwarded", "failed", "logged"):
        assert value("model_fleet_notifications_total", outcome=outcome) == 0


def test_fifty_concurrent_deliveries_yield_one_switch(
    config: Config, actions: RecordingActions
) -> None:
    actions.delay = 0.3  # a switch takes a while: deliveries arrive while it runs
    app = create_app(config, token=TOKEN, actions_for=actions.for_fleet)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/webhook/alertmanager"
    body = payload("alertmanager_firing.json")
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            codes = list(
                pool.map(
                    lambda _: requests.post(url, json=body, headers=AUTH, timeout=30).status_code,
                    range(50),
                )
            )
        assert codes == [202] * 50
        drain(app)
    finally:
        server.shutdown()
    assert len(actions.plans) == 1
    assert index(config) == 1
    assert len(StateStore(config).read().fleets["default"].history) == 1


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in (
        "MODEL_FLEET_TOKEN",
        "MODEL_FLEET_TOKEN_FILE",
        "MODEL_FLEET_NO_AUTH",
        "PROMETHEUS_MULTIPROC_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    yield
