"""A client for a running remediator, used by ``model-fleet --url``."""

from __future__ import annotations

from typing import Any

import requests

from remediator.report.queries import CODES, ExitCode, exit_for_http


class RemoteError(RuntimeError):
    """The remediator refused or could not be reached; carries the CLI exit code."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# The answers that carry a switch's outcome (or a read's JSON), and what each means.
_ANSWERS = {CODES[k].http: CODES[k].exit for k in ("switched", "nothing_to_do", "failed")}


class RemediatorClient:
    """Talks to the remediator's HTTP API."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 1900.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, ExitCode]:
        """The JSON answer and the exit code of its status; raises RemoteError on an error."""
        try:
            resp = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise RemoteError(
                f"cannot reach the remediator at {self.url}: {exc}", ExitCode.UNREACHABLE
            ) from exc
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code == CODES["unauthorized"].http:
            raise RemoteError(
                "the remediator refused the token (401): set MODEL_FLEET_TOKEN(_FILE)",
                ExitCode.USAGE,
            )
        answer = _ANSWERS.get(resp.status_code)
        if data is not None and answer is not None:
            return data, answer
        code = exit_for_http(resp.status_code)
        if code in (ExitCode.UNKNOWN_FLEET, ExitCode.LOCKED):
            error = data.get("error") if isinstance(data, dict) else None
            raise RemoteError(str(error or resp.reason), code)
        raise RemoteError(
            f"{method} {path}: HTTP {resp.status_code}: {resp.text[:200]}", ExitCode.FAILED
        )

    def status(self, fleet: str | None = None) -> Any:
        """GET /status."""
        data, _ = self._call("GET", "/status", params={"fleet": fleet} if fleet else None)
        return data

    def history(self, fleet: str | None = None, limit: int = 20) -> Any:
        """GET /history."""
        params: dict[str, Any] = {"limit": limit}
        if fleet:
            params["fleet"] = fleet
        data, _ = self._call("GET", "/history", params=params)
        return data

    def switch(
        self, command: str, fleet: str | None, reason: str, dry_run: bool
    ) -> tuple[dict[str, Any], ExitCode]:
        """POST /downgrade, /upgrade or /reset; the outcome JSON and the exit code it means."""
        body: dict[str, Any] = {"reason": reason, "dry_run": dry_run}
        if fleet:
            body["fleet"] = fleet
        result, code = self._call("POST", f"/{command}", json=body)
        return result, code
