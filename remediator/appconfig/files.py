"""App-config files on disk: atomic writes, snapshots and their restore (a switch's rollback).

Writes go to a temp file in the same directory, fsync, rename over, fsync of the directory,
and keep the file's mode (and owner, when running as root). A restore tries every file and
names all that failed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

NEW_FILE_MODE: Final = 0o644


class AppConfigError(RuntimeError):
    """Reading or writing an app-config file failed; names the path, the step and the cause."""

    def __init__(self, path: str | os.PathLike[str], step: str, cause: str) -> None:
        self.path = str(path)
        self.step = step
        self.cause = cause
        super().__init__(f"app config {self.path}: {step} failed: {cause}")


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


def snapshot_files(paths: Iterable[str | os.PathLike[str]]) -> ConfigSnapshot:
    """Record the current bytes, mode and owner of every file (once per real file)."""
    files: list[FileSnapshot] = []
    seen: set[Path] = set()
    for path in paths:
        real = Path(os.path.realpath(path))
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
            raise AppConfigError(path, "snapshot", os_cause(exc)) from exc
        files.append(FileSnapshot(real, True, content, st.st_mode & 0o7777, (st.st_uid, st.st_gid)))
    return ConfigSnapshot(tuple(files))


def read_text(path: Path, step: str) -> str | None:
    try:
        # Bytes, then decode: no newline translation, so CRLF files keep their line endings.
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise AppConfigError(path, step, os_cause(exc)) from exc


def atomic_write(
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
            raise AppConfigError(path, step, os_cause(exc)) from exc
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
        cause = os_cause(exc)
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
            raise AppConfigError(snap.path, "restore", os_cause(exc)) from exc
        return True
    try:
        if snap.path.read_bytes() == snap.content:
            return False
    except OSError:
        pass  # missing or unreadable: write it back below
    atomic_write(snap.path, snap.content, step="restore", mode=snap.mode, owner=snap.owner)
    return True


def os_cause(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"
