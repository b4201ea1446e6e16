"""App-config formats: one entry per kind of file, each with its key rule, reader and writer.

A new format is one class here (``name``, whether it takes a key and its default, ``read``,
``render``) added to FORMATS, plus its tests: the target type, the configuration's validation
and ``check-config`` all take the formats from this registry.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any, ClassVar, Final

import yaml

from remediator.appconfig import yaml_edit

# Named as before the layers (issue 22): log lines and their filters use the name.
log = logging.getLogger("remediator.adapters.appconfig.formats")

DEFAULT_ENV_KEY: Final = "OLLAMA_MODEL"
_ENV_LINE = re.compile(r"^(?P<lead>\s*(?:export\s+)?)(?P<key>[^\s=#]+)(?P<eq>\s*=\s*)(?P<rest>.*)$")


class FormatError(ValueError):
    """The key does not fit the format, or the file's content does not fit the format or key."""


class AppConfigFormat:
    """How one kind of file names the model. The default: a key path into a document."""

    name: ClassVar[str]
    takes_key: ClassVar[bool] = True  # False: the file holds the model name and nothing else
    default_key: ClassVar[str | None] = None  # None with takes_key: the key is required

    def check_key(self, key: str | None) -> str | None:
        """The key a target uses for ``key`` as configured; FormatError says what is wrong."""
        if not key or any(not seg for seg in key.split(".")):
            raise FormatError(f"a {self.name} target needs a key path")
        return key

    def read(self, text: str, key: str) -> str | None:
        """The model ``text`` names at ``key``; None when the key is absent."""
        raise NotImplementedError

    def render(self, text: str | None, key: str, model: str) -> str:
        """``text`` (None: no file yet) changed to name ``model`` at ``key``."""
        raise NotImplementedError


class EnvFormat(AppConfigFormat):
    """``KEY=value`` lines (shell or Docker env file); only the value changes."""

    name = "env"
    default_key = DEFAULT_ENV_KEY

    def check_key(self, key: str | None) -> str | None:
        """An env variable name, OLLAMA_MODEL when none is configured."""
        key = key or DEFAULT_ENV_KEY
        if not re.fullmatch(r"[^\s=#]+", key):
            raise FormatError(f"invalid env variable name {key!r}")
        return key

    def read(self, text: str, key: str) -> str | None:
        """The last assignment of ``key``, as a shell would see it."""
        return _env_get(text, key)

    def render(self, text: str | None, key: str, model: str) -> str:
        """Every assignment of ``key`` set to ``model``; appended when there is none."""
        return _env_set(text or "", key, model)


class _DocumentFormat(AppConfigFormat):
    """A document (JSON or YAML) with the model at a key path; missing mappings are created."""

    def read(self, text: str, key: str) -> str | None:
        """The string at the key path."""
        value = _get_path(_load(text, self.name), key.split("."))
        if value is None or isinstance(value, str):
            return value
        raise FormatError(f"key {key!r} holds {type(value).__name__}, not a model name")

    def render(self, text: str | None, key: str, model: str) -> str:
        """The document with the key path set."""
        setter = _json_set if self.name == "json" else _yaml_set
        return setter(text, key.split("."), model)


class JsonFormat(_DocumentFormat):
    """A JSON document; re-serialised with the file's indentation."""

    name = "json"


class YamlFormat(_DocumentFormat):
    """A YAML document; edited in place so comments and layout survive, when it can be."""

    name = "yaml"


class TextFormat(AppConfigFormat):
    """A file that holds only the model name."""

    name = "text"
    takes_key = False

    def check_key(self, key: str | None) -> str | None:
        """No key."""
        if key is not None:
            raise FormatError("a text target holds only the model name: no key")
        return None

    def read(self, text: str, key: str) -> str | None:
        """The file's content, stripped."""
        return text.strip() or None

    def render(self, text: str | None, key: str, model: str) -> str:
        """The model name and a newline."""
        return model + "\n"


FORMATS: dict[str, AppConfigFormat] = {
    f.name: f for f in (EnvFormat(), JsonFormat(), YamlFormat(), TextFormat())
}


def register_format(fmt: AppConfigFormat) -> None:
    """Add (or replace) a format: targets and the configuration accept it from now on."""
    FORMATS[fmt.name] = fmt


def _split(rest: str) -> tuple[str, str, str]:
    try:
        return yaml_edit.split_scalar(rest)
    except yaml_edit.ScalarError as exc:
        raise FormatError(str(exc)) from exc


def _env_get(text: str, key: str) -> str | None:
    value: str | None = None
    for line in text.splitlines():
        m = _ENV_LINE.match(line)
        if m and m["key"] == key:
            value = _split(m["rest"])[1]  # the last assignment wins, as in a shell
    return value


def _env_set(text: str, key: str, model: str) -> str:
    lines = text.splitlines(keepends=True)
    found = False
    for i, line in enumerate(lines):
        body = line.rstrip("\r\n")
        m = _ENV_LINE.match(body)
        if not m or m["key"] != key:
            continue
        quote, _, trailer = _split(m["rest"])
        if not quote and re.search(r"[\s#'\"]", model):
            quote = '"'
        value = model.replace('"', '\\"') if quote == '"' else model
        # Every assignment of the key, so no reader of the file sees the old model.
        lines[i] = f"{m['lead']}{key}{m['eq']}{quote}{value}{quote}{trailer}{line[len(body) :]}"
        found = True
    if not found:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(f"{key}={model}\n")
    return "".join(lines)


def _load(text: str, fmt: str) -> Any:
    try:
        return json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise FormatError(f"not valid {fmt.upper()}: {exc}") from exc


def _get_path(doc: Any, segments: list[str]) -> Any:
    node = doc
    for depth, seg in enumerate(segments):
        if node is None:
            return None
        if isinstance(node, dict):
            node = node.get(seg)
        elif isinstance(node, list) and seg.isdigit():
            node = node[int(seg)] if int(seg) < len(node) else None
        else:
            where = ".".join(segments[:depth]) or "the document"
            raise FormatError(f"{where} is a {type(node).__name__}, cannot hold key {seg!r}")
    return node


def _set_path(doc: Any, segments: list[str], model: str) -> Any:
    """Return ``doc`` with the key path set to ``model``, creating missing mappings."""
    root = {} if doc is None else doc
    node = root
    for depth, seg in enumerate(segments):
        last = depth == len(segments) - 1
        where = ".".join(segments[:depth]) or "the document"
        if isinstance(node, dict):
            if last:
                node[seg] = model
            else:
                if node.get(seg) is None:
                    node[seg] = {}
                node = node[seg]
        elif isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
            if last:
                node[int(seg)] = model
            else:
                node = node[int(seg)]
        else:
            raise FormatError(f"{where} is a {type(node).__name__}, cannot hold key {seg!r}")
    return root


def _json_set(text: str | None, segments: list[str], model: str) -> str:
    doc = _load(text, "json") if text and text.strip() else None
    doc = _set_path(doc, segments, model)
    indent: int | str | None = 2
    if text and "\n" in text.strip():
        m = re.search(r"\n([ \t]+)\S", text)
        if m:
            indent = m.group(1) if "\t" in m.group(1) else len(m.group(1))
    elif text and text.strip():
        indent = None  # a one-line file stays one line
    out = json.dumps(doc, indent=indent, ensure_ascii=False)
    return out + "\n" if text is None or text.endswith("\n") else out


def _yaml_set(text: str | None, segments: list[str], model: str) -> str:
    doc = _load(text, "yaml") if text and text.strip() else None
    expected = _set_path(copy.deepcopy(doc), segments, model)
    if text:
        # Edit the one value in place so comments and layout survive; keep it only if the
        # edited text loads back to exactly the expected document.
        for edited in yaml_edit.line_edits(text, segments, model):
            try:
                if yaml.safe_load(edited) == expected:
                    return edited
            except yaml.YAMLError:
                continue
        log.warning("app config: rewriting YAML key %s without its comments", ".".join(segments))
    out = yaml.safe_dump(expected, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return str(out)
