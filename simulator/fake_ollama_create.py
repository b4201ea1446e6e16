"""What the Ollama stand-in answers to ``POST /api/create``, as Ollama's CreateHandler does.

Pure: the request and the store in, the status lines and the model to store out. The lines
follow Ollama's (server/create.go): a base missing from the store is pulled first (the pull's
own lines, its ``success`` included), then ``quantizing F16 model to Q4_K_M`` when asked,
``using existing layer sha256:...`` / ``creating new layer sha256:...``, ``writing manifest``
and ``success``. Errors use Ollama's words. Only the standard library: the stand-in image
copies this file next to fake_ollama.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

INVALID_NAME = "invalid model name"
NO_SOURCE = "neither 'from' or 'files' was specified"
NO_MANIFEST = "pull model manifest: file does not exist"
ONLY_FROM_FLOATS = "quantization is only supported for F16 and F32 models"
# fs/ggml ParseFileType: what /api/create quantizes to (Q4_K is Q4_K_M), and in its error.
QUANTIZE_TO = ("F32", "F16", "BF16", "Q8_0", "Q4_K_S", "Q4_K_M", "Q4_K")
SUPPORTED_TEXT = "F32, F16, Q4_K_S, Q4_K_M, Q8_0"
# Bits per weight of each file type: a quantized model's size from its base's.
BITS = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q4_K_M": 4.85, "Q4_K_S": 4.58}


@dataclass
class CreatePlan:
    """The answer to one create: lines to stream (an error line ends them), the base to
    store when its pull's ``success`` goes out, and the model to store at the last one."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    pulled: tuple[str, int] | None = None
    created: tuple[str, int] | None = None
    file_type: str = ""


def canonical(name: str) -> str:
    """Ollama's canonical model name (``name`` without a tag means ``name:latest``)."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def file_type(name: str, known: dict[str, str]) -> str:
    """A model's file type: as created here, else read from a library tag (``-fp16``,
    ``-q8_0``), else Q4_K_M, the library's default."""
    if name in known:
        return known[name]
    tag = name.rsplit(":", 1)[-1].lower()
    for marker, kind in (("bf16", "BF16"), ("fp16", "F16"), ("f16", "F16"), ("fp32", "F32")):
        if marker in tag:
            return kind
    return "Q8_0" if "q8_0" in tag else "Q4_K_M"


def plan_create(
    body: dict[str, Any],
    models: dict[str, int],
    types: dict[str, str],
    pull_lines: Callable[[str, int], list[dict[str, Any]]],
    registry_size: Callable[[str], int | None],
) -> CreatePlan:
    """The lines for ``body``; ``pull_lines(name, size)`` and ``registry_size(name)`` are
    the fake's own, so a base is pulled here as /api/pull would pull it."""
    plan = CreatePlan()
    name, base = body.get("model") or body.get("name"), body.get("from")
    if not isinstance(name, str) or not name.strip():
        plan.lines.append({"error": INVALID_NAME, "status": 400})
        return plan
    if not isinstance(base, str) or not base:
        plan.lines.append({"error": NO_SOURCE, "status": 400})
        return plan
    base = canonical(base)
    size = models.get(base)
    if size is None:
        size = registry_size(base)
        if size is None:
            plan.lines += [{"status": "pulling manifest"}, {"error": NO_MANIFEST}]
            return plan
        plan.lines += pull_lines(base, size)
        plan.pulled = (base, size)
    have = file_type(base, types)
    want = str(body.get("quantize") or body.get("quantization") or "").upper()
    if want and want not in QUANTIZE_TO:
        plan.lines.append(
            {"error": f"unsupported quantization type {want} - supported types are "
             f"{SUPPORTED_TEXT}"}
        )  # fmt: skip
        return plan
    want = "Q4_K_M" if want == "Q4_K" else want
    layers = [("model", base)]
    if want and want != have:
        if have not in ("F16", "F32"):
            plan.lines.append({"error": ONLY_FROM_FLOATS})
            return plan
        plan.lines.append({"status": f"quantizing {have} model to {want}"})
        size = round(size * BITS[want] / BITS[have])
        layers = [("new", f"{base}/{want}")]
    for key in ("template", "system", "license", "parameters", "messages"):
        if body.get(key):
            layers.append(("new", json.dumps(body[key], sort_keys=True)))
    for kind, content in layers:
        digest = "sha256:" + hashlib.sha256(content.encode()).hexdigest()
        verb = "using existing" if kind == "model" else "creating new"
        plan.lines.append({"status": f"{verb} layer {digest}"})
    plan.lines += [{"status": "writing manifest"}, {"status": "success"}]
    plan.created = (canonical(name), size)
    plan.file_type = want or have
    return plan
