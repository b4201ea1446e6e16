"""Instant PromQL queries against Prometheus' HTTP API (the adapter ``model-fleet watch`` reads
live figures through)."""

from __future__ import annotations

import http.client
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final

from remediator.ports.prometheus import PrometheusError, Sample

__all__ = ["DEFAULT_URL", "PrometheusAPI", "PrometheusError", "Sample"]

DEFAULT_URL: Final = "http://127.0.0.1:9090"


class PrometheusAPI:
    """Runs instant queries with a short timeout, so a frame never waits long on Prometheus."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str) -> list[Sample]:
        """GET /api/v1/query; the vector's samples, or PrometheusError naming the cause."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise PrometheusError(
                f"Prometheus at {self.url} answered HTTP {exc.code}: {_error_detail(exc)}"
            ) from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusError(f"Prometheus unreachable at {self.url}: {reason}") from exc
        return _vector(_json(raw), self.url)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    # Prometheus explains a refused query in a JSON body ("error"); anything else, briefly.
    try:
        raw = exc.read()
    except (OSError, http.client.HTTPException):
        return "no body"
    body = _json(raw)
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return raw[:200].decode(errors="replace").strip()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _vector(body: Any, url: str) -> list[Sample]:
    def bad(why: str) -> PrometheusError:
        return PrometheusError(f"Prometheus at {url} gave an answer that is not a vector: {why}")

    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else "no JSON"
        raise bad(str(error))
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise bad(f"resultType {data.get('resultType') if isinstance(data, dict) else None!r}")
    result = data.get("result")
    if not isinstance(result, list):
        raise bad("no result list")
    samples = []
    for item in result:
        try:
            labels = {str(k): str(v) for k, v in item["metric"].items()}
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise bad(f"malformed sample {item!r:.120}") from exc
        if not math.isnan(value):
            samples.append(Sample(labels, value))
    return samples
