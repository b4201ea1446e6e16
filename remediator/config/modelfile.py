"""A Modelfile read into the fields of Ollama's ``/api/create`` request.

Current Ollama takes no Modelfile text over the API: its own CLI parses the file and sends
``from``, ``parameters``, ``system``, ``template``, ``license`` and ``messages``. This module
does the same for a rung's ``create.modelfile``, so that check-config finds a broken file
before any switch needs it. Pure: text in, :class:`Modelfile` or :class:`ModelfileError` out.

A ``FROM`` that names a local weights file and ``ADAPTER`` need the file uploaded as a blob
(``/api/blobs``) first, which model-fleet does not do: both are refused, saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

# Ollama's instructions (case-insensitive in a Modelfile).
INSTRUCTIONS: Final = frozenset(
    {"from", "parameter", "template", "system", "adapter", "license", "message"}
)
MESSAGE_ROLES: Final = frozenset({"system", "user", "assistant"})
# Parameters that may be given several times, each line adding a value (Ollama's `stop`).
LIST_PARAMETERS: Final = frozenset({"stop"})
# What a FROM naming weights on disk looks like, rather than a model of the store.
_FILE_SUFFIXES: Final = (".gguf", ".bin", ".safetensors")
_FILE_PREFIXES: Final = ("/", "./", "../", "~", ".\\")
_TRIPLE: Final = '"""'

ParameterValue = str | int | float | bool | list[str]


class ModelfileError(ValueError):
    """The Modelfile cannot become a create request; the message names the line."""


@dataclass(frozen=True)
class Modelfile:
    """The create request's fields a Modelfile gave (None or empty: not given)."""

    from_model: str | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    license: str | None = None
    messages: tuple[tuple[str, str], ...] = ()  # (role, content)


def looks_like_file(name: str) -> bool:
    """True when ``name`` names weights on disk (a path, a .gguf), not a model of the store."""
    return name.startswith(_FILE_PREFIXES) or name.lower().endswith(_FILE_SUFFIXES)


def parse_modelfile(text: str) -> Modelfile:
    """Read a Modelfile's instructions; raise ModelfileError naming the line that is wrong."""
    found: dict[str, str] = {}
    parameters: dict[str, ParameterValue] = {}
    messages: list[tuple[str, str]] = []
    for lineno, command, value in _instructions(text):
        where = f"line {lineno}"
        if command == "parameter":
            name, _, raw = value.partition(" ")
            if not raw.strip():
                raise ModelfileError(f"{where}: PARAMETER needs a name and a value")
            _add_parameter(parameters, name.lower(), _unquote(raw.strip(), where))
        elif command == "message":
            role, _, content = value.partition(" ")
            if role.lower() not in MESSAGE_ROLES:
                roles = ", ".join(sorted(MESSAGE_ROLES))
                raise ModelfileError(f"{where}: MESSAGE role must be one of {roles}: {role!r}")
            messages.append((role.lower(), _unquote(content.strip(), where)))
        elif command == "adapter":
            raise ModelfileError(
                f"{where}: ADAPTER needs the adapter uploaded as a blob (/api/blobs), which "
                "model-fleet does not do: create the model once with `ollama create` instead"
            )
        else:
            found[command] = _unquote(value, where)
    base = found.get("from")
    if base is not None and looks_like_file(base):
        raise ModelfileError(
            f"FROM {base} names weights on disk, which need a blob upload (/api/blobs) that "
            "model-fleet does not do: FROM must name a model Ollama can pull or already has"
        )
    return Modelfile(
        from_model=base,
        parameters=parameters,
        system=found.get("system"),
        template=found.get("template"),
        license=found.get("license"),
        messages=tuple(messages),
    )


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, instruction in lower case, raw value) for each instruction; a
    triple-quoted value runs over several lines up to its closing quotes."""
    out: list[tuple[int, str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        command, _, value = line.partition(" ")
        command = command.lower()
        if command not in INSTRUCTIONS:
            allowed = ", ".join(sorted(c.upper() for c in INSTRUCTIONS))
            raise ModelfileError(f"line {lineno}: unknown instruction {command!r} ({allowed})")
        value = value.strip()
        if not value:
            raise ModelfileError(f"line {lineno}: {command.upper()} needs a value")
        # A triple quote opened and not closed on this line: the value goes on.
        if _TRIPLE in value and value.count(_TRIPLE) % 2 == 1:
            while i < len(lines) and _TRIPLE not in lines[i]:
                value += "\n" + lines[i]
                i += 1
            if i == len(lines):
                raise ModelfileError(f"line {lineno}: {_TRIPLE} opened and never closed")
            value += "\n" + lines[i]
            i += 1
        out.append((lineno, command, value))
    return out


def _unquote(value: str, where: str) -> str:
    """The value without its quotes: triple quotes keep inner newlines, single ones a line."""
    if value.startswith(_TRIPLE):
        if not value.endswith(_TRIPLE) or len(value) < 2 * len(_TRIPLE):
            raise ModelfileError(f"{where}: text after the closing {_TRIPLE}")
        return value[len(_TRIPLE) : -len(_TRIPLE)].strip("\n")
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise ModelfileError(f"{where}: unterminated quote in {value!r}")
        return value[1:-1]
    return value


def _add_parameter(parameters: dict[str, ParameterValue], name: str, raw: str) -> None:
    """Typed as Ollama's CLI sends them: numbers and booleans as such, ``stop`` as a list."""
    if name in LIST_PARAMETERS:
        values = parameters.setdefault(name, [])
        assert isinstance(values, list)
        values.append(raw)
        return
    parameters[name] = _typed(raw)


def _typed(raw: str) -> str | int | float | bool:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
