"""The state file ``model_fleet_state.json``: versioned, written atomically, under one file lock.

Every read-modify-write happens inside :meth:`StateStore.transaction`, which holds an exclusive
``fcntl.flock`` on a lock file beside the state file. The lock file is separate because the
state file itself is replaced by ``rename`` on every write, and a lock on a replaced inode
protects nothing. Service threads, gunicorn workers and the CLI all go through this class.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from remediator.config import Config, FleetConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
MAX_NOTICES: Final = 20
MAX_NOTIFICATIONS: Final = 50
_TMP_MARK: Final = ".tmp-"


class StateError(RuntimeError):
    """The state could not be read or written."""


class LockTimeout(StateError):
    """Another process held the lock for longer than the configured timeout."""


@dataclass
class SwitchRecord:
    """One model switch in a fleet's history."""

    time: float
    fleet: str
    from_model: str
    to_model: str
    direction: str  # down | up | reset
    trigger: str  # alert | manual | auto
    reason: str
    alert_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``from``/``to`` as in the history endpoint)."""
        return {
            "time": self.time,
            "fleet": self.fleet,
            "from": self.from_model,
            "to": self.to_model,
            "direction": self.direction,
            "trigger": self.trigger,
            "reason": self.reason,
            "alert_key": self.alert_key,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SwitchRecord:
        """Parse the JSON form; raise ValueError/KeyError/TypeError when malformed."""
        alert_key = d.get("alert_key")
        record = cls(
            time=_num(d["time"]),
            fleet=_str(d["fleet"]),
            from_model=_str(d["from"]),
            to_model=_str(d["to"]),
            direction=_str(d["direction"]),
            trigger=_str(d["trigger"]),
            reason=str(d.get("reason", "")),
            alert_key=None if alert_key is None else _str(alert_key),
        )
        return record


@dataclass
class FleetState:
    """Where one fleet stands."""

    current_model: str
    index: int
    vram_error_count: int = 0
    last_switch_at: float | None = None
    last_upgrade_at: float | None = None
    last_upgrade_failed_at: float | None = None
    last_failure: dict[str, Any] | None = None
    history: list[SwitchRecord] = field(default_factory=list)
    processed_alerts: dict[str, float] = field(default_factory=dict)

    @classmethod
    def initial(cls, fleet: FleetConfig) -> FleetState:
        """A fleet at the top of its ladder with no history."""
        return cls(current_model=fleet.ladder[0].name, index=0)

    def apply_switch(
        self,
        fleet: FleetConfig,
        target: int,
        *,
        direction: str,
        trigger: str,
        reason: str,
        now: float,
        alert_key: str | None = None,
        upgrade_failed: bool = False,
    ) -> SwitchRecord:
        """Move the fleet to rung ``target`` and record it; returns the history record."""
        record = SwitchRecord(
            time=now,
            fleet=fleet.name,
            from_model=self.current_model,
            to_model=fleet.ladder[target].name,
            direction=direction,
            trigger=trigger,
            reason=reason,
            alert_key=alert_key,
        )
        self.current_model = record.to_model
        self.index = target
        self.vram_error_count = 0
        self.last_switch_at = now
        if direction == "up":
            self.last_upgrade_at = now
        elif direction == "reset":
            # A person chose the top again: forget earlier failed step ups.
            self.last_upgrade_at = None
            self.last_upgrade_failed_at = None
        if upgrade_failed:
            self.last_upgrade_failed_at = now
        self.last_failure = None
        self.history.append(record)
        if alert_key is not None:
            self.processed_alerts[alert_key] = now
        return record

    def switches_since(self, since: float) -> int:
        """How many switches happened at or after ``since``."""
        return sum(1 for r in self.history if r.time >= since)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "current_model": self.current_model,
            "index": self.index,
            "vram_error_count": self.vram_error_count,
            "last_switch_at": self.last_switch_at,
            "last_upgrade_at": self.last_upgrade_at,
            "last_upgrade_failed_at": self.last_upgrade_failed_at,
            "last_failure": self.last_failure,
            "history": [r.to_dict() for r in self.history],
            "processed_alerts": dict(sorted(self.processed_alerts.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FleetState:
        """Parse the JSON form; raise ValueError/KeyError/TypeError when malformed."""
        if not isinstance(d, dict):
            raise TypeError("fleet entry is not an object")
        history = d.get("history", [])
        alerts = d.get("processed_alerts", {})
        failure = d.get("last_failure")
        if not isinstance(history, list) or not isinstance(alerts, dict):
            raise TypeError("history must be a list and processed_alerts an object")
        if failure is not None and not isinstance(failure, dict):
            raise TypeError("last_failure must be an object")
        index = d["index"]
        count = d.get("vram_error_count", 0)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"vram_error_count must be a non-negative integer, got {count!r}")
        return cls(
            current_model=_str(d["current_model"]),
            index=index,
            vram_error_count=count,
            last_switch_at=_opt_num(d.get("last_switch_at")),
            last_upgrade_at=_opt_num(d.get("last_upgrade_at")),
            last_upgrade_failed_at=_opt_num(d.get("last_upgrade_failed_at")),
            last_failure=failure,
            history=[SwitchRecord.from_dict(r) for r in history],
            processed_alerts={_str(k): _num(v) for k, v in alerts.items()},
        )


@dataclass
class Notice:
    """A problem found with the state file, shown by ``status`` until cleared by a reset."""

    time: float
    message: str
    kept_as: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"time": self.time, "message": self.message, "kept_as": self.kept_as}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Notice:
        """Parse the JSON form."""
        kept = d.get("kept_as")
        return cls(
            time=_num(d["time"]),
            message=_str(d["message"]),
            kept_as=None if kept is None else _str(kept),
        )


@dataclass
class Notification:
    """One alert Alertmanager delivered to /webhook/notify, and what became of its forwarding.

    ``key`` is the alert's fingerprint@startsAt: a delivery Alertmanager retries (or repeats)
    updates the entry with that key and status instead of adding another.
    """

    time: float
    key: str
    status: str  # firing | resolved
    alertname: str
    fleet: str | None
    severity: str | None
    summary: str
    outcome: str  # forwarded | failed | logged

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "time": self.time,
            "key": self.key,
            "status": self.status,
            "alertname": self.alertname,
            "fleet": self.fleet,
            "severity": self.severity,
            "summary": self.summary,
            "outcome": self.outcome,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Notification:
        """Parse the JSON form."""
        fleet, severity = d.get("fleet"), d.get("severity")
        return cls(
            time=_num(d["time"]),
            key=_str(d["key"]),
            status=_str(d["status"]),
            alertname=_str(d["alertname"]),
            fleet=None if fleet is None else _str(fleet),
            severity=None if severity is None else _str(severity),
            summary=_str(d["summary"]),
            outcome=_str(d["outcome"]),
        )


@dataclass
class State:
    """All fleets. Fleets found in the file but absent from the config are kept as they were."""

    fleets: dict[str, FleetState]
    notices: list[Notice] = field(default_factory=list)
    unconfigured: dict[str, Any] = field(default_factory=dict)
    # The last MAX_NOTIFICATIONS alerts people were told about (absent from older files).
    notifications: list[Notification] = field(default_factory=list)

    def record_notification(self, notification: Notification) -> None:
        """Append ``notification``, replacing an entry of the same alert and status."""
        same = (notification.key, notification.status)
        self.notifications = [n for n in self.notifications if (n.key, n.status) != same]
        self.notifications.append(notification)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the whole file."""
        fleets: dict[str, Any] = dict(self.unconfigured)
        fleets.update({name: fs.to_dict() for name, fs in self.fleets.items()})
        return {
            "schema_version": SCHEMA_VERSION,
            "fleets": dict(sorted(fleets.items())),
            "notices": [n.to_dict() for n in self.notices],
            "notifications": [n.to_dict() for n in self.notifications],
        }


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}")
    return float(v)


def _opt_num(v: Any) -> float | None:
    return None if v is None else _num(v)


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


@contextlib.contextmanager
def file_lock(path: Path, timeout: float, what: str = "state") -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if needed), or raise LockTimeout."""
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
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class StateStore:
    """Reads and writes the state file for all configured fleets."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.path = Path(config.state_file)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._clock = clock

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

    @contextlib.contextmanager
    def switch_lock(self, fleet: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the fleet's switch lock: one switch of a fleet at a time, across processes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(f"{self.path.name}.{fleet}.switch.lock")
        wait = self.config.lock_timeout_seconds if timeout is None else timeout
        with file_lock(lock, wait, what=f"switch of fleet {fleet}"):
            yield

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
            _fsync_dir(self.path.parent)
        return target.name

    def _load_locked(self) -> tuple[State, bool]:
        """Load under the lock. Returns the state and whether it must be written back."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self._fresh(), False
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror or exc}") from exc

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
                problem = (
                    f"unknown schema_version {version!r} (this version reads {SCHEMA_VERSION})"
                )
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
                    if name in self.config.fleets:
                        parsed[name] = FleetState.from_dict(entry)
                    else:
                        unconfigured[name] = entry
                notices = [Notice.from_dict(n) for n in data.get("notices", [])]
                notifications = [Notification.from_dict(n) for n in data.get("notifications", [])]
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                problem = f"the state file has a malformed entry ({type(exc).__name__}: {exc})"

        now = self._clock()
        if problem is not None:
            kept = self._keep_aside(tag, copy=False)
            message = (
                f"{problem}; kept it as {kept} and started every fleet at the top of its ladder"
            )
            log.error("state file %s: %s", self.path, message)
            state = self._fresh()
            state.notices.append(Notice(now, message, kept))
            return state, True

        state = State(
            fleets=parsed, notices=notices, unconfigured=unconfigured, notifications=notifications
        )
        must_write = False
        kept_copy: str | None = None
        for name, fleet in self.config.fleets.items():
            fs = state.fleets.get(name)
            if fs is None:
                state.fleets[name] = FleetState.initial(fleet)
                continue
            index = fleet.ladder.index_of(fs.current_model)
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
        directory = self.path.parent
        for leftover in directory.glob(f".{self.path.name}{_TMP_MARK}*"):
            # A writer killed mid-write leaves its temp file; we hold the lock, so it is dead.
            with contextlib.suppress(OSError):
                leftover.unlink()
        tmp = directory / f".{self.path.name}{_TMP_MARK}{os.getpid()}"
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
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StateError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
