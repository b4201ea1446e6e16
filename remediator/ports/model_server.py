"""The model-server seam: what a switch needs from the server that runs the models.

A fleet's ``server.kind`` chooses the implementation (built in :mod:`remediator.app.wiring`);
Ollama (:mod:`remediator.adapters.ollama`) is the one kind today. The core (actions.py)
speaks only to :class:`ModelServer`. Every failure is a :class:`ModelServerError` naming the
step (``list_models``, ``pull``, ``create``, ``unload``, ``loaded``, ``generate``) and the
cause, so a switch can report it and count it whatever the server is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from remediator.ports.errors import StepError

# The kinds `fleets.*.server.kind` accepts; each has a builder in remediator.app.wiring.
SERVER_KINDS: Final[tuple[str, ...]] = ("ollama",)
DEFAULT_KIND: Final = "ollama"


class ModelServerError(StepError):
    """A model-server request failed; ``step`` names the operation and ``cause`` what went wrong."""

    def __init__(
        self, step: str, cause: str, *, model: str | None = None, server: str = "model server"
    ) -> None:
        self.model = model
        super().__init__(server, step, cause, repr(model) if model else None)


@dataclass(frozen=True)
class LocalModel:
    """A model present in the server's local store."""

    name: str
    size: int


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded in memory: ``size`` bytes in all, ``size_vram`` of them on the GPU."""

    name: str
    size: int
    size_vram: int

    @property
    def offloaded_bytes(self) -> int:
        """Bytes of the model that did not fit in VRAM and run from system memory."""
        return max(0, self.size - self.size_vram)


@dataclass(frozen=True)
class PullResult:
    """What a finished pull reported."""

    model: str
    seconds: float
    completed_bytes: int
    total_bytes: int
    status_lines: int


# A create parameter's value: a scalar, or a tuple for the ones given several times (stop).
CreateValue = str | int | float | bool | tuple[str, ...]


@dataclass(frozen=True)
class CreateSpec:
    """How a model missing from the store is made from another one (a custom rung).

    The fields are those of Ollama's ``/api/create`` (``from``, ``parameters``, ``system``,
    ``template``, ``license``, ``messages``, ``quantize``), already merged from the rung's
    config and its Modelfile (``modelfile``: the path it came from, for the reports).
    Tuples, not dicts and lists, so a rung stays hashable.
    """

    from_model: str
    parameters: tuple[tuple[str, CreateValue], ...] = ()
    system: str | None = None
    template: str | None = None
    license: str | None = None
    messages: tuple[tuple[str, str], ...] = ()  # (role, content)
    quantize: str | None = None
    modelfile: str | None = None

    def request_fields(self) -> dict[str, Any]:
        """The request's fields other than the model's own name (only those given)."""
        body: dict[str, Any] = {"from": self.from_model}
        if self.parameters:
            body["parameters"] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.parameters
            }
        for key in ("system", "template", "license", "quantize"):
            if (value := getattr(self, key)) is not None:
                body[key] = value
        if self.messages:
            body["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        return body


@dataclass(frozen=True)
class CreateResult:
    """What a finished create reported."""

    model: str
    seconds: float
    status_lines: int


@dataclass(frozen=True)
class Generation:
    """One answer to a probe prompt, with the server's own timing of it."""

    model: str
    text: str
    tokens: int  # tokens generated
    eval_seconds: float  # time spent generating them
    prompt_tokens: int = 0
    total_seconds: float = 0.0  # load, prompt and generation
    load_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed, None when the server reported no generation time."""
        return self.tokens / self.eval_seconds if self.eval_seconds > 0 else None


@runtime_checkable
class ModelServer(Protocol):
    """The operations a switch and a probe need from a model server."""

    def list_models(self) -> list[LocalModel]:
        """Models in the server's local store."""
        ...

    def has_model(self, model: str) -> bool:
        """True when ``model`` is in the local store."""
        ...

    def pull(self, model: str, *, timeout: float = 1800.0) -> PullResult:
        """Fetch ``model`` into the local store within ``timeout`` seconds."""
        ...

    def ensure_pulled(self, model: str, *, timeout: float = 1800.0) -> bool:
        """Pull ``model`` unless it is already local; True when a pull was needed."""
        ...

    def create(self, model: str, spec: CreateSpec, *, timeout: float = 1800.0) -> CreateResult:
        """Make ``model`` from ``spec.from_model`` (which must be local) within ``timeout``."""
        ...

    def unload(self, model: str) -> bool:
        """Free the memory ``model`` holds; False when the server does not know it."""
        ...

    def loaded(self) -> list[LoadedModel]:
        """Models loaded in memory, with the part in VRAM and the part offloaded."""
        ...

    def generate(
        self, model: str, prompt: str, *, max_tokens: int | None = None, timeout: float = 60.0
    ) -> Generation:
        """Answer ``prompt`` with ``model`` (loading it if needed), with the server's timings."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
