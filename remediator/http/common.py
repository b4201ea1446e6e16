"""What the routes share: the :class:`Service` of the running app, the bearer token check."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, cast

from flask import Response, current_app, jsonify, request
from prometheus_client import CollectorRegistry

from remediator.config import Config
from remediator.report.metrics import RemediatorMetrics
from remediator.report.notifications import Notifier
from remediator.report.queries import CODES
from remediator.store.state import StateStore
from remediator.switch.background import Background
from remediator.switch.engine import Remediator

EXTENSION = "model_fleet"


@dataclass(frozen=True)
class Service:
    """The parts of the service, built once by ``create_app`` and kept in ``app.extensions``."""

    config: Config
    store: StateStore
    remediator: Remediator
    notifier: Notifier
    counters: RemediatorMetrics
    registry: CollectorRegistry
    background: Background  # switches decided by a webhook delivery run here, after the answer
    token: str | None  # None: no authentication (--no-auth)


def service() -> Service:
    """The Service of the app handling this request."""
    return cast(Service, current_app.extensions[EXTENSION])


def authorized() -> bool:
    """True when the request carries the bearer token (or none is configured)."""
    token = service().token
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def deny() -> tuple[Response, int]:
    """The 401 answer, with the challenge."""
    resp = jsonify(error="missing or wrong bearer token")
    resp.headers["WWW-Authenticate"] = 'Bearer realm="model-fleet"'
    return resp, CODES["unauthorized"].http


def error(kind: str, message: str) -> tuple[Response, int]:
    """``{"error": message}`` with the HTTP status of ``kind`` (a row of queries.CODES)."""
    return jsonify(error=message), CODES[kind].http


def token_required(view: Callable[[], Any]) -> Callable[[], Any]:
    """The view answers 401 without the bearer token."""

    @wraps(view)
    def checked() -> Any:
        return view() if authorized() else deny()

    return checked


def read_token_required(view: Callable[[], Any]) -> Callable[[], Any]:
    """The view answers 401 without the bearer token when ``protect_reads`` is set."""

    @wraps(view)
    def checked() -> Any:
        if service().config.protect_reads and not authorized():
            return deny()
        return view()

    return checked
