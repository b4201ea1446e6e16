"""Alertmanager deliveries: the webhook payload (version 4) and what each alert asks of a fleet.

Pure: :func:`parse_webhook` validates a body and :func:`triage` sorts its alerts into switch
requests per fleet and alerts with nothing to ask. Neither reads nor writes the state; the
judgement (duplicate, stale, cooldown, ...) is the remediator's, under the fleet's lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from fleet_contract.labels import HOST_LABEL
from remediator.config import Config
from remediator.domain.decisions import AlertRef
from remediator.domain.kinds import Direction, Trigger
from remediator.domain.loggers import ALERTS as log
from remediator.domain.records import DeferredAlert

# The ``remediation`` label -> (direction, trigger) of the switch it asks for.
REMEDIATIONS: Final = {
    "downgrade": (Direction.DOWN, Trigger.ALERT),
    "upgrade": (Direction.UP, Trigger.AUTO),
}


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
    generator_url: str = ""  # where the alert came from: Prometheus' graph link, or nothing

    @property
    def key(self) -> str:
        """The idempotency key: fingerprint + startsAt."""
        return f"{self.fingerprint}@{self.starts_at}"

    def item(self) -> dict[str, Any]:
        """How the webhook's answer names this alert."""
        return {
            "alertname": self.labels.get("alertname"),
            "fleet": self.labels.get("fleet"),
            "fingerprint": self.fingerprint,
            "status": self.status,
        }


@dataclass(frozen=True)
class AlertRequest:
    """A firing alert that asks a configured fleet for a switch."""

    fleet: str
    direction: str  # down | up
    trigger: str  # alert | auto
    ref: AlertRef
    item: dict[str, Any]
    error_count: int | None = None  # a downgrade alert's ``value``: the fleet's VRAM errors
    labels: dict[str, str] = field(default_factory=dict)  # the alert's own (for a deferral)
    from_prometheus: bool = (
        False  # a rule's alert (a generatorURL): Prometheus can tell if it fires
    )

    def kept(self, reason: str, detail: str, now: float, acts_at: float) -> DeferredAlert:
        """This alert kept in the state at ``now``, refused for ``reason``, to be judged
        again at ``acts_at``."""
        return DeferredAlert(
            key=self.ref.key,
            direction=self.direction,
            trigger=self.trigger,
            reason=reason,
            detail=detail,
            started_at=self.ref.started_at,
            deferred_at=now,
            acts_at=acts_at,
            labels=self.labels,
            error_count=self.error_count,
            from_prometheus=self.from_prometheus,
        )


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
    return [_parse_alert(alert, f"alerts[{i}]") for i, alert in enumerate(alerts)]


def _parse_alert(alert: Any, where: str) -> WebhookAlert:
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
    generator = alert.get("generatorURL")  # informative only: anything else counts as none
    return WebhookAlert(
        status=status,
        labels=_str_map(alert.get("labels"), f"{where}.labels"),
        annotations=_str_map(alert.get("annotations"), f"{where}.annotations"),
        starts_at=starts_at,
        started_at=started,
        fingerprint=fingerprint,
        generator_url=generator if isinstance(generator, str) else "",
    )


def triage(
    config: Config, alerts: list[WebhookAlert]
) -> tuple[dict[str, list[AlertRequest]], list[dict[str, Any]]]:
    """Sort a delivery: the switch requests per fleet (in delivery order), and the alerts that
    ask nothing (another host's, no known ``remediation`` label, an unknown fleet, resolved)
    with the reason. An alert without a ``host`` label is this host's (single-host setups,
    manual POSTs); one naming another host is never acted on, whatever its fleet."""
    requests: dict[str, list[AlertRequest]] = {}
    ignored: list[dict[str, Any]] = []
    for alert in alerts:
        item = alert.item()
        remediation = alert.labels.get("remediation")
        fleet = config.fleets.get(alert.labels.get("fleet", ""))
        host = alert.labels.get(HOST_LABEL)
        if host and host != config.host:
            ignored.append({**item, "reason": "other_host", "detail": f"this is {config.host}"})
        elif remediation not in REMEDIATIONS:
            ignored.append({**item, "reason": "no_remediation"})
        elif fleet is None:
            ignored.append({**item, "reason": "unknown_fleet"})
        elif alert.status == "resolved":
            log.info("fleet %s: alert %s resolved", fleet.name, alert.key)
            ignored.append({**item, "reason": "resolved"})
        else:
            direction, trigger = REMEDIATIONS[remediation]
            count = _count(alert.annotations.get("value")) if remediation == "downgrade" else None
            requests.setdefault(fleet.name, []).append(
                AlertRequest(
                    fleet.name,
                    direction,
                    trigger,
                    AlertRef(alert.key, alert.started_at),
                    item,
                    count,
                    dict(alert.labels),
                    bool(alert.generator_url),
                )
            )
    return requests, ignored


def resolutions(config: Config, alerts: list[WebhookAlert]) -> dict[str, list[str]]:
    """The keys of this host's resolved remediation alerts, per configured fleet: a deferred
    alert among them no longer asks for anything."""
    out: dict[str, list[str]] = {}
    for alert in alerts:
        host = alert.labels.get(HOST_LABEL)
        fleet = alert.labels.get("fleet", "")
        if (
            alert.status == "resolved"
            and alert.labels.get("remediation") in REMEDIATIONS
            and fleet in config.fleets
            and (not host or host == config.host)
        ):
            out.setdefault(fleet, []).append(alert.key)
    return out


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return max(0, int(float(value)))
    except (ValueError, OverflowError):  # not a number, NaN, infinity
        return None
