"""Ollama as the :class:`~remediator.ports.model_server.ModelServer`: list, pull, create, unload,
/api/ps, generate.

The only module of the remediator that talks to Ollama (``fleets.*.server.kind: ollama``).
Every failure is an :class:`OllamaError` (a
:class:`~remediator.ports.model_server.ModelServerError`) that names the step (``list_models``,
``pull``, ``create``, ``unload``, ``loaded``, ``generate``) and the cause, so a switch can report
it and count it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Final

import requests

from remediator.ports.model_server import (
    CreateResult,
    CreateSpec,
    Generation,
    LoadedModel,
    LocalModel,
    ModelServerError,
    PullResult,
)

log = logging.getLogger(__name__)

DEFAULT_URL: Final = "http://127.0.0.1:11434"
# The past tense of a streamed step, for the log line that closes it.
_DONE: Final = {"pull": "pulled", "create": "created"}


class OllamaError(ModelServerError):
    """An Ollama request failed (the message starts "ollama <step>")."""

    def __init__(self, step: str, cause: str, *, model: str | None = None) -> None:
        super().__init__(step, cause, model=model, server="ollama")


def canonical_name(name: str) -> str:
    """Ollama's canonical form of a model name: ``llama3.2`` is ``llama3.2:latest``."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def same_model(a: str, b: str) -> bool:
    """True when two names denote the same model (tag ``latest`` is implied)."""
    return canonical_name(a) == canonical_name(b)


class OllamaServer:
    """A small typed client for the Ollama endpoints a model switch and a probe need."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = session or requests.Session()

    def close(self) -> None:
        """Release pooled connections."""
        self._session.close()

    def list_models(self) -> list[LocalModel]:
        """Models in Ollama's local store."""
        body = self._get_json("list_models", "/api/tags")
        models = body.get("models")
        if not isinstance(models, list):
            raise OllamaError("list_models", f"unexpected /api/tags answer: {_short(body)}")
        out = []
        for item in models:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise OllamaError("list_models", f"unexpected model entry: {_short(item)}")
            out.append(LocalModel(name=item["name"], size=_int(item.get("size"))))
        return out

    def has_model(self, model: str) -> bool:
        """True when ``model`` is in the local store (``name`` and ``name:latest`` are one)."""
        return any(same_model(m.name, model) for m in self.list_models())

    def loaded(self) -> list[LoadedModel]:
        """Models loaded in memory, with their total size and the part resident in VRAM."""
        body = self._get_json("loaded", "/api/ps")
        models = body.get("models")
        if not isinstance(models, list):
            raise OllamaError("loaded", f"unexpected /api/ps answer: {_short(body)}")
        out = []
        for item in models:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise OllamaError("loaded", f"unexpected model entry: {_short(item)}")
            out.append(
                LoadedModel(
                    name=item["name"],
                    size=_int(item.get("size")),
                    size_vram=_int(item.get("size_vram")),
                )
            )
        return out

    def unload(self, model: str) -> bool:
        """Unload ``model`` from memory (``keep_alive: 0``); False if Ollama does not know it."""
        url = f"{self.base_url}/api/generate"
        try:
            resp = self._session.post(
                url, json={"model": model, "keep_alive": 0, "stream": False}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise OllamaError("unload", _unreachable(self.base_url, exc), model=model) from exc
        if resp.status_code == 404:
            # Not in the local store, hence not loaded either: nothing to free.
            log.info("ollama unload of %r: not known to Ollama, nothing to unload", model)
            return False
        body = self._decode(resp, "unload", model)
        if body.get("done") is not True:
            raise OllamaError("unload", f"unexpected answer: {_short(body)}", model=model)
        log.info("ollama: unloaded %s (done_reason=%s)", model, body.get("done_reason"))
        return True

    def generate(
        self, model: str, prompt: str, *, max_tokens: int | None = None, timeout: float = 60.0
    ) -> Generation:
        """Answer ``prompt`` with ``model`` (Ollama loads it first), without streaming.

        The figures are Ollama's own: ``eval_count`` tokens in ``eval_duration`` nanoseconds.
        """
        payload: dict[str, Any] = {"model": model, "prompt": prompt, "stream": False}
        if max_tokens is not None:
            payload["options"] = {"num_predict": max_tokens}
        try:
            resp = self._session.post(
                f"{self.base_url}/api/generate", json=payload, timeout=timeout
            )
        except requests.RequestException as exc:
            raise OllamaError("generate", _unreachable(self.base_url, exc), model=model) from exc
        body = self._decode(resp, "generate", model)
        text = body.get("response")
        if body.get("done") is not True or not isinstance(text, str):
            raise OllamaError("generate", f"unexpected answer: {_short(body)}", model=model)
        return Generation(
            model=model,
            text=text,
            tokens=_int(body.get("eval_count")),
            eval_seconds=_int(body.get("eval_duration")) / 1e9,
            prompt_tokens=_int(body.get("prompt_eval_count")),
            total_seconds=_int(body.get("total_duration")) / 1e9,
            load_seconds=_int(body.get("load_duration")) / 1e9,
        )

    def pull(
        self,
        model: str,
        *,
        timeout: float = 1800.0,
        stall_timeout: float = 60.0,
        progress_interval: float = 5.0,
    ) -> PullResult:
        """Pull ``model``, logging the streamed progress; raise OllamaError on error or timeout.

        ``timeout`` bounds the whole pull (checked as progress arrives); ``stall_timeout`` bounds
        the wait for the next progress line, so a silent server fails within
        ``timeout + min(timeout, stall_timeout)``.
        """
        started = time.monotonic()
        deadline = started + timeout
        read_timeout = min(timeout, stall_timeout)
        log.info("ollama: pulling %s (timeout %.0f s)", model, timeout)
        body = {"model": model, "stream": True}
        with self._open_stream("/api/pull", body, "pull", model, timeout, read_timeout) as resp:
            lines, layers = self._follow(
                resp, "pull", model, started, deadline, read_timeout, progress_interval
            )
        done = sum(c for c, _ in layers.values())
        size = sum(t for _, t in layers.values())
        return PullResult(model, time.monotonic() - started, done, size, lines)

    def _open_stream(
        self,
        path: str,
        body: dict[str, Any],
        step: str,
        model: str,
        timeout: float,
        read_timeout: float,
    ) -> Any:
        """POST a streamed request (a pull, a create); OllamaError naming ``step`` when Ollama
        is not reached or answers an HTTP error (the response closed then)."""
        try:
            resp = self._session.post(
                f"{self.base_url}{path}",
                json=body,
                stream=True,
                timeout=(min(self.timeout, timeout), read_timeout),
            )
        except requests.RequestException as exc:
            raise OllamaError(step, _unreachable(self.base_url, exc), model=model) from exc
        if resp.status_code >= 400:
            with resp:
                raise OllamaError(step, _http_cause(resp), model=model)
        return resp

    def create(
        self,
        model: str,
        spec: CreateSpec,
        *,
        timeout: float = 1800.0,
        stall_timeout: float = 60.0,
        progress_interval: float = 5.0,
    ) -> CreateResult:
        """Make ``model`` through ``/api/create`` from ``spec`` (its base must be local: Ollama
        would pull a missing one itself, unbounded by our timeout), logging the streamed
        status; raise OllamaError on error or timeout, bounded as :meth:`pull` is."""
        started = time.monotonic()
        read_timeout = min(timeout, stall_timeout)
        log.info("ollama: creating %s from %s (timeout %.0f s)", model, spec.from_model, timeout)
        body = {"model": model, **spec.request_fields(), "stream": True}
        with self._open_stream("/api/create", body, "create", model, timeout, read_timeout) as resp:
            lines, _ = self._follow(
                resp, "create", model, started, started + timeout, read_timeout, progress_interval
            )
        return CreateResult(model, time.monotonic() - started, lines)

    def ensure_pulled(self, model: str, *, timeout: float = 1800.0) -> bool:
        """Pull ``model`` unless it is already local; True when a pull was needed."""
        if self.has_model(model):
            log.info("ollama: %s is already pulled", model)
            return False
        self.pull(model, timeout=timeout)
        return True

    def _follow(
        self,
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
                try:
                    event = json.loads(raw)
                except ValueError as exc:
                    raise OllamaError(
                        step, f"invalid progress line {_short(raw)}", model=model
                    ) from exc
                if not isinstance(event, dict):
                    raise OllamaError(step, f"invalid progress line {_short(raw)}", model=model)
                if "error" in event:
                    raise OllamaError(step, f"Ollama reported: {event['error']}", model=model)
                status = str(event.get("status", ""))
                if "total" in event:
                    total = _int(event.get("total"))
                    completed = _int(event.get("completed"))
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

    def _get_json(self, step: str, path: str) -> dict[str, Any]:
        try:
            resp = self._session.get(f"{self.base_url}{path}", timeout=self.timeout)
        except requests.RequestException as exc:
            raise OllamaError(step, _unreachable(self.base_url, exc)) from exc
        return self._decode(resp, step, None)

    def _decode(self, resp: requests.Response, step: str, model: str | None) -> dict[str, Any]:
        if resp.status_code >= 400:
            raise OllamaError(step, _http_cause(resp), model=model)
        try:
            body = resp.json()
        except ValueError as exc:
            raise OllamaError(step, f"invalid JSON: {_short(resp.text)}", model=model) from exc
        if not isinstance(body, dict):
            raise OllamaError(step, f"expected a JSON object, got {_short(body)}", model=model)
        return body


def _unreachable(base_url: str, exc: Exception) -> str:
    return f"Ollama unreachable at {base_url}: {type(exc).__name__}: {exc}"


def _broken(exc: Exception, silent: float, stall_timeout: float, last_status: str) -> str:
    """Why a stream broke: silent for about its stall bound, or cut off."""
    if silent >= stall_timeout * 0.9:
        return f"stalled: no progress for {silent:.1f} s (last status {last_status!r})"
    return f"stream broke after status {last_status!r}: {exc}"


def _http_cause(resp: requests.Response) -> str:
    try:
        body = resp.json()
        message = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        message = None
    return f"HTTP {resp.status_code}: {message or _short(resp.text)}"


def _progress(status: str, completed: int, total: int) -> str:
    if status.startswith("pulling ") and total > 0:
        mib = 1024 * 1024
        pct = 100.0 * completed / total
        return f"{status} {pct:.0f}% ({completed / mib:.1f}/{total / mib:.1f} MiB)"
    return status


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _short(value: object, limit: int = 200) -> str:
    if isinstance(value, bytes):
        text = value.decode(errors="replace")
    elif isinstance(value, str):
        text = value
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
