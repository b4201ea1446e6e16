"""The kinds of VRAM error the exporter counts, with the log patterns that find them by default.

A kind's name is the ``kind`` label of ``model_fleet_vram_errors_total``. A new kind is one
entry here (plus its tests): the classifier's defaults, the docs table and the metric's label
values all follow. Patterns are Python regular expressions searched within one log line; a
line counts once, for the first kind (in this order) with a pattern that matches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

OOM: Final = "oom"
VRAM_RECOVERY_TIMEOUT: Final = "vram_recovery_timeout"


@dataclass(frozen=True)
class ErrorKind:
    """One kind of VRAM error: its label value, default patterns and what it means."""

    name: str
    default_patterns: tuple[str, ...]
    meaning: str


# Ollama's own messages (server/sched.go, llm/server.go, llama.cpp's CUDA backend), then the
# original system's five substrings.
ERROR_KINDS: Final[tuple[ErrorKind, ...]] = (
    ErrorKind(
        OOM,
        (
            # llama.cpp: "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 24289.03 MiB
            # on device 0: cudaMalloc failed: out of memory"
            r"cudaMalloc failed: out of memory",
            # llama.cpp's CUDA_CHECK at load or while generating: "CUDA error: out of memory"
            r"CUDA error: out of memory",
            # Ollama's scheduler after an out-of-memory error from a running model
            r"runtime OOM detected",
            # sched.go: msg="error loading llama server" error="llama runner process has
            # terminated: ... out of memory"
            r"error loading llama server.*out of memory",
            # the original system's patterns
            r"CUDA out of memory",
            r"gpu memory exhausted",
            r"GPU memory allocation failed",
        ),
        "the model server ran out of GPU memory loading or running a model",
    ),
    ErrorKind(
        VRAM_RECOVERY_TIMEOUT,
        (
            # sched.go: "gpu VRAM usage didn't recover within timeout" (WARN before Ollama
            # 0.12.6, DEBUG after); the original system also matched the shorter form.
            r"VRAM usage didn't recover",
        ),
        "after unloading a model, the GPU's memory did not come back in time",
    ),
)
