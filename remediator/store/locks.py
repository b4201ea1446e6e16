"""The state's errors and its file locks: an exclusive ``fcntl.flock`` held on a lock file
beside the file it guards (the state file itself is replaced by ``rename`` on every write, and
a lock on a replaced inode protects nothing)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from remediator.domain.loggers import STATE as log

__all__ = ["LockTimeout", "StateError", "file_lock"]


class StateError(RuntimeError):
    """The state could not be read or written."""


class LockTimeout(StateError):
    """Another process held the lock for longer than the configured timeout."""


@contextlib.contextmanager
def file_lock(
    path: Path, timeout: float, what: str = "state", note: str | None = None
) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if needed), or raise LockTimeout.

    With ``note``, the lock file says what its holder is doing while it holds the lock (and
    is emptied when it lets go), for waiting processes to read.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"could not lock the {what} ({path}) within {timeout:g} s: "
                        "another model-fleet process holds it"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        if note is not None:
            # Advisory (keys_in_switch): a full disk must not fail the lock that was obtained.
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, note.encode(), 0)
            except OSError as exc:
                log.warning("could not note the holder's work in %s: %s", path, exc)
        try:
            yield
        finally:
            if note is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock
