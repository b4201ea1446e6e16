"""A client for a running remediator, used by ``model-fleet --url``."""

from __future__ import annotations

from typing import Any

import requests

EXIT_FAILED = 1
EXIT_UNKNOWN_FLEET = 3
EXIT_NOTHING_TO_DO = 4
EXIT_LOCKED = 5
EXIT_UNREACHABLE = 7


class RemoteError(RuntimeError):
    """The remediator refused or could not be reached; carries the CLI exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RemediatorClient:
    """Talks to the remediator's HTTP API."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 1900.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise RemoteError(
                f"cannot reach the remediator at {self.url}: {exc}", EXIT_UNREACHABLE
            ) from exc
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code == 401:
            raise RemoteError(
                "the remediator refused the token (401): set MODEL_FLEET_TOKEN(_FILE)",
                2,
            )
        if resp.status_code == 404:
            raise RemoteError(str((data or {}).get("error", "not found")), EXIT_UNKNOWN_FLEET)
        if resp.status_code == 503:
            raise RemoteError(str((data or {}).get("error", "busy")), EXIT_LOCKED)
        if data is None or (resp.status_code >= 400 and resp.status_code not in (409, 502)):
            raise RemoteError(
                f"{method} {path}: HTTP {resp.status_code}: {resp.text[:200]}", EXIT_FAILED
            )
        return data

    def status(self, fleet: str | None = None) -> Any:
        """GET /status."""
        return self._call("GET", "/status", params={"fleet": fleet} if fleet else None)

    def history(self, fleet: str | None = None, limit: int = 20) -> Any:
        """GET /history."""
        params: dict[str, Any] = {"limit": limit}
        if fleet:
            params["fleet"] = fleet
        return self._call("GET", "/history", params=params)

    def switch(self, command: str, fleet: str | None, reason: str, dry_run: bool) -> dict[str, Any]:
        """POST /downgrade, /upgrade or /reset; returns the outcome JSON."""
        body: dict[str, Any] = {"reason": reason, "dry_run": dry_run}
        if fleet:
            body["fleet"] = fleet
        result: dict[str, Any] = self._call("POST", f"/{command}", json=body)
        return result
