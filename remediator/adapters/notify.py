"""The adapter that posts notifications to an incoming webhook (generic, Slack, Mattermost...).

The URL is a secret (a Slack webhook's path is its token), so errors name the host only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests

from remediator.config import Notifications, redact_url
from remediator.report.notifications import ForwardFailed


class WebhookSink:
    """POSTs JSON to ``settings.webhook_url``; anything but a 2xx answer is a failure."""

    def __init__(self, settings: Notifications) -> None:
        if settings.webhook_url is None:
            raise ValueError("no notifications.webhook_url configured")
        self.url = settings.webhook_url
        self.timeout = settings.timeout_seconds
        self.where = redact_url(self.url) or ""

    def send(self, body: dict[str, Any]) -> None:
        """POST ``body``; raise ForwardFailed naming the host and the cause."""
        try:
            # No redirects: a POST that is redirected becomes a GET, which delivers nothing.
            resp = requests.post(self.url, json=body, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise ForwardFailed(
                f"{self.where}: {self._scrub(f'{type(exc).__name__}: {exc}')}"
            ) from None
        if not 200 <= resp.status_code < 300:
            raise ForwardFailed(f"{self.where} answered HTTP {resp.status_code}")

    def _scrub(self, text: str) -> str:
        parts = urlsplit(self.url)
        secret = parts.path + (f"?{parts.query}" if parts.query else "")
        text = text.replace(self.url, self.where)
        for value in (secret, parts.path):
            if value and value != "/":
                text = text.replace(value, "/<redacted>")
        return text
