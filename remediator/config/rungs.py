"""A rung's ``create`` mapping: how a custom model is made when the server lacks it.

Read at start-up, Modelfile included, so check-config and the service's start refuse a rung
that could never be made, long before a switch needs it. The result is a
:class:`~remediator.ports.model_server.CreateSpec`: the fields of Ollama's ``/api/create``, merged
from the mapping and the Modelfile, each field given by one of them only (``from`` may be in both
when they agree).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from remediator.config import modelfile
from remediator.config.reader import Reader, key_path, type_name
from remediator.ports.model_server import CreateSpec, CreateValue

__all__ = ["CREATE_KEYS", "PARAMETERS", "QUANTIZE_TYPES", "parse_create"]

CREATE_KEYS: Final = frozenset(
    {"from", "modelfile", "parameters", "system", "template", "license", "quantize"}
)
# What Ollama's /api/create accepts as `quantize` (fs/ggml ParseFileType, upper-cased first):
# only these; a q2_K or q5_K_M rung is pulled as a library tag instead.
QUANTIZE_TYPES: Final = ("q8_0", "q4_K_M", "q4_K_S", "q4_K", "f16", "f32", "bf16")
# Ollama's model parameters (api.Options and api.Runner): a typo such as `num_cxt` would be
# kept by Ollama and ignored, leaving a rung as large as its base.
PARAMETERS: Final = frozenset(
    {
        "num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
        "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p",
        "repeat_last_n", "temperature", "repeat_penalty", "presence_penalty",
        "frequency_penalty", "stop",
    }
)  # fmt: skip


def parse_create(r: Reader, value: Any, where: str, rung: str) -> CreateSpec | None:
    """The rung's create spec (None when it has no ``create``); errors name the key."""
    if value is None:
        return None
    m = r.mapping(value, where, CREATE_KEYS)
    made = _read_modelfile(r, m, where) if "modelfile" in m else modelfile.Modelfile()
    base = _base(r, m, where, made)
    if _same_name(base, rung):
        raise r.fail(key_path(where, "from"), f"is the rung itself ({rung}): name another model")
    params = _parameters(r, m, where)
    texts = {key: _text(r, m, key, where) for key in ("system", "template", "license")}
    for key, from_file in (
        ("parameters", bool(params) and bool(made.parameters)),
        ("system", texts["system"] is not None and made.system is not None),
        ("template", texts["template"] is not None and made.template is not None),
        ("license", texts["license"] is not None and made.license is not None),
    ):
        if from_file:
            raise r.fail(key_path(where, key), "is set in the Modelfile too: keep one of them")
    return CreateSpec(
        from_model=base,
        parameters=params or _as_pairs(r, made.parameters, key_path(where, "modelfile")),
        system=texts["system"] if texts["system"] is not None else made.system,
        template=texts["template"] if texts["template"] is not None else made.template,
        license=texts["license"] if texts["license"] is not None else made.license,
        messages=made.messages,
        quantize=_quantize(r, m, where),
        modelfile=m.get("modelfile"),
    )


def _read_modelfile(r: Reader, m: dict[str, Any], where: str) -> modelfile.Modelfile:
    """The Modelfile, relative to the config file's folder (the working one without a file)."""
    key = key_path(where, "modelfile")
    name = r.string(m, "modelfile", where, None)
    source = Path(r.source)
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = (source.parent if source.is_file() else Path.cwd()) / path
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise r.fail(key, f"cannot read the Modelfile {path}: {exc}") from None
    try:
        return modelfile.parse_modelfile(text)
    except modelfile.ModelfileError as exc:
        raise r.fail(key, f"{path}: {exc}") from None


def _base(r: Reader, m: dict[str, Any], where: str, made: modelfile.Modelfile) -> str:
    key = key_path(where, "from")
    if m.get("from") is None:
        if made.from_model is None:
            what = "the Modelfile has no FROM and " if "modelfile" in m else ""
            raise r.fail(key, f"is required: {what}a custom model is made from another model")
        return made.from_model
    base = r.string(m, "from", where, None)
    if modelfile.looks_like_file(base):
        raise r.fail(
            key,
            f"{base!r} names weights on disk, which need a blob upload (/api/blobs) that "
            "model-fleet does not do: name a model Ollama can pull or already has",
        )
    if made.from_model is not None and not _same_name(made.from_model, base):
        raise r.fail(key, f"is {base} but the Modelfile says FROM {made.from_model}: keep one")
    return base


def _parameters(r: Reader, m: dict[str, Any], where: str) -> tuple[tuple[str, CreateValue], ...]:
    key = key_path(where, "parameters")
    value = m.get("parameters")
    if value is None:
        return ()
    if not isinstance(value, dict) or not value:
        raise r.fail(key, f"must be a non-empty mapping of parameter to value, got {value!r}")
    return _as_pairs(r, value, key)


def _as_pairs(r: Reader, params: dict[str, Any], key: str) -> tuple[tuple[str, CreateValue], ...]:
    """Parameters checked against Ollama's names, as sorted hashable pairs."""
    pairs: list[tuple[str, CreateValue]] = []
    for name, value in sorted(params.items(), key=lambda kv: str(kv[0])):
        here = f"{key}.{name}"
        if name not in PARAMETERS:
            raise r.fail(here, f"is not an Ollama parameter ({', '.join(sorted(PARAMETERS))})")
        if name in modelfile.LIST_PARAMETERS:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                raise r.fail(here, f"must be a string or a list of strings, got {value!r}")
            pairs.append((name, tuple(items)))
        elif isinstance(value, str | int | float | bool):
            pairs.append((name, value))
        else:
            raise r.fail(here, f"must be a number, a string or true/false, got {type_name(value)}")
    return tuple(pairs)


def _text(r: Reader, m: dict[str, Any], key: str, where: str) -> str | None:
    return None if m.get(key) is None else r.string(m, key, where, None)


def _quantize(r: Reader, m: dict[str, Any], where: str) -> str | None:
    if m.get("quantize") is None:
        return None
    value = r.string(m, "quantize", where, None)
    # Ollama upper-cases the type before it looks it up: q4_k_m is Q4_K_M.
    for known in QUANTIZE_TYPES:
        if value.upper() == known.upper():
            return known
    raise r.fail(
        key_path(where, "quantize"),
        f"{value!r} is not a type Ollama quantizes to ({', '.join(QUANTIZE_TYPES)}); other "
        "quantizations are pulled as library tags (e.g. llama3.1:8b-instruct-q2_K)",
    )


def _same_name(a: str, b: str) -> bool:
    """``name`` and ``name:latest`` are one model (the config layer knows no adapter)."""

    def canonical(name: str) -> str:
        return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"

    return canonical(a) == canonical(b)
