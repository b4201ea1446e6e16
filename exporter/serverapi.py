"""The exporter's seam to a fleet's model server: the ModelServerApi protocol and its records.

The poll and probe loops (exporter.serverpoll) reach the server through this protocol only;
Ollama's API implements it in exporter.adapters.model_server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class ServerError(Exception):
    """The model server did not answer, or answered with an error."""


@dataclass(frozen=True)
class LoadedModel:
    """One model the server lists as loaded: its total size and the part of it in VRAM."""

    name: str
    size: int
    size_vram: int
    expires_at: datetime | None = None

    @property
    def system_bytes(self) -> int:
        """Bytes outside VRAM (offloaded to system memory)."""
        return max(self.size - self.size_vram, 0)


@dataclass(frozen=True)
class Generation:
    """What a generate request reports of itself (Ollama's ``eval_count``, ``eval_duration``)."""

    eval_count: int | None = None
    eval_duration_ns: int | None = None

    @property
    def tokens_per_second(self) -> float | None:
        """Generated tokens per second of generation, as the server measured it."""
        if not self.eval_count or not self.eval_duration_ns or self.eval_duration_ns <= 0:
            return None
        return self.eval_count / (self.eval_duration_ns / 1e9)


class ModelServerApi(Protocol):
    """The two calls the exporter makes to a fleet's model server; both raise ServerError."""

    def loaded(self, timeout: float) -> list[LoadedModel]:
        """The models loaded now."""
        ...

    def generate(self, model: str, prompt: str, num_predict: int, timeout: float) -> Generation:
        """Ask ``model`` for at most ``num_predict`` tokens, leaving its keep-alive alone."""
        ...


ApiFactory = Callable[[str], ModelServerApi]  # server URL -> its API
