"""App-config writers: put the model name into the application's own configuration files.

Formats: an env file (``OLLAMA_MODEL=...``), a JSON or YAML key path (``llm.model``; a
segment of digits indexes a list), or a plain text file that holds only the name. Writes are
atomic (temp file in the same directory, fsync, rename, fsync of the directory) and keep the
file's mode (and owner, when running as root). Env and YAML edits touch only the value, so
comments and layout survive; JSON is re-serialised with the file's indentation.

A restart does not change a container's environment: the application must read a mounted
file. Mount its *directory*: a rename never reaches a single file bind-mounted on its own.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

log = logging.getLogger(__name__)

FORMATS: Final[tuple[str, ...]] = ("env", "json", "yaml", "text")
DEFAULT_ENV_KEY: Final = "OLLAMA_MODEL"
NEW_FILE_MODE: Final = 0o644

_ENV_LINE = re.compile(r"^(?P<lead>\s*(?:export\s+)?)(?P<key>[^\s=#]+)(?P<eq>\s*=\s*)(?P<rest>.*)$")
_YAML_KEY = re.compile(r"^(?P<key>\"[^\"]*\"|'[^']*'|[^\s#:'\"][^#]*?)\s*:(?=\s|$)(?P<rest>.*)$")


class AppConfigError(RuntimeError):
    """Reading or writing an app-config file failed; names the path, the step and the cause."""

    def __init__(self, path: str | os.PathLike[str], step: str, cause: str) -> None:
        self.path = str(path)
        self.step = step
        self.cause = cause
        super().__init__(f"app config {self.path}: {step} failed: {cause}")


class AppConfigTarget:
    """One file of the application's that names the model, in one of FORMATS."""

    def __init__(self, path: str | os.PathLike[str], format: str, key: str | None = None) -> None:
        self.path = Path(path)
        if format not in FORMATS:
            raise AppConfigError(path, "configure", f"format must be one of {', '.join(FORMATS)}")
        self.format = format
        if format == "text":
            if key:
                raise AppConfigError(path, "configure", "a text file holds only the model: no key")
            self.key: str | None = None
        elif format == "env":
            self.key = key or DEFAULT_ENV_KEY
            if not re.fullmatch(r"[^\s=#]+", self.key):
                raise AppConfigError(path, "configure", f"invalid env variable name {self.key!r}")
        else:
            if not key or any(not seg for seg in key.split(".")):
                raise AppConfigError(path, "configure", f"a {format} target needs a key path")
            self.key = key

    def __repr__(self) -> str:
        return f"AppConfigTarget({str(self.path)!r}, {self.format!r}, {self.key!r})"

    def describe(self) -> str:
        """Human form for logs: ``app.env (env OLLAMA_MODEL)``."""
        return f"{self.path} ({self.format}{' ' + self.key if self.key else ''})"

    def read_model(self) -> str | None:
        """The model the file names now; None when the file or the key is absent."""
        text = _read_text(self.path, "read")
        if text is None:
            return None
        try:
            return self._parse(text)
        except _FormatError as exc:
            raise AppConfigError(self.path, "read", str(exc)) from exc

    def write_model(self, model: str) -> bool:
        """Atomically make the file name ``model``; False when it already did (nothing written)."""
        if not model or "\n" in model:
            raise AppConfigError(self.path, "write", f"invalid model name {model!r}")
        text = _read_text(self.path, "write")
        try:
            if text is not None and self._parse(text) == model:
                return False
            new_text = self._render(text, model)
        except _FormatError as exc:
            raise AppConfigError(self.path, "write", str(exc)) from exc
        _atomic_write(self.path, new_text.encode(), step="write")
        log.info("app config %s: model set to %s", self.describe(), model)
        return True

    def _parse(self, text: str) -> str | None:
        if self.format == "text":
            return text.strip() or None
        if self.format == "env":
            return _env_get(text, self._key)
        doc = _load(text, self.format)
        value = _get_path(doc, self._key.split("."))
        if value is None or isinstance(value, str):
            return value
        raise _FormatError(f"key {self._key!r} holds {type(value).__name__}, not a model name")

    def _render(self, text: str | None, model: str) -> str:
        if self.format == "text":
            return model + "\n"
        if self.format == "env":
            return _env_set(text or "", self._key, model)
        if self.format == "json":
            return _json_set(text, self._key.split("."), model)
        return _yaml_set(text, self._key.split("."), model)

    @property
    def _key(self) -> str:
        assert self.key is not None  # set for every format but text, which never asks
        return self.key


@dataclass(frozen=True)
class FileSnapshot:
    """A file as it was before a switch touched it."""

    path: Path
    existed: bool
    content: bytes = b""
    mode: int = NEW_FILE_MODE
    owner: tuple[int, int] | None = None


@dataclass(frozen=True)
class ConfigSnapshot:
    """The files of several targets, restorable together (the rollback of a switch)."""

    files: tuple[FileSnapshot, ...]

    def restore(self) -> list[Path]:
        """Put every file back as it was (remove the ones that did not exist); the paths changed.

        Tries every file; raises AppConfigError naming all that failed afterwards.
        """
        changed: list[Path] = []
        failures: list[AppConfigError] = []
        for snap in self.files:
            try:
                if _restore_one(snap):
                    changed.append(snap.path)
            except AppConfigError as exc:
                failures.append(exc)
        if failures:
            cause = "; ".join(f"{e.path}: {e.cause}" for e in failures)
            raise AppConfigError(failures[0].path, "restore", cause)
        return changed


def snapshot(targets: Iterable[AppConfigTarget]) -> ConfigSnapshot:
    """Record the current bytes, mode and owner of every target's file."""
    files: list[FileSnapshot] = []
    seen: set[Path] = set()
    for target in targets:
        real = Path(os.path.realpath(target.path))
        if real in seen:
            continue
        seen.add(real)
        try:
            st = os.stat(real)
            content = real.read_bytes()
        except FileNotFoundError:
            files.append(FileSnapshot(real, existed=False))
            continue
        except OSError as exc:
            raise AppConfigError(target.path, "snapshot", _os_cause(exc)) from exc
        files.append(FileSnapshot(real, True, content, st.st_mode & 0o7777, (st.st_uid, st.st_gid)))
    return ConfigSnapshot(tuple(files))


def write_all(targets: Iterable[AppConfigTarget], model: str) -> ConfigSnapshot:
    """Snapshot, then write ``model`` into every target; on failure restore all and re-raise.

    Returns the snapshot, so that a later failed step of the switch can restore it.
    """
    targets = list(targets)
    snap = snapshot(targets)
    for target in targets:
        try:
            target.write_model(model)
        except AppConfigError as exc:
            try:
                snap.restore()
            except AppConfigError as undo:
                raise AppConfigError(
                    exc.path, exc.step, f"{exc.cause}; restoring the others failed: {undo.cause}"
                ) from exc
            raise
    return snap


# --- files ------------------------------------------------------------------------------------


def _read_text(path: Path, step: str) -> str | None:
    try:
        # Bytes, then decode: no newline translation, so CRLF files keep their line endings.
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise AppConfigError(path, step, _os_cause(exc)) from exc


def _atomic_write(
    path: Path,
    data: bytes,
    *,
    step: str,
    mode: int | None = None,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write via a temp file in the same directory, fsync, rename over, fsync the directory."""
    real = Path(os.path.realpath(path))  # through a symlink: the link stays, its target changes
    if mode is None or owner is None:
        try:
            st = os.stat(real)
            mode = st.st_mode & 0o7777 if mode is None else mode
            owner = (st.st_uid, st.st_gid) if owner is None else owner
        except FileNotFoundError:
            mode = NEW_FILE_MODE if mode is None else mode
        except OSError as exc:
            raise AppConfigError(path, step, _os_cause(exc)) from exc
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(f.fileno(), *owner)
            os.fsync(f.fileno())
        os.replace(tmp, real)
        tmp = None
        dir_fd = os.open(real.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        cause = _os_cause(exc)
        if exc.errno == 16:  # EBUSY: the rename target is a mount point
            cause += " (a single file bind-mounted on its own: mount its directory instead)"
        raise AppConfigError(path, step, cause) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _restore_one(snap: FileSnapshot) -> bool:
    if not snap.existed:
        try:
            os.unlink(snap.path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise AppConfigError(snap.path, "restore", _os_cause(exc)) from exc
        return True
    try:
        if snap.path.read_bytes() == snap.content:
            return False
    except OSError:
        pass  # missing or unreadable: write it back below
    _atomic_write(snap.path, snap.content, step="restore", mode=snap.mode, owner=snap.owner)
    return True


def _os_cause(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


# --- formats ----------------------------------------------------------------------------------


class _FormatError(ValueError):
    """The file's content does not fit its format or the key path."""


def _split_env_value(rest: str) -> tuple[str, str, str]:
    """Split the text after ``=`` into (quote, value, trailer)."""
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        end = rest.find(quote, 1)
        while quote == '"' and end > 0 and rest[end - 1] == "\\":
            end = rest.find(quote, end + 1)
        if end < 0:
            raise _FormatError(f"unterminated quote in {rest!r}")
        return quote, rest[1:end].replace('\\"', '"'), rest[end + 1 :]
    match = re.search(r"\s+#", rest)
    cut = match.start() if match else len(rest.rstrip())
    value = rest[:cut].rstrip()
    return "", value, rest[len(value) :]


def _env_get(text: str, key: str) -> str | None:
    value: str | None = None
    for line in text.splitlines():
        m = _ENV_LINE.match(line)
        if m and m["key"] == key:
            value = _split_env_value(m["rest"])[1]  # the last assignment wins, as in a shell
    return value


def _env_set(text: str, key: str, model: str) -> str:
    lines = text.splitlines(keepends=True)
    found = False
    for i, line in enumerate(lines):
        body = line.rstrip("\r\n")
        m = _ENV_LINE.match(body)
        if not m or m["key"] != key:
            continue
        quote, _, trailer = _split_env_value(m["rest"])
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
        raise _FormatError(f"not valid {fmt.upper()}: {exc}") from exc


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
            raise _FormatError(f"{where} is a {type(node).__name__}, cannot hold key {seg!r}")
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
            raise _FormatError(f"{where} is a {type(node).__name__}, cannot hold key {seg!r}")
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
        for edited in _yaml_line_edits(text, segments, model):
            try:
                if yaml.safe_load(edited) == expected:
                    return edited
            except yaml.YAMLError:
                continue
        log.warning("app config: rewriting YAML key %s without its comments", ".".join(segments))
    out = yaml.safe_dump(expected, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return str(out)


def _yaml_line_edits(text: str, segments: list[str], model: str) -> Iterable[str]:
    """Candidate texts with the scalar at ``segments`` replaced, or the missing keys added.

    Handles block mappings only; anything else yields nothing and the caller re-serialises.
    """
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    indents = [len(ln) - len(ln.lstrip(" ")) for ln in lines if ln.strip()]
    step = min((n for n in indents if n > 0), default=2)  # the file's own indentation step
    start, parent_indent = 0, -1
    parent_line: int | None = None
    for depth, seg in enumerate(segments):
        child_indent: int | None = None
        target: int | None = None
        block_end = len(lines)
        for i in range(start, len(lines)):
            stripped = lines[i].lstrip(" ")
            if not stripped.strip() or stripped.startswith(("#", "---", "...")):
                continue
            indent = len(lines[i]) - len(stripped)
            if indent <= parent_indent:
                block_end = i
                break
            if child_indent is None:
                child_indent = indent
            if indent != child_indent:
                continue
            m = _YAML_KEY.match(stripped.rstrip("\r\n"))
            if m and target is None and m["key"].strip("'\"") == seg:
                target = i
        if depth == 0 and child_indent is not None and child_indent > 0:
            return  # an indented document: leave it to the serialiser
        if target is None:
            yield from _yaml_insert(
                lines,
                block_end,
                parent_line,
                parent_indent,
                child_indent,
                step,
                segments[depth:],
                model,
                newline,
            )
            return
        if depth < len(segments) - 1:
            start, parent_indent, parent_line = target + 1, child_indent or 0, target
    yield from _yaml_replace(lines, target, model)


def _yaml_insert(
    lines: list[str],
    block_end: int,
    parent_line: int | None,
    parent_indent: int,
    child_indent: int | None,
    step: int,
    missing: list[str],
    model: str,
    newline: str,
) -> Iterable[str]:
    if parent_line is not None:
        rest = _YAML_KEY.match(lines[parent_line].lstrip(" ").rstrip("\r\n"))
        value = rest["rest"].strip() if rest else ""
        if rest is None or (value and not value.startswith("#")):
            return  # the parent holds a scalar or a flow mapping: not ours to restructure
    # Insert after the block's last key, before the blank lines and comments that follow it.
    at = block_end
    while at > 0 and (not lines[at - 1].strip() or lines[at - 1].lstrip().startswith("#")):
        at -= 1
    indent = child_indent if child_indent is not None else parent_indent + step
    head = lines[:at]
    if head and not head[-1].endswith("\n"):
        head = [*head[:-1], head[-1] + newline]
    for q in ("", '"'):
        new = [f"{' ' * (indent + n * step)}{seg}:{newline}" for n, seg in enumerate(missing)]
        pad = " " * (indent + (len(missing) - 1) * step)
        new[-1] = f"{pad}{missing[-1]}: {q}{model}{q}{newline}"
        yield "".join([*head, *new, *lines[at:]])


def _yaml_replace(lines: list[str], target: int | None, model: str) -> Iterable[str]:
    if target is None:
        return
    line = lines[target]
    body = line.rstrip("\r\n")
    stripped = body.lstrip(" ")
    m = _YAML_KEY.match(stripped)
    if m is None:
        return
    rest = m["rest"]
    space = rest[: len(rest) - len(rest.lstrip())]
    value_part = rest.lstrip()
    if not value_part or value_part.startswith(("#", "|", ">", "&", "*", "!", "{", "[")):
        return
    try:
        quote, _, trailer = _split_env_value(value_part)
    except _FormatError:
        return
    prefix = body[: len(body) - len(stripped)] + stripped[: len(stripped) - len(rest)]
    ending = line[len(body) :]
    for q in [quote] if quote else ["", '"']:
        if q == "'" and "'" in model:
            continue
        value = model.replace('"', '\\"') if q == '"' else model
        new_line = f"{prefix}{space or ' '}{q}{value}{q}{trailer}{ending}"
        yield "".join([*lines[:target], new_line, *lines[target + 1 :]])
