"""The ``notifications`` and ``prometheus`` sections: where the remediator forwards the alerts
meant for people (:class:`~.model.Notifications`) and where it reads live figures
(:class:`~.model.PrometheusSettings`); each URL may come from the environment instead."""

from __future__ import annotations

import os
from typing import Any, Final

from fleet_contract.env import PROMETHEUS_URL as PROMETHEUS_URL_ENV
from remediator.config.model import (
    NOTIFY_FORMATS,
    NOTIFY_URL_ENV,
    Notifications,
    PrometheusSettings,
)
from remediator.config.reader import Reader, key_path

NOTIFICATION_KEYS: Final = frozenset({"webhook_url", "format", "timeout_seconds"})
PROMETHEUS_KEYS: Final = frozenset({"url", "timeout_seconds"})
# A decision waits for Prometheus under the fleet's lock: the timeout must stay short.
PROMETHEUS_MAX_TIMEOUT: Final = 10.0


def parse_notifications(r: Reader, value: Any, where: str) -> Notifications:
    """Where alerts for people go; ``$MODEL_FLEET_NOTIFY_URL`` before the file's URL."""
    m = r.mapping(value, where, NOTIFICATION_KEYS)
    d = Notifications()
    url: str | None = None
    key = key_path(where, "webhook_url")
    if os.environ.get(NOTIFY_URL_ENV):
        url, key = os.environ[NOTIFY_URL_ENV], f"{key} (from ${NOTIFY_URL_ENV})"
    elif m.get("webhook_url") is not None:
        url = r.string(m, "webhook_url", where, None)
    if url is not None and not url.startswith(("http://", "https://")):
        # The URL is a secret (Slack's carries the token): name the key, never the value.
        raise r.fail(key, "must be an http(s) URL")
    fmt = r.string(m, "format", where, d.format)
    if fmt not in NOTIFY_FORMATS:
        raise r.fail(
            key_path(where, "format"), f"must be one of {', '.join(NOTIFY_FORMATS)}, got {fmt!r}"
        )
    timeout = r.number(m, "timeout_seconds", where, d.timeout_seconds)
    if timeout <= 0:
        raise r.fail(key_path(where, "timeout_seconds"), "must be more than 0")
    return Notifications(webhook_url=url, format=fmt, timeout_seconds=timeout)  # type: ignore[arg-type]


def parse_prometheus(r: Reader, value: Any, where: str) -> PrometheusSettings:
    """Where live figures are read; ``$MODEL_FLEET_PROMETHEUS_URL`` before the file's URL."""
    m = r.mapping(value, where, PROMETHEUS_KEYS)
    d = PrometheusSettings()
    raw, key = m.get("url"), key_path(where, "url")
    if os.environ.get(PROMETHEUS_URL_ENV):
        raw, key = os.environ[PROMETHEUS_URL_ENV], f"{key} (from ${PROMETHEUS_URL_ENV})"
    if raw is not None and (
        not isinstance(raw, str) or not raw.startswith(("http://", "https://"))
    ):
        raise r.fail(key, f"must be an http(s) URL, got {raw!r}")
    url = raw.rstrip("/") if raw is not None else None
    timeout = r.number(m, "timeout_seconds", where, d.timeout_seconds)
    if not 0 < timeout <= PROMETHEUS_MAX_TIMEOUT:
        raise r.fail(
            key_path(where, "timeout_seconds"),
            f"must be more than 0 and at most {PROMETHEUS_MAX_TIMEOUT:g} seconds (a decision "
            f"waits for Prometheus), got {timeout:g}",
        )
    return PrometheusSettings(url=url, timeout_seconds=timeout)
