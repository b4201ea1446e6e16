"""The state file ``model_fleet_state.json``: versioned, written atomically, under one file lock.

Every read-modify-write happens inside :meth:`StateStore.transaction`, which holds an exclusive
``fcntl.flock`` on a lock file beside the state file. The lock file is separate because the
state file itself is replaced by ``rename`` on every write, and a lock on a replaced inode
protects nothing. Service threads, gunicorn workers and the CLI all go through this class.
What the file holds is :mod:`remediator.domain.state`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Final

from remediator.config import Config, FleetConfig
from remediator.domain.loggers import STATE as log
from remediator.domain.notices import Notice
from remediator.domain.state import (
    MAX_NOTICES,
    MAX_NOTIFICATIONS,
    FleetState,
    State,
)
from remediator.store.codec import decode, fsync_dir, write_atomically
from remediator.store.locks import StateError, file_lock

_TMP_MARK: Final = ".tmp-"


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _stamp_of(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a commit replaces the state file: its inode, size and times."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class StateStore:
    """Reads and writes the state file for all configured fleets."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.path = Path(config.state_file)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._clock = clock
        # peek(): the file's (inode, size, mtime, ctime) and the state parsed from it.
        self._peeked: tuple[tuple[int, int, int, int], State | None] | None = None

    # -- locking ------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """Lock, load, yield the state for changes, then write it atomically if it changed.

        An exception inside the block leaves the file as it was.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_path, self.config.lock_timeout_seconds):
            state, must_write = self._load_locked()
            before = json.dumps(state.to_dict(), sort_keys=True)
            yield state
            self._prune(state)
            if must_write or json.dumps(state.to_dict(), sort_keys=True) != before:
                self._write_locked(state)

    def read(self) -> State:
        """A consistent snapshot of the state (recovering a bad file the same way writes do)."""
        with self.transaction() as state:
            return state

    def snapshot(self) -> State:
        """The state as the last commit left it, read without taking the lock.

        Every write replaces the file by ``rename``, so an open file is always one whole
        commit: /healthz, /status and /metrics answer while a switch or a slow writer holds
        the locks. A file that needs recovery (bad JSON, a model off its ladder) is read the
        locked way, :meth:`read`, which recovers it as a write would.
        """
        raw = self._read_raw()
        if raw is None:
            return self._fresh()
        state, _, _ = self._parse(raw)
        if state is None or not self._settle(state):
            return self.read()
        self._prune(state)
        return state

    def peek(self) -> State | None:
        """The state as the last commit left it, read lock-free and parsed again only when the
        file changed since this process last looked; None when there is no file or it needs
        the recovery a locked read does.

        Shared by the process's threads: read it, never change it. A commit replaces the file
        by ``rename``, so a new inode, size or change time says it changed; a reused inode with
        the same size and times can only hide a commit made within one tick of the file
        system's clock. Good for answering a redelivery of alerts already handled (a commit
        only ever adds alert keys; pruning drops them days later), never for deciding a switch.
        """
        peeked = self._peeked
        try:
            if peeked is not None and peeked[0] == _stamp_of(os.stat(self.path)):
                return peeked[1]  # one stat: the common case of a storm of redeliveries
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # no file yet, or unreadable: the locked read says why
            return None
        try:
            stamp = _stamp_of(os.fstat(fd))  # of the file read, whatever replaced it since
            parts = []
            while part := os.read(fd, 1 << 20):
                parts.append(part)
            raw = b"".join(parts)
        except OSError:
            return None
        finally:
            os.close(fd)
        state, _, _ = self._parse(raw)
        if state is not None and not self._settle(state):
            state = None
        self._peeked = (stamp, state)
        return state

    def _settle(self, state: State) -> bool:
        """Give each configured fleet its entry and rung; False when a fleet's model is off its
        ladder (a locked read recovers that)."""
        for _, _, fs, index in self._entries(state):
            if index is None:
                return False
            fs.index = index
        return True

    def _entries(self, state: State) -> Iterator[tuple[str, FleetConfig, FleetState, int | None]]:
        """Each configured fleet that has an entry, with the rung its model has on the ladder
        now (None: off the ladder); a fleet without one gets a fresh entry instead."""
        for name, fleet in self.config.fleets.items():
            fs = state.fleets.get(name)
            if fs is None:
                state.fleets[name] = FleetState.initial(fleet)
                continue
            yield name, fleet, fs, fleet.ladder.index_of(fs.current_model)

    @contextlib.contextmanager
    def switch_lock(
        self, fleet: str, timeout: float | None = None, *, handling: Collection[str] = ()
    ) -> Iterator[None]:
        """Hold the fleet's switch lock: one switch of a fleet at a time, across processes.

        ``handling`` names the alert keys the holder acts on; :meth:`keys_in_switch` reads them.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wait = self.config.lock_timeout_seconds if timeout is None else timeout
        note = "".join(f"{key}\n" for key in handling)
        with file_lock(self._switch_lock_path(fleet), wait, f"switch of fleet {fleet}", note):
            yield

    def keys_in_switch(self, fleet: str) -> frozenset[str]:
        """The alert keys that the holder of the fleet's switch lock acts on.

        Read without the lock: good for telling a redelivery that its alert is being handled,
        never for deciding a switch (the holder may have let go a moment ago).
        """
        try:
            text = self._switch_lock_path(fleet).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
        return frozenset(line for line in text.splitlines() if line)

    def _switch_lock_path(self, fleet: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{fleet}.switch.lock")

    # -- loading and recovery ----------------------------------------------------------

    def _fresh(self) -> State:
        return State(fleets={n: FleetState.initial(f) for n, f in self.config.fleets.items()})

    def _keep_aside(self, tag: str, *, copy: bool) -> str:
        """Move (or copy) the current file to a timestamped name that nothing overwrites."""
        base = f"{self.path.name}.{tag}-{_stamp(self._clock())}"
        target = self.path.with_name(base)
        n = 1
        while target.exists():
            target = self.path.with_name(f"{base}.{n}")
            n += 1
        if copy:
            shutil.copy2(self.path, target)
        else:
            os.replace(self.path, target)
            fsync_dir(self.path.parent)
        return target.name

    def _read_raw(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror or exc}") from exc

    def _parse(self, raw: bytes) -> tuple[State | None, str, str]:
        """The state in ``raw``, or None with the problem and the tag to keep the file under."""
        data, problem, tag = decode(raw)
        if data is None:
            return None, problem, tag
        try:
            return State.from_dict(data, self.config.fleets), "", tag
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return None, f"the state file has a malformed entry ({type(exc).__name__}: {exc})", tag

    def _load_locked(self) -> tuple[State, bool]:
        """Load under the lock. Returns the state and whether it must be written back."""
        raw = self._read_raw()
        if raw is None:
            return self._fresh(), False
        parsed_state, problem, tag = self._parse(raw)
        now = self._clock()
        if parsed_state is None:
            kept = self._keep_aside(tag, copy=False)
            message = (
                f"{problem}; kept it as {kept} and started every fleet at the top of its ladder"
            )
            log.error("state file %s: %s", self.path, message)
            state = self._fresh()
            state.notices.append(Notice(now, message, kept))
            return state, True

        state = parsed_state
        must_write = False
        kept_copy: str | None = None
        for name, fleet, fs, index in self._entries(state):
            if index is None:
                if kept_copy is None:
                    kept_copy = self._keep_aside("invalid-model", copy=True)
                message = (
                    f"fleet {name}: the state names model {fs.current_model!r}, which is not on "
                    f"its ladder ({', '.join(fleet.ladder.names)}); kept the file as {kept_copy} "
                    f"and started the fleet at {fleet.ladder[0].name}"
                )
                log.error("state file %s: %s", self.path, message)
                fresh = FleetState.initial(fleet)
                fresh.history = fs.history
                state.fleets[name] = fresh
                state.notices.append(Notice(now, message, kept_copy))
                must_write = True
            elif index != fs.index:
                # The ladder was reordered or extended: the model name is what was running.
                log.info(
                    "fleet %s: %s is now rung %d (state said %d)",
                    name,
                    fs.current_model,
                    index,
                    fs.index,
                )
                fs.index = index
        return state, must_write

    def _prune(self, state: State) -> None:
        cfg = self.config
        oldest = self._clock() - cfg.alert_key_ttl_seconds
        for fs in state.fleets.values():
            if len(fs.history) > cfg.history_limit:
                del fs.history[: len(fs.history) - cfg.history_limit]
            keys = {k: t for k, t in fs.processed_alerts.items() if t >= oldest}
            if len(keys) > cfg.alert_key_limit:
                newest = sorted(keys.items(), key=lambda kv: kv[1])[-cfg.alert_key_limit :]
                keys = dict(newest)
            fs.processed_alerts = keys
        if len(state.notices) > MAX_NOTICES:
            del state.notices[: len(state.notices) - MAX_NOTICES]
        if len(state.notifications) > MAX_NOTIFICATIONS:
            del state.notifications[: len(state.notifications) - MAX_NOTIFICATIONS]

    # -- writing -------------------------------------------------------------------------

    def _write_locked(self, state: State) -> None:
        """Write atomically: temp file, fsync, rename over the old file, fsync the directory."""
        write_atomically(self.path, state.to_dict())
