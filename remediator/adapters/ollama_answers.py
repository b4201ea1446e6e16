"""Reading Ollama's answers: a JSON body, a streamed progress (pull, create) read to its
``success``, and the :class:`OllamaError` each failure becomes, naming the step.

:mod:`remediator.adapters.ollama` sends the requests; what comes back is judged here.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Final

import requests

from remediator.ports.model_server import ModelServerError

__all__ = [
    "OllamaError",
    "decode",
    "follow",
    "http_cause",
    "int_field",
    "shorten",
    "unreachable",
]

# The Ollama adapter's one logger: a streamed step's lines are the client's, under its name.
log = logging.getLogger("remediator.adapters.ollama")

# The past tense of a streamed step, for the log line that closes it.
_DONE: Final = {"pull": "pulled", "create": "created"}


class OllamaError(ModelServerError):
    """An Ollama request failed (the message starts "ollama <step>")."""

    def __init__(self, step: str, cause: str, *, model: str | None = None) -> None:
        super().__init__(step, cause, model=model, server="ollama")


def decode(resp: requests.Response, step: str, model: str | None) -> dict[str, Any]:
    """The JSON object of a whole answer; OllamaError naming ``step`` for anything else."""
    if resp.status_code >= 400:
        raise OllamaError(step, http_cause(resp), model=model)
    try:
        body = resp.json()
    except ValueError as exc:
        raise OllamaError(step, f"invalid JSON: {shorten(resp.text)}", model=model) from exc
    if not isinstance(body, dict):
        raise OllamaError(step, f"expected a JSON object, got {shorten(body)}", model=model)
    return body


def follow(
    resp: requests.Response,
    step: str,
    model: str,
    started: float,
    deadline: float,
    stall_timeout: float,
    progress_interval: float,
) -> tuple[int, dict[str, tuple[int, int]]]:
    """Read a streamed answer (pull, create) to its ``success``: the number of status
    lines and each layer's (completed, total) bytes; an ``error`` line, a timeout, a
    stall or a broken stream raise OllamaError naming ``step``."""
    last_log = last_line = time.monotonic()
    last_status = ""
    layers: dict[str, tuple[int, int]] = {}
    completed = total = lines = 0
    try:
        for raw in resp.iter_lines():
            if time.monotonic() > deadline:
                raise OllamaError(
                    step,
                    f"timed out after {deadline - started:.1f} s (last status {last_status!r})",
                    model=model,
                )
            last_line = time.monotonic()
            if not raw:
                continue
            lines += 1
            event = _event(raw, step, model)
            status = str(event.get("status", ""))
            if "total" in event:
                total = int_field(event.get("total"))
                completed = int_field(event.get("completed"))
                layers[str(event.get("digest", status))] = (completed, total)
            now = time.monotonic()
            if status != last_status or now - last_log >= progress_interval:
                log.info("ollama %s %s: %s", step, model, _progress(status, completed, total))
                last_log = now
            last_status = status
            # A create that pulls its base streams the pull's own "success" first: only
            # the stream's end tells which one was the last.
            if status == "success" and step != "create":
                break
    except requests.RequestException as exc:
        cause = _broken(exc, time.monotonic() - last_line, stall_timeout, last_status)
        raise OllamaError(step, cause, model=model) from exc
    if last_status != "success":
        raise OllamaError(
            step, f"stream ended before success (last status {last_status!r})", model=model
        )
    log.info("ollama: %s %s in %.1f s", _DONE[step], model, time.monotonic() - started)
    return lines, layers


def _event(raw: bytes, step: str, model: str) -> dict[str, Any]:
    """One progress line as its JSON object; Ollama's own ``error`` line raises."""
    try:
        event = json.loads(raw)
    except ValueError as exc:
        raise OllamaError(step, f"invalid progress line {shorten(raw)}", model=model) from exc
    if not isinstance(event, dict):
        raise OllamaError(step, f"invalid progress line {shorten(raw)}", model=model)
    if "error" in event:
        raise OllamaError(step, f"Ollama reported: {event['error']}", model=model)
    return event


def unreachable(base_url: str, exc: Exception) -> str:
    """Why a request got no answer at all."""
    return f"Ollama unreachable at {base_url}: {type(exc).__name__}: {exc}"


def _broken(exc: Exception, silent: float, stall_timeout: float, last_status: str) -> str:
    """Why a stream broke: silent for about its stall bound, or cut off."""
    if silent >= stall_timeout * 0.9:
        return f"stalled: no progress for {silent:.1f} s (last status {last_status!r})"
    return f"stream broke after status {last_status!r}: {exc}"


def http_cause(resp: requests.Response) -> str:
    """An HTTP error answer in a few words: its status and Ollama's ``error``, else its text."""
    try:
        body = resp.json()
        message = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        message = None
    return f"HTTP {resp.status_code}: {message or shorten(resp.text)}"


def _progress(status: str, completed: int, total: int) -> str:
    if status.startswith("pulling ") and total > 0:
        mib = 1024 * 1024
        pct = 100.0 * completed / total
        return f"{status} {pct:.0f}% ({completed / mib:.1f}/{total / mib:.1f} MiB)"
    return status


def int_field(value: object) -> int:
    """An answer's integer field; 0 when it is missing or not an integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def shorten(value: object, limit: int = 200) -> str:
    """A body or a line, as text cut at ``limit`` characters, for an error message."""
    if isinstance(value, bytes):
        text = value.decode(errors="replace")
    elif isinstance(value, str):
        text = value
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
