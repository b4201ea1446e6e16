"""Alerts for people: what ``POST /webhook/notify`` does with a delivery from Alertmanager.

Alertmanager's human receivers (``humans``, ``pager`` in monitoring/alertmanager.yml) deliver
here. Every alert of a delivery is logged (WARNING when firing, INFO when resolved) and kept in
the state file, where ``status`` shows the last ``MAX_NOTIFICATIONS``; the delivery is then
forwarded to the webhook of the ``notifications`` settings, if one is set, through a
:class:`Sink` (the HTTP adapter is remediator/adapters/notify.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from remediator.config import Notifications
from remediator.domain.loggers import NOTIFICATIONS as log
from remediator.domain.notices import Notification
from remediator.report.metrics import RemediatorMetrics
from remediator.store.locks import StateError
from remediator.store.state import StateStore

if TYPE_CHECKING:
    from remediator.domain.alerts import WebhookAlert


class ForwardFailed(RuntimeError):
    """The notification webhook could not be reached or refused the message."""


class Sink(Protocol):
    """Where notifications are forwarded to."""

    def send(self, body: dict[str, Any]) -> None:
        """POST ``body``; raise ForwardFailed when it did not arrive."""


def alert_line(alert: WebhookAlert) -> str:
    """One line for a person: status, alert name, fleet, severity and summary."""
    labels, annotations = alert.labels, alert.annotations
    fleet = f" fleet {labels['fleet']}" if "fleet" in labels else ""
    severity = f" ({labels['severity']})" if "severity" in labels else ""
    summary = annotations.get("summary") or annotations.get("description") or "(no summary)"
    name = labels.get("alertname", "(no alertname)")
    return f"[{alert.status.upper()}] {name}{fleet}{severity}: {summary}"


def notification_text(alerts: Sequence[WebhookAlert]) -> str:
    """The chat message for one delivery: a line per alert."""
    return "\n".join(alert_line(a) for a in alerts)


def sink_body(
    settings: Notifications, payload: dict[str, Any], alerts: Sequence[WebhookAlert]
) -> dict[str, Any]:
    """``generic``: the Alertmanager payload as it came; ``slack``: ``{"text": ...}``."""
    if settings.format == "slack":
        return {"text": notification_text(alerts)}
    return payload


@dataclass(frozen=True)
class Delivery:
    """What became of one delivery: forwarded, failed (with the error) or logged."""

    outcome: str
    alerts: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON answer to Alertmanager."""
        answer: dict[str, Any] = {"outcome": self.outcome, "alerts": self.alerts}
        if self.error is not None:
            answer["error"] = self.error
        return answer


class Notifier:
    """Logs, keeps and forwards the alerts of each delivery."""

    def __init__(
        self,
        settings: Notifications,
        sink: Sink | None,
        store: StateStore,
        counters: RemediatorMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.store = store
        self.counters = counters
        self.clock = clock

    def deliver(self, payload: dict[str, Any], alerts: Sequence[WebhookAlert]) -> Delivery:
        """Log each alert, forward the delivery, count it, and keep the alerts for status."""
        for alert in alerts:
            level = logging.WARNING if alert.status == "firing" else logging.INFO
            log.log(level, "notify: %s", alert_line(alert))
        if not alerts:
            return Delivery("logged", 0)
        delivery = self._forward(payload, alerts)
        self.counters.notified(delivery.outcome)
        now = self.clock()
        try:
            with self.store.transaction() as state:
                for alert in alerts:
                    state.record_notification(_record(alert, delivery.outcome, now))
        except StateError as exc:
            # The log lines above still tell; the delivery's answer depends on forwarding only.
            log.error("notify: cannot keep the notification in the state: %s", exc)
        return delivery

    def _forward(self, payload: dict[str, Any], alerts: Sequence[WebhookAlert]) -> Delivery:
        if self.sink is None:
            return Delivery("logged", len(alerts))
        try:
            self.sink.send(sink_body(self.settings, payload, alerts))
        except ForwardFailed as exc:
            log.error("notify: forwarding %d alert(s) failed: %s", len(alerts), exc)
            return Delivery("failed", len(alerts), str(exc))
        return Delivery("forwarded", len(alerts))


def _record(alert: WebhookAlert, outcome: str, now: float) -> Notification:
    labels = alert.labels
    return Notification(
        time=now,
        key=alert.key,
        status=alert.status,
        alertname=labels.get("alertname", ""),
        fleet=labels.get("fleet"),
        severity=labels.get("severity"),
        summary=alert.annotations.get("summary", ""),
        outcome=outcome,
    )
