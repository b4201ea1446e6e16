"""Alertmanager's deliveries: ``POST /webhook/alertmanager`` and ``POST /webhook/notify``.

The switch webhook validates and parses the delivery, hands it to the remediator's one entry
point (``Remediator.accept_alerts``: the decision, per fleet, under the fleet's lock) and
answers 202 at once with what was accepted and why the rest was ignored; the switches decided
run afterwards on the service's background pools.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from flask import Blueprint, jsonify

from remediator.domain.alerts import InvalidPayload, parse_webhook
from remediator.domain.kinds import DeliveryOutcome
from remediator.domain.loggers import WEBHOOKS as log
from remediator.http.body import BadBody, alerts_within, json_body
from remediator.http.common import authorized, deny, error, service, token_required
from remediator.store.locks import StateError

webhooks = Blueprint("webhooks", __name__)


@webhooks.post("/webhook/alertmanager")
def alertmanager() -> Any:
    """Act on the alerts that carry a ``remediation`` label."""
    svc = service()
    counter = svc.counters.webhooks
    if not authorized():
        counter.labels(DeliveryOutcome.UNAUTHORIZED).inc()
        return deny()
    limits = svc.config.http
    try:
        body = alerts_within(json_body(limits.max_json_depth), limits.max_alerts)
        alerts = parse_webhook(body)
    except (BadBody, InvalidPayload) as exc:
        counter.labels(DeliveryOutcome.INVALID).inc()
        log.warning("webhook: invalid payload: %s", exc)
        return error("invalid", f"invalid Alertmanager payload: {exc}")
    try:
        acceptance = svc.remediator.accept_alerts(alerts)
    except StateError as exc:  # the state lock or the file: Alertmanager retries later
        log.error("webhook: %s", exc)
        return error("state", str(exc))
    svc.background.start(acceptance.pending)
    counter.labels(acceptance.outcome).inc()
    log.log(
        # a delivery of handled alerts only: counted above, logged quietly (as each alert is)
        logging.DEBUG if acceptance.outcome == DeliveryOutcome.DUPLICATE else logging.INFO,
        "webhook: %d alert(s): %d accepted, %d deferred, %d ignored (%s)",
        len(alerts),
        len(acceptance.accepted),
        len(acceptance.deferred),
        len(acceptance.ignored),
        ", ".join(sorted({str(i["reason"]) for i in acceptance.ignored})) or "-",
    )
    return jsonify(
        outcome=acceptance.outcome,
        accepted=acceptance.accepted,
        deferred=acceptance.deferred,
        ignored=acceptance.ignored,
    ), 202


@webhooks.post("/webhook/notify")
@token_required
def notify() -> Any:
    """Log, keep and forward the alerts meant for people (remediator/report/notifications.py)."""
    limits = service().config.http
    try:
        body = alerts_within(json_body(limits.max_json_depth), limits.max_alerts)
        alerts = parse_webhook(body)
    except (BadBody, InvalidPayload) as exc:
        log.warning("notify: invalid payload: %s", exc)
        return error("invalid", f"invalid Alertmanager payload: {exc}")
    delivery = service().notifier.deliver(cast(dict[str, Any], body), alerts)  # an object
    # A failed forward answers 502 so that Alertmanager retries the delivery with backoff
    # and counts it in alertmanager_notifications_failed_total: telling people is this
    # receiver's whole job, and Alertmanager already has the retry loop (a 2xx would end
    # it, and a chat outage would silently drop the message). The alerts are logged and
    # kept either way; a retry replaces their entries in the state instead of adding more.
    return jsonify(delivery.to_dict()), 502 if delivery.outcome == "failed" else 200
