"""What the state file keeps for people: the notices ``status`` shows (a recovery, a switch
that could not be committed) and the alerts they were told about (``/webhook/notify``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from remediator.domain.records import json_form, num, text

__all__ = ["Notice", "Notification"]


@dataclass
class Notice:
    """A problem found with the state file, shown by ``status`` until cleared by a reset."""

    time: float
    message: str
    kept_as: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return json_form(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Notice:
        """Parse the JSON form."""
        kept = d.get("kept_as")
        return cls(
            time=num(d["time"]),
            message=text(d["message"]),
            kept_as=None if kept is None else text(kept),
        )


@dataclass
class Notification:
    """One alert Alertmanager delivered to /webhook/notify, and what became of its forwarding.

    ``key`` is the alert's fingerprint@startsAt: a delivery Alertmanager retries (or repeats)
    updates the entry with that key and status instead of adding another.
    """

    time: float
    key: str
    status: str  # firing | resolved
    alertname: str
    fleet: str | None
    severity: str | None
    summary: str
    outcome: str  # forwarded | failed | logged

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return json_form(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Notification:
        """Parse the JSON form."""
        fleet, severity = d.get("fleet"), d.get("severity")
        return cls(
            time=num(d["time"]),
            key=text(d["key"]),
            status=text(d["status"]),
            alertname=text(d["alertname"]),
            fleet=None if fleet is None else text(fleet),
            severity=None if severity is None else text(severity),
            summary=text(d["summary"]),
            outcome=text(d["outcome"]),
        )
