"""The remediator's HTTP service: Alertmanager webhooks, manual switches, status and metrics.

``create_app(config)`` builds a Flask app with no side effects at import. Webhook deliveries are
answered at once (202) and the switch runs on a background thread; manual POSTs wait for the
switch and answer with its outcome. ``/webhook/notify`` receives the alerts meant for people
(remediator/notifications.py).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry

from fleet_contract.env import NO_AUTH as NO_AUTH_ENV
from fleet_contract.env import TOKEN as TOKEN_ENV
from fleet_contract.env import TOKEN_FILE as TOKEN_FILE_ENV
from remediator import metrics
from remediator.config import Config, FleetConfig, load_config
from remediator.decisions import AlertRef
from remediator.notifications import Notifier, Sink
from remediator.state import LockTimeout, StateError, StateStore
from remediator.status import build_status
from remediator.switching import Actions, Outcome, Remediator

log = logging.getLogger(__name__)

REMEDIATIONS: Final = {"downgrade": ("down", "alert"), "upgrade": ("up", "auto")}


class InvalidPayload(ValueError):
    """The webhook body is not an Alertmanager v4 payload; the message names the field."""


@dataclass(frozen=True)
class WebhookAlert:
    """The parts of one Alertmanager alert the remediator uses."""

    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    started_at: float
    fingerprint: str

    @property
    def key(self) -> str:
        """The idempotency key: fingerprint + startsAt."""
        return f"{self.fingerprint}@{self.starts_at}"


def parse_time(value: str) -> float:
    """RFC 3339 as Alertmanager writes it (nanoseconds, Z or offset) -> epoch seconds."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if "." in text:
        # Python parses at most microseconds: cut the fraction to 6 digits.
        head, _, rest = text.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = f"{head}.{(digits + '000000')[:6]}{rest}"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed.timestamp()


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidPayload(f"{where}: must be an object of strings")
    return value


def parse_webhook(body: Any) -> list[WebhookAlert]:
    """Validate an Alertmanager webhook (version 4) and return its alerts."""
    if not isinstance(body, dict):
        raise InvalidPayload("the body must be a JSON object")
    if body.get("version") != "4":
        raise InvalidPayload(f'version: expected "4", got {body.get("version")!r}')
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise InvalidPayload("alerts: must be a list")
    truncated = body.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        raise InvalidPayload("truncatedAlerts: must be a non-negative integer")
    parsed = []
    for i, alert in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(alert, dict):
            raise InvalidPayload(f"{where}: must be an object")
        status = alert.get("status")
        if status not in ("firing", "resolved"):
            raise InvalidPayload(f"{where}.status: must be firing or resolved, got {status!r}")
        fingerprint = alert.get("fingerprint")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise InvalidPayload(f"{where}.fingerprint: must be a non-empty string")
        starts_at = alert.get("startsAt")
        if not isinstance(starts_at, str):
            raise InvalidPayload(f"{where}.startsAt: must be an RFC 3339 time string")
        try:
            started = parse_time(starts_at)
        except ValueError as exc:
            raise InvalidPayload(f"{where}.startsAt: not an RFC 3339 time ({exc})") from None
        parsed.append(
            WebhookAlert(
                status=status,
                labels=_str_map(alert.get("labels"), f"{where}.labels"),
                annotations=_str_map(alert.get("annotations"), f"{where}.annotations"),
                starts_at=starts_at,
                started_at=started,
                fingerprint=fingerprint,
            )
        )
    return parsed


def load_token() -> str | None:
    """The bearer token from $MODEL_FLEET_TOKEN_FILE, else $MODEL_FLEET_TOKEN, else None."""
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise RuntimeError(f"cannot read the token file {path}: {exc.strerror}") from exc
        if not token:
            raise RuntimeError(f"the token file {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


class _Unset:
    pass


_UNSET: Final = _Unset()


def create_app(
    config: Config | None = None,
    *,
    token: str | _Unset | None = _UNSET,
    allow_no_auth: bool | None = None,
    actions_for: Callable[[FleetConfig], Actions] | None = None,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """Build the service. With no arguments it reads config and token from the environment."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    config = config or load_config()
    secret = load_token() if isinstance(token, _Unset) else token
    if allow_no_auth is None:
        allow_no_auth = os.environ.get(NO_AUTH_ENV) == "1"
    if secret is None and not allow_no_auth:
        raise RuntimeError(
            f"no bearer token configured: set {TOKEN_FILE_ENV} (or {TOKEN_ENV}), "
            "or start with --no-auth on a trusted network"
        )
    if actions_for is None:
        from remediator.actions import FleetActions

        actions_for = FleetActions.for_fleet

    store = StateStore(config, clock=clock)
    registry = CollectorRegistry()
    counters = metrics.RemediatorMetrics(config, registry)
    remediator = Remediator(config, store, actions_for, clock=clock, observer=counters)
    sink: Sink | None = None
    if config.notifications.webhook_url:
        from remediator.adapters.notify import WebhookSink

        sink = WebhookSink(config.notifications)
    notifier = Notifier(config.notifications, sink, store, counters, clock)
    # Background switches: one thread is enough per fleet; the switch lock orders them anyway.
    executor = ThreadPoolExecutor(
        max_workers=max(2, len(config.fleets)), thread_name_prefix="switch"
    )
    in_flight: set[str] = set()
    in_flight_lock = threading.Lock()

    app = Flask("model-fleet-remediator")
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["model_fleet"] = {"remediator": remediator, "executor": executor}

    def authorized() -> bool:
        if secret is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        return hmac.compare_digest(given.strip().encode(), secret.encode())

    def deny() -> tuple[Response, int]:
        resp = jsonify(error="missing or wrong bearer token")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="model-fleet"'
        return resp, 401

    def read_allowed() -> bool:
        return not config.protect_reads or authorized()

    # -- read-only ----------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> Any:
        try:
            store.read()
        except StateError as exc:
            return jsonify(status="error", error=str(exc)), 503
        return jsonify(status="ok", fleets=list(config.fleets))

    @app.get("/status")
    def status() -> Any:
        if not read_allowed():
            return deny()
        fleet = request.args.get("fleet")
        if fleet is not None and fleet not in config.fleets:
            return jsonify(error=f"unknown fleet {fleet!r}"), 404
        return jsonify(build_status(config, store.read(), fleet))

    @app.get("/history")
    def history() -> Any:
        if not read_allowed():
            return deny()
        fleet = request.args.get("fleet")
        if fleet is not None and fleet not in config.fleets:
            return jsonify(error=f"unknown fleet {fleet!r}"), 404
        try:
            limit = int(request.args.get("limit", "50"))
        except ValueError:
            return jsonify(error="limit must be an integer"), 400
        state = store.read()
        records = sorted(
            (
                r.to_dict()
                for n, fs in state.fleets.items()
                if fleet in (None, n)
                for r in fs.history
            ),
            key=lambda r: float(r["time"]),
        )
        return jsonify(records[-limit:] if limit > 0 else records)

    @app.get("/metrics")
    def metrics_endpoint() -> Any:
        if not read_allowed():
            return deny()
        body = metrics.render(config, store, registry)
        return Response(body, mimetype="text/plain; version=0.0.4; charset=utf-8")

    # -- manual switches ------------------------------------------------------------------

    def manual(direction: str) -> Any:
        if not authorized():
            return deny()
        body = request.get_json(silent=True) if request.data else {}
        if not isinstance(body, dict):
            return jsonify(error="the body must be a JSON object"), 400
        fleet, reason, dry_run = (
            body.get("fleet"),
            body.get("reason", ""),
            body.get("dry_run", False),
        )
        if fleet is not None and not isinstance(fleet, str):
            return jsonify(error="fleet must be a string"), 400
        if not isinstance(reason, str) or not isinstance(dry_run, bool):
            return jsonify(error="reason must be a string and dry_run a boolean"), 400
        try:
            outcome = remediator.request(
                fleet,
                direction,
                trigger="manual",
                reason=reason or "manual request",
                dry_run=dry_run,
            )
        except KeyError as exc:
            return jsonify(error=str(exc.args[0])), 404
        except LockTimeout as exc:
            return jsonify(error=str(exc)), 503
        return jsonify(outcome.to_dict()), _manual_code(outcome)

    app.add_url_rule("/downgrade", "downgrade", lambda: manual("down"), methods=["POST"])
    app.add_url_rule("/upgrade", "upgrade", lambda: manual("up"), methods=["POST"])
    app.add_url_rule("/reset", "reset", lambda: manual("reset"), methods=["POST"])

    # -- Alertmanager ---------------------------------------------------------------------

    def run_alert(fleet: FleetConfig, direction: str, trigger: str, ref: AlertRef) -> None:
        try:
            # The switch lock may be held by a switch that pulls a model: wait for it.
            wait = fleet.pull_timeout_seconds + 2 * fleet.containers.ready_timeout_seconds + 60
            remediator.request(
                fleet.name,
                direction,
                trigger=trigger,
                alert=ref,
                lock_timeout=wait,
                reason=f"alert {ref.key}",
            )
        except Exception:  # a background thread has no caller to tell: log it whole
            log.exception("fleet %s: switch for alert %s crashed", fleet.name, ref.key)
        finally:
            with in_flight_lock:
                in_flight.discard(ref.key)

    @app.post("/webhook/alertmanager")
    def webhook() -> Any:
        if not authorized():
            counters.webhooks.labels("unauthorized").inc()
            return deny()
        body = request.get_json(silent=True)
        try:
            alerts = parse_webhook(body)
        except InvalidPayload as exc:
            counters.webhooks.labels("invalid").inc()
            log.warning("webhook: invalid payload: %s", exc)
            return jsonify(error=f"invalid Alertmanager payload: {exc}"), 400
        accepted: list[dict[str, Any]] = []
        ignored: list[dict[str, Any]] = []
        to_run: list[tuple[FleetConfig, str, str, AlertRef]] = []
        try:
            with store.transaction() as state:
                for alert in alerts:
                    item = {
                        "alertname": alert.labels.get("alertname"),
                        "fleet": alert.labels.get("fleet"),
                        "fingerprint": alert.fingerprint,
                        "status": alert.status,
                    }
                    remediation = alert.labels.get("remediation")
                    fleet = config.fleets.get(alert.labels.get("fleet", ""))
                    if remediation not in REMEDIATIONS:
                        ignored.append({**item, "reason": "no_remediation"})
                        continue
                    if fleet is None:
                        ignored.append({**item, "reason": "unknown_fleet"})
                        continue
                    if alert.status == "resolved":
                        log.info("fleet %s: alert %s resolved", fleet.name, alert.key)
                        ignored.append({**item, "reason": "resolved"})
                        continue
                    fs = state.fleets[fleet.name]
                    if remediation == "downgrade":
                        fs.vram_error_count = _count(
                            alert.annotations.get("value"), fs.vram_error_count
                        )
                    direction, trigger = REMEDIATIONS[remediation]
                    ref = AlertRef(alert.key, alert.started_at)
                    decision = remediator.decide(fleet, fs, direction, trigger, ref)
                    with in_flight_lock:
                        running = alert.key in in_flight
                        if decision.switch and not running:
                            in_flight.add(alert.key)
                    if running:
                        ignored.append({**item, "reason": "duplicate", "detail": "being handled"})
                    elif decision.switch:
                        accepted.append({**item, "detail": decision.detail})
                        to_run.append((fleet, direction, trigger, ref))
                    else:
                        ignored.append(
                            {**item, "reason": decision.reason, "detail": decision.detail}
                        )
        except (LockTimeout, StateError) as exc:
            log.error("webhook: %s", exc)
            return jsonify(error=str(exc)), 503
        for job in to_run:
            executor.submit(run_alert, *job)
        if accepted:
            outcome = "accepted"
        elif ignored and all(i["reason"] == "duplicate" for i in ignored):
            outcome = "duplicate"
        else:
            outcome = "ignored"
        counters.webhooks.labels(outcome).inc()
        log.info(
            "webhook: %d alert(s): %d accepted, %d ignored (%s)",
            len(alerts),
            len(accepted),
            len(ignored),
            ", ".join(sorted({str(i["reason"]) for i in ignored})) or "-",
        )
        return jsonify(outcome=outcome, accepted=accepted, ignored=ignored), 202

    @app.post("/webhook/notify")
    def notify() -> Any:
        if not authorized():
            return deny()
        body = request.get_json(silent=True)
        try:
            alerts = parse_webhook(body)
        except InvalidPayload as exc:
            log.warning("notify: invalid payload: %s", exc)
            return jsonify(error=f"invalid Alertmanager payload: {exc}"), 400
        delivery = notifier.deliver(cast(dict[str, Any], body), alerts)  # checked: an object
        # A failed forward answers 502 so that Alertmanager retries the delivery with backoff
        # and counts it in alertmanager_notifications_failed_total: telling people is this
        # receiver's whole job, and Alertmanager already has the retry loop (a 2xx would end
        # it, and a chat outage would silently drop the message). The alerts are logged and
        # kept either way; a retry replaces their entries in the state instead of adding more.
        return jsonify(delivery.to_dict()), 502 if delivery.outcome == "failed" else 200

    return app


def _count(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        return max(0, int(float(value)))
    except ValueError:
        return default


def _manual_code(outcome: Outcome) -> int:
    if outcome.failure is not None:
        return 502  # a dependency (Ollama, Docker, a config file) failed; rolled back
    if outcome.decision.target is None:
        return 409  # nothing to do: at an end of the ladder
    return 200
