"""The state file's bytes: decoded into its JSON object (or refused, with the reason), and
written atomically (a temporary file, fsync, rename over the old file, fsync of the directory).
The objects in it are :mod:`remediator.domain.state`'s; :mod:`remediator.store.state` turns
one into the other."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Final

from remediator.domain.state import SCHEMA_VERSION
from remediator.store.locks import StateError

__all__ = ["decode", "fsync_dir", "write_atomically"]

_TMP_MARK: Final = ".tmp-"


def decode(raw: bytes) -> tuple[dict[str, Any] | None, str, str]:
    """The JSON object in ``raw`` if it is a state file this version reads, or None with the
    problem and the tag to keep the file under."""
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("the top level is not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"the state file is not valid JSON ({exc})", "corrupt"
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        problem = f"unknown schema_version {version!r} (this version reads {SCHEMA_VERSION})"
        return None, problem, "unknown-version"
    return data, "", "corrupt"


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` (a state's JSON form) atomically: temp file, fsync, rename over the old
    file, fsync the directory."""
    directory = path.parent
    for leftover in directory.glob(f".{path.name}{_TMP_MARK}*"):
        # A writer killed mid-write leaves its temp file; we hold the lock, so it is dead.
        with contextlib.suppress(OSError):
            leftover.unlink()
    tmp = directory / f".{path.name}{_TMP_MARK}{os.getpid()}"
    payload = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from exc
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
