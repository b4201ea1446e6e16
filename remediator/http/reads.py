"""``GET /healthz``, ``/status``, ``/history`` and ``/metrics``: they change nothing."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from remediator.config import UnknownFleet
from remediator.http.common import error, read_token_required, service
from remediator.report import metrics, queries
from remediator.store.locks import StateError

reads = Blueprint("reads", __name__)


@reads.get("/healthz")
def healthz() -> Any:
    """200 while the state file can be read, else 503 with the reason (never needs a token).

    It reads the last committed state without the locks: a running switch never delays it.
    """
    svc = service()
    try:
        svc.store.snapshot()
    except StateError as exc:
        return jsonify(status="error", error=str(exc)), queries.CODES["state"].http
    return jsonify(status="ok", fleets=list(svc.config.fleets))


@reads.get("/status")
@read_token_required
def status() -> Any:
    """The status JSON of every fleet, or of ``?fleet=``."""
    svc = service()
    try:
        fleet, now = request.args.get("fleet"), svc.remediator.now()
        live = svc.remediator.live
        return jsonify(queries.status(svc.config, svc.store, fleet, now, live))
    except UnknownFleet as exc:
        return error("unknown_fleet", exc.message)


@reads.get("/history")
@read_token_required
def history() -> Any:
    """The newest ``?limit=`` (default 50) switches, of every fleet or of ``?fleet=``."""
    svc = service()
    try:
        limit = int(request.args.get("limit", "50"))
    except ValueError:
        return error("invalid", "limit must be an integer")
    try:
        records = queries.history(svc.config, svc.store, request.args.get("fleet"), limit)
    except UnknownFleet as exc:
        return error("unknown_fleet", exc.message)
    return jsonify(records)


@reads.get("/metrics")
@read_token_required
def metrics_endpoint() -> Any:
    """Prometheus' text format: the counters of every worker and the fleets' gauges."""
    svc = service()
    body = metrics.render(svc.config, svc.store, svc.registry)
    return Response(body, mimetype="text/plain; version=0.0.4; charset=utf-8")
