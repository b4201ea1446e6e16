"""The remediator's HTTP service: Alertmanager webhooks, manual switches, status and metrics.

``create_app(config)`` builds a Flask app with no side effects at import: it wires the parts
(state store, remediator, metrics, notifier, background pools) into a
:class:`~remediator.http.common.Service` and registers the blueprints of
:mod:`remediator.http`. Webhook deliveries are answered at once (202) and the switch runs on
a background thread; manual POSTs wait for the switch and answer with its outcome.
``/webhook/notify`` receives the alerts meant for people (remediator/report/notifications.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Final

from flask import Flask, Response
from prometheus_client import CollectorRegistry

from fleet_contract import env as contract_env
from fleet_contract import logformat
from remediator.app.remediator import Remediator
from remediator.config import Config, FleetConfig, load_config
from remediator.http.body import refuse_large, too_large
from remediator.http.common import EXTENSION, Service
from remediator.http.reads import reads
from remediator.http.switches import switches
from remediator.http.webhooks import webhooks
from remediator.report import metrics
from remediator.report.notifications import Notifier, Sink
from remediator.report.queries import NO_AUTH_ENV, TOKEN_ENV, TOKEN_FILE_ENV, load_token
from remediator.store.state import StateStore
from remediator.switch import recovery
from remediator.switch.background import Background
from remediator.switch.deferrals import DeferralClock
from remediator.switch.plan import Actions


class _Unset:
    pass


_UNSET: Final = _Unset()


def log_level() -> int:
    """The level of the service's own log: ``MODEL_FLEET_LOG_LEVEL``, as for gunicorn's."""
    name = os.environ.get(contract_env.LOG_LEVEL, "info").strip().upper()
    level = logging.getLevelNamesMapping().get(name)
    if level is None:
        logging.getLogger("remediator.service").warning(
            "%s=%r is not a log level (debug, info, warning, error, critical): info",
            contract_env.LOG_LEVEL,
            name.lower(),
        )
        return logging.INFO
    return level


def create_app(
    config: Config | None = None,
    *,
    token: str | _Unset | None = _UNSET,
    allow_no_auth: bool | None = None,
    actions_for: Callable[[FleetConfig], Actions] | None = None,
    clock: Callable[[], float] = time.time,
    judge_deferred: bool = False,
) -> Flask:
    """Build the service. With no arguments it reads config and token from the environment.

    ``judge_deferred``: start the thread that judges deferred alerts when they fall due
    (``model-fleet serve`` does, in each gunicorn worker; tests call
    :func:`remediator.switch.deferrals.judge_due` themselves, at the moment they choose).
    """
    if not logging.getLogger().handlers:  # under gunicorn: MODEL_FLEET_LOG_FORMAT from serve
        logformat.configure(log_level(), logformat.chosen())
    config = config or load_config()
    secret = _bearer_token(token, allow_no_auth)
    if actions_for is None:
        # The adapters (the Docker SDK and requests with them: about 190 modules) are imported
        # here, as each worker starts, not by its first switch: an import holds the GIL for
        # whole milliseconds, and the first switch of a storm stalled every delivery the
        # worker was answering meanwhile (BENCHMARKS.md, "Webhook storm").
        from remediator.app.wiring import fleet_actions

        actions_for = fleet_actions

    store = StateStore(config, clock=clock)
    registry = CollectorRegistry()
    counters = metrics.RemediatorMetrics(config, registry)
    sink: Sink | None = None
    if config.notifications.webhook_url:
        from remediator.adapters.notify import WebhookSink

        sink = WebhookSink(config.notifications)
    app = _flask_app(config.http.max_body_bytes)
    remediator = Remediator(config, store, actions_for, clock=clock, observer=counters)
    app.extensions[EXTENSION] = Service(
        config=config,
        store=store,
        remediator=remediator,
        notifier=Notifier(config.notifications, sink, store, counters, clock),
        counters=counters,
        registry=registry,
        background=Background(len(config.fleets)),
        token=secret,
    )
    for blueprint in (reads, switches, webhooks):
        app.register_blueprint(blueprint)
    # A switch that died with the last run (its journal entry open) is resolved now, under
    # the fleet's switch lock: in one gunicorn worker; the others find nothing open.
    recovery.resolve_in_background(remediator.tools)
    if judge_deferred:
        DeferralClock(remediator).start()
    return app


def _bearer_token(token: str | _Unset | None, allow_no_auth: bool | None) -> str | None:
    """The token every request must carry (None: no auth, allowed only when asked for)."""
    secret = load_token() if isinstance(token, _Unset) else token
    if allow_no_auth is None:
        allow_no_auth = os.environ.get(NO_AUTH_ENV) == "1"
    if secret is None and not allow_no_auth:
        raise RuntimeError(
            f"no bearer token configured: set {TOKEN_FILE_ENV} (or {TOKEN_ENV}), "
            "or start with --no-auth on a trusted network"
        )
    return secret


def _flask_app(limit: int) -> Flask:
    """The Flask app, refusing a body over ``limit`` bytes (413) before any route reads it."""
    app = Flask("model-fleet-remediator")
    app.config["JSON_SORT_KEYS"] = False
    app.config["MAX_CONTENT_LENGTH"] = limit  # werkzeug cuts a chunked body off at the limit
    app.before_request(lambda: refuse_large(limit))  # a declared length: 413, nothing read

    @app.errorhandler(413)
    def _too_large(_: Exception) -> tuple[Response, int]:
        return too_large(limit)

    return app
