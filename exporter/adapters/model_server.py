"""The Ollama API as the exporter uses it: ``GET /api/ps`` and ``POST /api/generate`` (urllib).

``/api/ps`` lists the loaded models with ``size`` (bytes in memory) and ``size_vram`` (the part
of it in VRAM; the rest is offloaded to system memory) and ``expires_at``. The probe's
``/api/generate`` sends ``stream: false`` and ``options.num_predict`` and no ``keep_alive``, so
the server's own keep-alive applies; the reply's ``eval_count`` and ``eval_duration`` (ns) give
the tokens per second. Every failure (refused, timed out, an HTTP error, an ``{"error": ...}``
body, a body of the wrong shape) is a ServerError.

Only this module of the exporter talks HTTP to the model server.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from exporter.serverapi import Generation, LoadedModel, ServerError

log = logging.getLogger(__name__)

_MAX_BODY = 4 << 20  # /api/ps and a short generation are a few KiB


class OllamaApi:
    """One Ollama server at ``url`` (``http://host:11434``)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def loaded(self, timeout: float) -> list[LoadedModel]:
        """``GET /api/ps``: the loaded models (entries without sizes are skipped)."""
        body = self._call("GET", "/api/ps", None, timeout)
        items = body.get("models")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise ServerError(f"GET /api/ps: 'models' is not a list: {items!r:.100}")
        models = []
        for item in items:
            model = _loaded_model(item)
            if model is None:
                log.debug("GET /api/ps: skipped an entry without name and sizes: %.200r", item)
            else:
                models.append(model)
        return models

    def generate(self, model: str, prompt: str, num_predict: int, timeout: float) -> Generation:
        """``POST /api/generate`` without streaming; keep_alive is not sent."""
        request = {
            "model": model,
            "prompt": prompt,
            "stream": False,
            "options": {"num_predict": num_predict},
        }
        body = self._call("POST", "/api/generate", request, timeout)
        return Generation(
            eval_count=_int(body.get("eval_count")),
            eval_duration_ns=_int(body.get("eval_duration")),
        )

    def _call(self, method: str, path: str, payload: Any, timeout: float) -> dict[str, Any]:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        where = f"{method} {path}"
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read(_MAX_BODY)
        except urllib.error.HTTPError as exc:
            raise ServerError(f"{where}: HTTP {exc.code}: {_error_of(exc)}") from None
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, socket.timeout | TimeoutError):
                reason = f"no answer within {timeout:g}s"
            raise ServerError(f"{where}: {reason}") from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise ServerError(f"{where}: not JSON: {raw[:100]!r}") from None
        if not isinstance(body, dict):
            raise ServerError(f"{where}: not a JSON object: {raw[:100]!r}")
        if "error" in body:
            raise ServerError(f"{where}: {body['error']}")
        return body


def _loaded_model(item: Any) -> LoadedModel | None:
    if not isinstance(item, dict):
        return None
    name = item.get("name") or item.get("model")
    size, size_vram = _int(item.get("size")), _int(item.get("size_vram"))
    if not isinstance(name, str) or not name or size is None or size_vram is None:
        return None
    return LoadedModel(name, size, size_vram, _time(item.get("expires_at")))


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _time(value: Any) -> datetime | None:
    """Go's RFC 3339 time (``2025-10-17T16:47:07.93355-07:00``, nanoseconds, ``Z``)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(_MAX_BODY))
    except (ValueError, OSError):
        return str(exc.reason)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return str(exc.reason)
