"""The kinds a switch and its deliveries come in, as enums: a switch's direction and trigger,
what became of an Alertmanager delivery, how an interrupted switch was resolved.

Each is a ``StrEnum``: its members are the strings the state file, the JSON answers, the
metric labels and the logs have always carried (``Direction.DOWN == "down"``), so a value read
back from the state compares equal to its member.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DeliveryOutcome", "Direction", "RecoveryOutcome", "Trigger"]


class Direction(StrEnum):
    """Which way a switch goes on the ladder."""

    DOWN = "down"  # to a smaller model (or a move to another GPU, with the same model)
    UP = "up"  # to a larger one
    RESET = "reset"  # back to the top


class Trigger(StrEnum):
    """Who asked for a switch."""

    ALERT = "alert"  # an alert of the shipped rules: VRAM errors or offload
    MANUAL = "manual"  # a person: the CLI or a POST
    AUTO = "auto"  # the step-up rule: room for the next larger model


class DeliveryOutcome(StrEnum):
    """What became of an Alertmanager delivery (``model_fleet_webhook_requests_total``)."""

    ACCEPTED = "accepted"  # a switch was chosen, or alerts wait for the running one
    DEFERRED = "deferred"  # kept, to be judged again when its reason has passed
    DUPLICATE = "duplicate"  # every alert was handled already
    IGNORED = "ignored"  # refused (stale, resolved, at the end of the ladder, ...)
    UNAUTHORIZED = "unauthorized"  # no or a wrong bearer token
    INVALID = "invalid"  # not an Alertmanager payload


class RecoveryOutcome(StrEnum):
    """How an interrupted switch was resolved (``model_fleet_switch_recoveries_total``)."""

    ROLLED_FORWARD = "rolled_forward"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
