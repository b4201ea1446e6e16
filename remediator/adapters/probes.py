"""Readiness from the services themselves: does the application answer on the new model?

An adapter (HTTP). A switch counts as done when the restarted services say so, not when
Docker's health check next runs: health checks run on their own interval (30 s by default),
which held a working switch for a minute, and a slow first probe could roll it back.
"""

from __future__ import annotations

from typing import Any

import requests

from remediator.adapters.ollama import same_model


def app_reports_model(url: str, model: str, timeout: float = 2.0) -> str | None:
    """None when ``url`` answers 2xx naming ``model``; otherwise why the app is not ready.

    The application's health endpoint should name the model it uses: as JSON with a ``model``
    field (the example app's ``{"model": "phi3:mini"}``), or anywhere in a plain-text body.
    """
    try:
        resp = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        return f"app health {url} unreachable: {type(exc).__name__}"
    if not resp.ok:
        return f"app health {url} answered HTTP {resp.status_code}"
    named = _named_model(resp)
    if named is None:
        return None if model in resp.text else f"app health {url} does not name {model}"
    return None if same_model(named, model) else f"app health {url} reports {named!r}"


def _named_model(resp: requests.Response) -> str | None:
    try:
        body: Any = resp.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return str(body["model"])
    return None
