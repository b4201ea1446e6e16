"""The app-config target: one file of the application's that names the model, in one format."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from remediator.appconfig.files import (
    AppConfigError,
    ConfigSnapshot,
    atomic_write,
    read_text,
    snapshot_files,
)
from remediator.appconfig.formats import FORMATS, AppConfigFormat, FormatError

# Named as before the layers (issue 22): log lines and their filters use the name.
log = logging.getLogger("remediator.adapters.appconfig.target")


class AppConfigTarget:
    """One file of the application's that names the model, in one of FORMATS.

    The configuration's ``fleets.*.app_config`` entries are these; the key follows the
    format's rule (the env format defaults to OLLAMA_MODEL, a text file takes none).
    """

    __slots__ = ("_format", "format", "key", "path")

    def __init__(self, path: str | os.PathLike[str], format: str, key: str | None = None) -> None:
        self.path: str = os.fspath(path)
        fmt = FORMATS.get(format)
        if fmt is None:
            raise AppConfigError(path, "configure", f"format must be one of {', '.join(FORMATS)}")
        try:
            self.key: str | None = fmt.check_key(key)
        except FormatError as exc:
            raise AppConfigError(path, "configure", str(exc)) from exc
        self.format = format
        self._format: AppConfigFormat = fmt

    def __repr__(self) -> str:
        return f"AppConfigTarget({self.path!r}, {self.format!r}, {self.key!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AppConfigTarget):
            return NotImplemented
        return (self.path, self.format, self.key) == (other.path, other.format, other.key)

    def __hash__(self) -> int:
        return hash((self.path, self.format, self.key))

    def describe(self) -> str:
        """Human form for logs: ``app.env (env OLLAMA_MODEL)``."""
        return f"{self.path} ({self.format}{' ' + self.key if self.key else ''})"

    def read_model(self) -> str | None:
        """The model the file names now; None when the file or the key is absent."""
        text = read_text(Path(self.path), "read")
        if text is None:
            return None
        try:
            return self._format.read(text, self.key or "")
        except FormatError as exc:
            raise AppConfigError(self.path, "read", str(exc)) from exc

    def write_model(self, model: str) -> bool:
        """Atomically make the file name ``model``; False when it already did (nothing written)."""
        if not model or "\n" in model:
            raise AppConfigError(self.path, "write", f"invalid model name {model!r}")
        path = Path(self.path)
        text = read_text(path, "write")
        try:
            if text is not None and self._format.read(text, self.key or "") == model:
                return False
            new_text = self._format.render(text, self.key or "", model)
        except FormatError as exc:
            raise AppConfigError(self.path, "write", str(exc)) from exc
        atomic_write(path, new_text.encode(), step="write")
        log.info("app config %s: model set to %s", self.describe(), model)
        return True


def snapshot(targets: Iterable[AppConfigTarget]) -> ConfigSnapshot:
    """Record the current bytes, mode and owner of every target's file."""
    return snapshot_files([t.path for t in targets])


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
