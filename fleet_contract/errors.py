"""The kinds of VRAM error the exporter counts, with the log patterns that find them by default,
and the lines that show the model server served a request (which end a run of errors).

A kind's name is the ``kind`` label of ``model_fleet_vram_errors_total``. A new kind is one
entry here (plus its tests): the classifier's defaults, the docs table and the metric's label
values all follow. Patterns are Python regular expressions searched within one log line; a
line counts once, for the first kind (in this order) with a pattern that matches it.

The texts are Ollama's own (docs/architecture.md, "Error kinds", names the source file and
the versions each was read in); only the message texts are used, never Ollama's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

OOM: Final = "oom"
SYSTEM_MEMORY: Final = "system_memory"
VRAM_RECOVERY_TIMEOUT: Final = "vram_recovery_timeout"


@dataclass(frozen=True)
class ErrorKind:
    """One kind of VRAM error: its label value, default patterns and what it means."""

    name: str
    default_patterns: tuple[str, ...]
    meaning: str


# Ollama's own messages (llama.cpp's CUDA backend and allocator on the legacy runner; the new
# engine's layout search in llm/server.go; the scheduler in server/sched.go), then the original
# system's five substrings. One failed load prints several of them within a moment: the
# incident rule (exporter.incidents) counts them once.
ERROR_KINDS: Final[tuple[ErrorKind, ...]] = (
    ErrorKind(
        OOM,
        (
            # legacy runner, ggml-cuda.cu: "ggml_backend_cuda_buffer_type_alloc_buffer:
            # allocating 2187.55 MiB on device 0: cudaMalloc failed: out of memory"
            r"cudaMalloc failed: out of memory",
            # ggml-cuda.cu's CUDA_CHECK, at load or while generating: "CUDA error: out of memory"
            r"CUDA error: out of memory",
            # ggml-alloc.c: "alloc_tensor_range: failed to allocate CUDA0 buffer of size N"
            r"failed to allocate CUDA\d* buffer",
            # llama.cpp's model loader: "llama_model_load: error loading model: unable to
            # allocate CUDA0 buffer"
            r"unable to allocate CUDA\d* buffer",
            # llama.cpp, llama-kv-cache.cpp: the weights fitted, the context's KV cache did not
            # (cudaMalloc's line comes first, so such an incident is oom whatever its kinds)
            r"failed to allocate buffer for kv cache",
            # new engine, llm/server.go: WARN "memory layout cannot be allocated" after the
            # backoff ran out, or the error "memory layout cannot be allocated with num_gpu = N";
            # the INFO "model layout did not fit, applying backoff" before it is no failure
            # (the next layout may fit) and is not matched
            r"memory layout cannot be allocated",
            # new engine, llm/server.go: the layout fitted but committing it failed
            r"failed to commit memory for model",
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
        SYSTEM_MEMORY,
        (
            # llm/server.go: WARN "model request too large for system", and the load's error
            # "model requires more system memory (X) than is available (Y)". Not the INFO
            # "model requires more system memory than is currently available, evicting a model
            # to make space": no "(" after "memory", and it is no failure.
            r"model request too large for system",
            r"model requires more system memory \(",
        ),
        "the part of the model that does not fit in VRAM does not fit in system memory either",
    ),
    ErrorKind(
        VRAM_RECOVERY_TIMEOUT,
        (
            # sched.go: "gpu VRAM usage didn't recover within timeout" (WARN before Ollama
            # 0.12.6, DEBUG from 0.12.6: seen only with OLLAMA_DEBUG=1); the original system
            # also matched the shorter form.
            r"VRAM usage didn't recover",
        ),
        "after unloading a model, the GPU's memory did not come back in time",
    ),
)

# A request the model server served: gin's access line (Ollama's HTTP router logs every
# request on stdout, server/routes.go) with a 2xx status for an endpoint that runs a model.
# Polls (/api/tags, /api/ps, /api/version, HEAD /) never count: they touch no model.
#   [GIN] 2025/11/20 - 10:01:02 | 200 |     1.234567s |      172.17.0.1 | POST     "/api/chat"
SERVED_ENDPOINTS: Final = (
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
)
SERVED_PATTERN: Final = (
    r"\[GIN\][^|\n]*\|\s*2\d\d\s*\|[^|\n]*\|[^|\n]*\|\s*POST\s+\"(?:"
    + "|".join(e.replace("/", r"/") for e in SERVED_ENDPOINTS)
    + r")\""
)
# The label value the success matcher uses inside the exporter (never a `kind` label).
SERVED: Final = "served"
