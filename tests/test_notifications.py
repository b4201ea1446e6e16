"""Alerts for people: the notifications settings, the state they are kept in, and
``POST /webhook/notify`` forwarding to a real HTTP endpoint (generic and Slack formats)."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from remediator.app.service import create_app
from remediator.config import ConfigError, Notifications, effective_config, parse_config
from remediator.domain.alerts import parse_webhook
from remediator.domain.notices import Notification
from remediator.domain.state import MAX_NOTIFICATIONS
from remediator.report.notifications import notification_text, sink_body
from remediator.store.state import StateStore
from simulator.prom_env import free_port
from tests.support.http_sink import HttpSink

DATA = Path(__file__).parent / "data"
TOKEN = "notify-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "secret-part"


def payload(name: str = "alertmanager_notify.json") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MODEL_FLEET_NOTIFY_URL", "MODEL_FLEET_STATE_FILE", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    endpoint = HttpSink()
    yield endpoint
    endpoint.close()


def make_app(tmp_path: Path, **notifications: Any) -> Flask:
    config = parse_config(
        {"state_file": str(tmp_path / "state.json"), "notifications": notifications or None},
        "test.yaml",
    )
    return create_app(config, token=TOKEN, actions_for=_no_switches)


def _no_switches(fleet: Any) -> Any:
    raise AssertionError("a notification must never switch a fleet")


def counter(app: Flask, outcome: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    host = app.extensions["model_fleet"].config.host  # every sample carries it
    line = f'model_fleet_notifications_total{{host="{host}",outcome="{outcome}"}} '
    [value] = [ln.removeprefix(line) for ln in text.splitlines() if ln.startswith(line)]
    return float(value)


# --- settings ------------------------------------------------------------------------------


def test_notifications_default_to_logging_only() -> None:
    assert parse_config({}).notifications == Notifications(None, "generic", 5.0)


def test_notifications_settings_and_the_environment_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    section = {"webhook_url": "https://chat.example/hooks/a", "format": "slack"}
    config = parse_config({"notifications": {**section, "timeout_seconds": 2}})
    assert config.notifications == Notifications("https://chat.example/hooks/a", "slack", 2.0)
    monkeypatch.setenv("MODEL_FLEET_NOTIFY_URL", "http://other.example/x")
    assert parse_config({"notifications": section}).notifications.webhook_url == (
        "http://other.example/x"
    )
    assert parse_config({}).notifications.webhook_url == "http://other.example/x"


def test_effective_config_never_shows_the_webhook_secret() -> None:
    config = parse_config(
        {"notifications": {"webhook_url": f"https://u:pw@hooks.example/services/{SECRET}?t=1"}}
    )
    shown = effective_config(config)["notifications"]
    assert shown == {
        "webhook_url": "https://hooks.example/<redacted>",
        "format": "generic",
        "timeout_seconds": 5.0,
    }


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("yes", "test.yaml: notifications: must be a mapping, got str"),
        ({"url": "http://x"}, "test.yaml: notifications: unknown key(s) url (allowed: format, "),
        ({"format": "teams"}, "test.yaml: notifications.format: must be one of generic, slack"),
        ({"webhook_url": [""]}, "test.yaml: notifications.webhook_url: must be a non-empty string"),
        (
            {"webhook_url": f"hooks.example/{SECRET}"},
            "test.yaml: notifications.webhook_url: must be an http(s) URL",
        ),
        ({"timeout_seconds": 0}, "test.yaml: notifications.timeout_seconds: must be more than 0"),
        ({"timeout_seconds": "5s"}, "test.yaml: notifications.timeout_seconds: must be a number"),
    ],
)
def test_invalid_notifications_name_file_and_key(section: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"notifications": section}, "test.yaml")
    assert str(info.value).startswith(message)
    assert SECRET not in str(info.value)


def test_a_bad_url_in_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_FLEET_NOTIFY_URL", f"hooks.example/{SECRET}")
    with pytest.raises(ConfigError, match=r"\$MODEL_FLEET_NOTIFY_URL\): must be an http") as info:
        parse_config({}, "test.yaml")
    assert SECRET not in str(info.value)


# --- state ---------------------------------------------------------------------------------


def test_a_state_file_without_notifications_still_loads(tmp_path: Path) -> None:
    config = parse_config({"state_file": str(tmp_path / "state.json")})
    old = {
        "schema_version": 1,
        "fleets": {"default": {"current_model": "phi3:mini", "index": 1}},
        "notices": [],
    }
    config.state_file.write_text(json.dumps(old))
    state = StateStore(config).read()
    assert state.fleets["default"].current_model == "phi3:mini"
    assert state.notifications == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["state.json", "state.json.lock"]


def test_notifications_are_bounded_and_a_redelivery_replaces_its_entry(tmp_path: Path) -> None:
    config = parse_config({"state_file": str(tmp_path / "state.json")})
    store = StateStore(config)

    def note(i: int, status: str = "firing", outcome: str = "forwarded") -> Notification:
        return Notification(float(i), f"fp{i}@t", status, "A", "default", "info", "s", outcome)

    with store.transaction() as state:
        for i in range(MAX_NOTIFICATIONS + 5):
            state.record_notification(note(i))
    with store.transaction() as state:
        state.record_notification(note(10, outcome="failed"))  # Alertmanager retried it
        state.record_notification(note(11, status="resolved"))  # its end: a new entry
    kept = StateStore(config).read().notifications
    assert len(kept) == MAX_NOTIFICATIONS
    assert [(n.key, n.status) for n in kept[-2:]] == [("fp10@t", "firing"), ("fp11@t", "resolved")]
    assert [n.key for n in kept].count("fp10@t") == 1 and kept[-2].outcome == "failed"


# --- formatting ----------------------------------------------------------------------------


def test_the_slack_text_has_a_line_per_alert() -> None:
    alerts = parse_webhook(payload())
    assert notification_text(alerts) == (
        "[FIRING] ModelFleetModelSwitched fleet default (info): "
        "Fleet default switched models (down, trigger alert)\n"
        "[RESOLVED] ModelFleetRemediationFailed fleet default (critical): "
        "Fleet default: remediation step pull failed"
    )
    slack = Notifications("http://x", "slack", 5)
    assert sink_body(slack, payload(), alerts) == {"text": notification_text(alerts)}
    generic = Notifications("http://x", "generic", 5)
    assert sink_body(generic, payload(), alerts) == payload()


# --- the endpoint --------------------------------------------------------------------------


def test_generic_format_forwards_the_alertmanager_payload_as_it_came(
    tmp_path: Path, sink: HttpSink, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(tmp_path, webhook_url=sink.url)
    caplog.set_level(logging.INFO, logger="remediator.notifications")
    resp = app.test_client().post("/webhook/notify", json=payload(), headers=AUTH)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"outcome": "forwarded", "alerts": 2}
    assert sink.bodies() == [payload()]
    assert sink.requests[0]["path"] == f"/hooks/T000/B000/{SECRET}"
    assert counter(app, "forwarded") == 1 and counter(app, "failed") == 0

    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        (
            "WARNING",
            "notify: [FIRING] ModelFleetModelSwitched fleet default (info): "
            "Fleet default switched models (down, trigger alert)",
        ),
        (
            "INFO",
            "notify: [RESOLVED] ModelFleetRemediationFailed fleet default (critical): "
            "Fleet default: remediation step pull failed",
        ),
    ]
    status = app.test_client().get("/status").get_json()
    assert [
        (n["alertname"], n["status"], n["severity"], n["outcome"]) for n in status["notifications"]
    ] == [
        ("ModelFleetModelSwitched", "firing", "info", "forwarded"),
        ("ModelFleetRemediationFailed", "resolved", "critical", "forwarded"),
    ]
    assert status["notifications"][0]["summary"] == (
        "Fleet default switched models (down, trigger alert)"
    )


def test_slack_format_forwards_one_text(tmp_path: Path, sink: HttpSink) -> None:
    app = make_app(tmp_path, webhook_url=sink.url, format="slack")
    resp = app.test_client().post("/webhook/notify", json=payload(), headers=AUTH)
    assert resp.status_code == 200
    [body] = sink.bodies()
    assert body == {"text": notification_text(parse_webhook(payload()))}


def test_without_a_webhook_the_alerts_are_logged_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(tmp_path)
    caplog.set_level(logging.INFO, logger="remediator.notifications")
    resp = app.test_client().post("/webhook/notify", json=payload(), headers=AUTH)
    assert (resp.status_code, resp.get_json()["outcome"]) == (200, "logged")
    assert counter(app, "logged") == 1
    assert len(caplog.records) == 2
    status = app.test_client().get("/status", query_string={"fleet": "default"}).get_json()
    assert {n["outcome"] for n in status["notifications"]} == {"logged"}


def test_a_forwarding_failure_is_counted_logged_and_kept_and_asks_for_a_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = f"http://127.0.0.1:{free_port()}/hooks/{SECRET}"
    app = make_app(tmp_path, webhook_url=down, timeout_seconds=2)
    caplog.set_level(logging.INFO, logger="remediator.notifications")
    client = app.test_client()
    resp = client.post("/webhook/notify", json=payload(), headers=AUTH)
    # 502: Alertmanager retries it (see the route's comment).
    assert resp.status_code == 502
    answer = resp.get_json()
    assert answer["outcome"] == "failed" and "ConnectionError" in answer["error"]
    assert counter(app, "failed") == 1 and counter(app, "forwarded") == 0
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage().startswith("notify: forwarding 2 alert(s) failed: http://127.0.0.1:")
    assert SECRET not in error.getMessage() and SECRET not in json.dumps(answer)
    # Alertmanager's retry: counted again, but kept once.
    assert client.post("/webhook/notify", json=payload(), headers=AUTH).status_code == 502
    assert counter(app, "failed") == 2
    status = client.get("/status").get_json()
    assert [(n["alertname"], n["outcome"]) for n in status["notifications"]] == [
        ("ModelFleetModelSwitched", "failed"),
        ("ModelFleetRemediationFailed", "failed"),
    ]


def test_a_webhook_that_answers_an_error_is_a_failure(tmp_path: Path, sink: HttpSink) -> None:
    sink.status = 404
    app = make_app(tmp_path, webhook_url=sink.url)
    resp = app.test_client().post("/webhook/notify", json=payload(), headers=AUTH)
    assert resp.status_code == 502
    host = sink.url.split("/")[2]
    assert resp.get_json()["error"] == f"http://{host}/<redacted> answered HTTP 404"
    assert counter(app, "failed") == 1


def _without(key: str) -> dict[str, Any]:
    body = payload()
    del body["alerts"][0][key]
    return body


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"not json", "the body must be a JSON object"),
        ([], "the body must be a JSON object"),
        ({**payload(), "version": "3"}, "version"),
        ({**payload(), "alerts": {}}, "alerts: must be a list"),
        (_without("fingerprint"), "alerts[0].fingerprint"),
        (_without("startsAt"), "alerts[0].startsAt"),
        ({**payload(), "alerts": [{**payload()["alerts"][0], "labels": {"a": 1}}]}, "labels"),
    ],
    ids=["not-json", "list", "version", "alerts", "fingerprint", "startsAt", "labels"],
)
def test_bad_input_is_a_400_never_a_500(
    tmp_path: Path, sink: HttpSink, body: Any, detail: str
) -> None:
    app = make_app(tmp_path, webhook_url=sink.url)
    client = app.test_client()
    if isinstance(body, bytes):
        resp = client.post(
            "/webhook/notify", data=body, headers=AUTH, content_type="application/json"
        )
    else:
        resp = client.post("/webhook/notify", json=copy.deepcopy(body), headers=AUTH)
    assert resp.status_code == 400
    assert detail in resp.get_json()["error"]
    assert sink.bodies() == []


def test_notify_needs_the_bearer_token(tmp_path: Path, sink: HttpSink) -> None:
    app = make_app(tmp_path, webhook_url=sink.url)
    resp = app.test_client().post(
        "/webhook/notify", json=payload(), headers={"Authorization": "Bearer wrong"}
    )
    assert resp.status_code == 401
    assert sink.bodies() == []


def test_a_remediation_alert_sent_here_is_only_a_notification(
    tmp_path: Path, sink: HttpSink
) -> None:
    app = make_app(tmp_path, webhook_url=sink.url)
    body = payload("alertmanager_firing.json")
    resp = app.test_client().post("/webhook/notify", json=body, headers=AUTH)
    assert resp.status_code == 200  # _no_switches would have failed a switch
    assert app.test_client().get("/status").get_json()["current_model"]["index"] == 0
