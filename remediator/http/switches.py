"""``POST /downgrade``, ``/upgrade`` and ``/reset``: a person's switch, answered with its outcome.

The request waits for the switch (pull, restarts) and answers with the outcome JSON and the
status of its row in :data:`remediator.report.queries.CODES`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from remediator.config import UnknownFleet
from remediator.domain.kinds import Direction, Trigger
from remediator.http.body import BadBody, json_body, read_body
from remediator.http.common import error, service, token_required
from remediator.report import queries
from remediator.store.locks import StateError

switches = Blueprint("switches", __name__)


def _switch(direction: str) -> Any:
    try:
        body = json_body(service().config.http.max_json_depth)
        if body is None and not read_body():
            body = {}  # no body at all: the only fleet, no reason
    except (BadBody, OSError) as exc:
        return error("invalid", str(exc))
    if not isinstance(body, dict):
        return error("invalid", "the body must be a JSON object")
    fleet, reason, dry_run = body.get("fleet"), body.get("reason", ""), body.get("dry_run", False)
    if fleet is not None and not isinstance(fleet, str):
        return error("invalid", "fleet must be a string")
    if not isinstance(reason, str) or not isinstance(dry_run, bool):
        return error("invalid", "reason must be a string and dry_run a boolean")
    try:
        outcome = service().remediator.request(
            fleet,
            direction,
            trigger=Trigger.MANUAL,
            reason=reason or "manual request",
            dry_run=dry_run,
        )
    except (UnknownFleet, StateError) as exc:
        kind = queries.error_kind(exc)
        assert kind is not None
        return error(kind, exc.message if isinstance(exc, UnknownFleet) else str(exc))
    return jsonify(outcome.to_dict()), queries.CODES[queries.outcome_kind(outcome)].http


@switches.post("/downgrade")
@token_required
def downgrade() -> Any:
    """One step down the fleet's ladder."""
    return _switch(Direction.DOWN)


@switches.post("/upgrade")
@token_required
def upgrade() -> Any:
    """One step up."""
    return _switch(Direction.UP)


@switches.post("/reset")
@token_required
def reset() -> Any:
    """Back to the top of the ladder."""
    return _switch(Direction.RESET)
