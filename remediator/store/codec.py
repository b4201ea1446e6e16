"""The state file's bytes: parsed into a :class:`~remediator.domain.state.State` (or refused,
with the reason), and written atomically (a temporary file, fsync, rename over the old file,
fsync of the directory)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, Final

from remediator.domain.notices import Notice, Notification
from remediator.domain.state import SCHEMA_VERSION, FleetState, State
from remediator.store.locks import StateError

__all__ = ["fsync_dir", "parse_state", "write_state"]

_TMP_MARK: Final = ".tmp-"


def parse_state(raw: bytes, configured: Collection[str]) -> tuple[State | None, str, str]:
    """The state in ``raw`` (the fleets of ``configured`` parsed, the others kept as they are),
    or None with the problem and the tag to keep the file under."""
    problem: str | None = None
    tag = "corrupt"
    data: Any = None
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("the top level is not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        problem = f"the state file is not valid JSON ({exc})"
    if problem is None:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            problem = f"unknown schema_version {version!r} (this version reads {SCHEMA_VERSION})"
            tag = "unknown-version"
    parsed: dict[str, FleetState] = {}
    unconfigured: dict[str, Any] = {}
    notices: list[Notice] = []
    notifications: list[Notification] = []
    if problem is None:
        try:
            fleets = data.get("fleets")
            if not isinstance(fleets, dict):
                raise TypeError("'fleets' is not an object")
            for name, entry in fleets.items():
                if name in configured:
                    parsed[name] = FleetState.from_dict(entry)
                else:
                    unconfigured[name] = entry
            notices = [Notice.from_dict(n) for n in data.get("notices", [])]
            notifications = [Notification.from_dict(n) for n in data.get("notifications", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            problem = f"the state file has a malformed entry ({type(exc).__name__}: {exc})"
    if problem is not None:
        return None, problem, tag
    state = State(
        fleets=parsed, notices=notices, unconfigured=unconfigured, notifications=notifications
    )
    return state, "", tag


def write_state(path: Path, state: State) -> None:
    """Write atomically: temp file, fsync, rename over the old file, fsync the directory."""
    directory = path.parent
    for leftover in directory.glob(f".{path.name}{_TMP_MARK}*"):
        # A writer killed mid-write leaves its temp file; we hold the lock, so it is dead.
        with contextlib.suppress(OSError):
            leftover.unlink()
    tmp = directory / f".{path.name}{_TMP_MARK}{os.getpid()}"
    payload = (json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n").encode()
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
