"""Ollama as the :class:`~remediator.ports.model_server.ModelServer`: list, pull, create, unload,
/api/ps, generate.

The only module of the remediator that talks to Ollama (``fleets.*.server.kind: ollama``); its
answers are read in :mod:`remediator.adapters.ollama_answers`. Every failure is an
:class:`OllamaError` (a :class:`~remediator.ports.model_server.ModelServerError`) that names the
step (``list_models``, ``pull``, ``create``, ``unload``, ``loaded``, ``generate``) and the cause,
so a switch can report it and count it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import requests

from remediator.adapters.ollama_answers import (
    OllamaError,
    decode,
    follow,
    http_cause,
    int_field,
    shorten,
    unreachable,
)
from remediator.ports.model_server import (
    CreateResult,
    CreateSpec,
    Generation,
    LoadedModel,
    LocalModel,
    PullResult,
)

__all__ = ["DEFAULT_URL", "OllamaError", "OllamaServer", "canonical_name", "same_model"]

log = logging.getLogger(__name__)

DEFAULT_URL: Final = "http://127.0.0.1:11434"


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
        return [
            LocalModel(name=item["name"], size=int_field(item.get("size")))
            for item in self._model_entries("list_models", "/api/tags")
        ]

    def has_model(self, model: str) -> bool:
        """True when ``model`` is in the local store (``name`` and ``name:latest`` are one)."""
        return any(same_model(m.name, model) for m in self.list_models())

    def loaded(self) -> list[LoadedModel]:
        """Models loaded in memory, with their total size and the part resident in VRAM."""
        return [
            LoadedModel(
                name=item["name"],
                size=int_field(item.get("size")),
                size_vram=int_field(item.get("size_vram")),
            )
            for item in self._model_entries("loaded", "/api/ps")
        ]

    def _model_entries(self, step: str, path: str) -> list[dict[str, Any]]:
        """The ``models`` of a listing (``/api/tags``, ``/api/ps``), each an object with a
        ``name``; anything else is an :class:`OllamaError` at ``step``."""
        body = self._get_json(step, path)
        models = body.get("models")
        if not isinstance(models, list):
            raise OllamaError(step, f"unexpected {path} answer: {shorten(body)}")
        for item in models:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise OllamaError(step, f"unexpected model entry: {shorten(item)}")
        return models

    def unload(self, model: str) -> bool:
        """Unload ``model`` from memory (``keep_alive: 0``); False if Ollama does not know it."""
        url = f"{self.base_url}/api/generate"
        try:
            resp = self._session.post(
                url, json={"model": model, "keep_alive": 0, "stream": False}, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise OllamaError("unload", unreachable(self.base_url, exc), model=model) from exc
        if resp.status_code == 404:
            # Not in the local store, hence not loaded either: nothing to free.
            log.info("ollama unload of %r: not known to Ollama, nothing to unload", model)
            return False
        body = decode(resp, "unload", model)
        if body.get("done") is not True:
            raise OllamaError("unload", f"unexpected answer: {shorten(body)}", model=model)
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
            raise OllamaError("generate", unreachable(self.base_url, exc), model=model) from exc
        body = decode(resp, "generate", model)
        text = body.get("response")
        if body.get("done") is not True or not isinstance(text, str):
            raise OllamaError("generate", f"unexpected answer: {shorten(body)}", model=model)
        return Generation(
            model=model,
            text=text,
            tokens=int_field(body.get("eval_count")),
            eval_seconds=int_field(body.get("eval_duration")) / 1e9,
            prompt_tokens=int_field(body.get("prompt_eval_count")),
            total_seconds=int_field(body.get("total_duration")) / 1e9,
            load_seconds=int_field(body.get("load_duration")) / 1e9,
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
            lines, layers = follow(
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
            raise OllamaError(step, unreachable(self.base_url, exc), model=model) from exc
        if resp.status_code >= 400:
            with resp:
                raise OllamaError(step, http_cause(resp), model=model)
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
            lines, _ = follow(
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

    def _get_json(self, step: str, path: str) -> dict[str, Any]:
        try:
            resp = self._session.get(f"{self.base_url}{path}", timeout=self.timeout)
        except requests.RequestException as exc:
            raise OllamaError(step, unreachable(self.base_url, exc)) from exc
        return decode(resp, step, None)
