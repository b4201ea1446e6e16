"""A fleet's ladder: its models (rungs) from the largest, preferred, to the smallest, and the
original system's four."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from remediator.ports.model_server import CreateSpec

__all__ = ["DEFAULT_LADDER", "MIB", "Ladder", "Rung"]

MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class Rung:
    """One model of a ladder; ``create`` says how it is made when missing (else it is pulled)."""

    name: str
    size_mb: int
    description: str = ""
    create: CreateSpec | None = None

    @property
    def size_bytes(self) -> int:
        """Size in bytes (size_mb is MiB, as Ollama reports model sizes)."""
        return self.size_mb * MIB


DEFAULT_LADDER: Final[tuple[Rung, ...]] = (
    Rung("llama3.2:3b", 2048, "Large model - 3B parameters"),
    Rung("phi3:mini", 2200, "Medium model - Phi3 mini"),
    Rung("tinyllama:1.1b", 637, "Small model - 1.1B parameters"),
    Rung("qwen2.5:0.5b", 397, "Tiny model - 0.5B parameters"),
)


@dataclass(frozen=True)
class Ladder:
    """Models from largest (index 0, preferred) to smallest."""

    rungs: tuple[Rung, ...]

    def __len__(self) -> int:
        return len(self.rungs)

    def __getitem__(self, index: int) -> Rung:
        return self.rungs[index]

    @property
    def names(self) -> list[str]:
        """Model names in ladder order."""
        return [r.name for r in self.rungs]

    def index_of(self, name: str) -> int | None:
        """Position of the model named ``name``, or None when it is not on the ladder."""
        for i, rung in enumerate(self.rungs):
            if rung.name == name:
                return i
        return None
