"""A ModelServer kept in memory: the second implementation that proves the seam.

A local store, a registry to pull from and the loaded models, as plain dicts the tests read
and change; every call is recorded, and any step can be made to fail.
"""

from __future__ import annotations

from remediator.ports.model_server import (
    CreateResult,
    CreateSpec,
    Generation,
    LoadedModel,
    LocalModel,
    ModelServerError,
    PullResult,
)


class MemoryServer:
    """A model server with no network: models are names and sizes in bytes."""

    def __init__(
        self, models: dict[str, int] | None = None, *, registry: dict[str, int] | None = None
    ) -> None:
        self.models = dict(models or {})
        # None: any model can be pulled, at 1 GiB; else only these.
        self.registry = registry
        self.loaded_models: dict[str, tuple[int, int]] = {}  # name -> (size, size_vram)
        self.calls: list[tuple[str, str]] = []  # (step, model)
        self.failures: dict[str, str] = {}  # step -> cause
        self.closed = False

    def fail(self, step: str, cause: str) -> None:
        """Make every later call of ``step`` raise ModelServerError with ``cause``."""
        self.failures[step] = cause

    def load(self, model: str, size_vram: int | None = None) -> None:
        """Put a model of the store in memory, ``size_vram`` bytes of it on the GPU."""
        size = self.models[model]
        self.loaded_models[model] = (size, size if size_vram is None else size_vram)

    def _call(self, step: str, model: str = "") -> None:
        self.calls.append((step, model))
        if step in self.failures:
            raise ModelServerError(step, self.failures[step], model=model or None, server="memory")

    def list_models(self) -> list[LocalModel]:
        self._call("list_models")
        return [LocalModel(name, size) for name, size in sorted(self.models.items())]

    def has_model(self, model: str) -> bool:
        return any(m.name == model for m in self.list_models())

    def pull(self, model: str, *, timeout: float = 1800.0) -> PullResult:
        self._call("pull", model)
        size = 1 << 30 if self.registry is None else self.registry.get(model)
        if size is None:
            raise ModelServerError("pull", "not in the registry", model=model, server="memory")
        self.models[model] = size
        return PullResult(model, 0.0, size, size, 1)

    def ensure_pulled(self, model: str, *, timeout: float = 1800.0) -> bool:
        if self.has_model(model):
            return False
        self.pull(model, timeout=timeout)
        return True

    def create(self, model: str, spec: CreateSpec, *, timeout: float = 1800.0) -> CreateResult:
        self._call("create", model)
        base = self.models.get(spec.from_model)
        if base is None:
            raise ModelServerError(
                "create", f"{spec.from_model} is not local", model=model, server="memory"
            )
        self.models[model] = base
        return CreateResult(model, 0.0, 1)

    def unload(self, model: str) -> bool:
        self._call("unload", model)
        if model not in self.models:
            return False
        self.loaded_models.pop(model, None)
        return True

    def loaded(self) -> list[LoadedModel]:
        self._call("loaded")
        return [LoadedModel(n, s, v) for n, (s, v) in sorted(self.loaded_models.items())]

    def generate(
        self, model: str, prompt: str, *, max_tokens: int | None = None, timeout: float = 60.0
    ) -> Generation:
        self._call("generate", model)
        if model not in self.models:
            raise ModelServerError("generate", "model not found", model=model, server="memory")
        self.loaded_models.setdefault(model, (self.models[model], self.models[model]))
        tokens = min(max_tokens or 4, 4)
        return Generation(model, "ok " * tokens, tokens, eval_seconds=0.01 * tokens)

    def close(self) -> None:
        self.closed = True
