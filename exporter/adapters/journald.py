"""The system journal as a LogSource: systemd units' lines, runs and restarts (Ollama's own
Linux install runs it as ``ollama.service``, logging to journald).

Only this module talks to journald and systemd for the exporter, through ``journalctl`` and
``systemctl`` as child processes (chosen over python-systemd's ``journal.Reader`` by
measurement: BENCHMARKS.md, "Reading the journal"). A unit plays the part of a container:

- its name is the container's ID and name; a start of its main process is a run start
  (``ExecMainStartTimestamp``), and the run's lines are those stamped from that microsecond on
  (``RunState.boundary_ns``);
- a stream is ``journalctl -o json`` of the unit's lines (``_SYSTEMD_UNIT=``) from ``since``,
  inclusive to the microsecond (the journal's resolution: the cursor's line comes again and
  the ledger drops it), following while the unit runs. Each line becomes ``<RFC 3339> <message>``
  (unframed). The stream also reads the manager's messages about the unit (``_PID=1 UNIT=``):
  one stamped after the run began, or :data:`IDLE_CHECK_SECONDS` without a line, makes it ask
  systemctl whether the run is over, and it ends then, as a container's log stream ends when
  the container stops;
- a stream that begins where the journal no longer reaches (rotated and vacuumed away) says
  so (``lost``): the follower reports a gap;
- events are the manager's messages about the units, followed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, Final

from exporter.containerlog import RunState
from exporter.logsource import (
    ContainerEvent,
    ContainerGone,
    ContainerInfo,
    ContainerRef,
    SourceError,
)
from fleet_contract.systemd import SHOW_TIMESTAMPS, parse_show, rfc3339, timestamp_ns

NS: Final = 1_000_000_000
COMMAND_TIMEOUT: Final = 10.0
# A followed unit that printed nothing for this long is asked whether its run is over (the
# manager's messages say so at once; this catches a message the stream did not carry).
IDLE_CHECK_SECONDS: Final = 10.0
READ_SIZE: Final = 65536
# The ActiveStates in which a unit's run may still print: it is starting, up or stopping.
_RUNNING: Final = frozenset({"active", "activating", "deactivating", "reloading"})
_SHOW: Final = "LoadState,ActiveState,ExecMainStartTimestamp,ExecMainExitTimestamp"
_FIELDS: Final = "--output-fields=MESSAGE,_PID,UNIT"
_PERMISSION_HINTS: Final = ("insufficient permissions", "not seeing messages from other users")


def since_arg(since_ns: int) -> str:
    """``journalctl --since`` for a time in ns: an epoch time to the microsecond, inclusive."""
    return f"--since=@{since_ns // NS}.{since_ns % NS // 1000:06d}"


def message_bytes(value: Any) -> bytes:
    """An entry's MESSAGE as journalctl's JSON gives it: text, bytes as a list of numbers
    (not UTF-8), several values, or null."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return bytes(value)
    if isinstance(value, list):
        return b"\n".join(message_bytes(v) for v in value)
    return b""


def run_state(values: dict[str, str]) -> RunState:
    """A unit's ``systemctl show`` properties as the run state the follower reads."""
    started = timestamp_ns(values.get("ExecMainStartTimestamp", ""))
    exited = timestamp_ns(values.get("ExecMainExitTimestamp", ""))
    running = values.get("ActiveState", "") in _RUNNING and started is not None
    return RunState(
        running=running,
        started_at="" if started is None else rfc3339(started),
        finished_at="" if running or exited is None else rfc3339(exited),
        # Lines stamped in the microsecond the main process started are the run's.
        boundary_ns=None if started is None else started - 1,
    )


class JournaldLogSource:
    """Units' journals and states, through ``journalctl`` and ``systemctl``."""

    name = "journald"

    def __init__(
        self, units: Sequence[str], journalctl: str = "journalctl", systemctl: str = "systemctl"
    ) -> None:
        self.units = tuple(units)
        self._journalctl = journalctl
        self._systemctl = systemctl

    def events(self) -> _Events:
        """Follow the manager's messages about the units (after checking the journal reads)."""
        self._check_access()
        argv = [self._journalctl, "--no-pager", "-q", "-o", "json", _FIELDS, "--follow"]
        argv += ["--lines=0", "_PID=1", *(f"UNIT={u}" for u in self.units)]
        return _Events(_spawn(argv))

    def containers(self) -> list[ContainerRef]:
        """The configured units (a unit not loaded is found gone by ``inspect``)."""
        return [ContainerRef(unit, unit, {}) for unit in self.units]

    def inspect(self, container_id: str) -> ContainerInfo:
        """The unit's run state; ContainerGone when systemd does not know it."""
        values = self.show(container_id)
        if values.get("LoadState") == "not-found":
            raise ContainerGone(f"unit {container_id} not found")
        try:
            state = run_state(values)
        except ValueError as exc:
            raise SourceError(f"systemctl show {container_id}: {exc}") from exc
        return ContainerInfo(container_id, container_id, state, framed=False)

    def show(self, unit: str) -> dict[str, str]:
        """``systemctl show`` of the properties a run state needs."""
        argv = [self._systemctl, "show", unit, "-p", _SHOW, SHOW_TIMESTAMPS]
        return parse_show(_output(argv, f"systemctl show {unit}"))

    def follow(self, container_id: str, since_ns: int | None) -> JournalStream:
        """The unit's lines from ``since_ns``, following while its current run lasts."""
        state = self.inspect(container_id).state
        run_start = state.boundary_ns + 1 if state.boundary_ns is not None else None
        argv = [self._journalctl, "--no-pager", "-q", "-o", "json", "--all", _FIELDS]
        if since_ns is not None:
            argv.append(since_arg(since_ns))
        if state.running:
            argv.append("--follow")
        argv += [f"_SYSTEMD_UNIT={container_id}", "+", "_PID=1", f"UNIT={container_id}"]
        lost = since_ns is not None and (self.oldest_ns() or 0) > since_ns
        over = (lambda: self._run_over(container_id, run_start)) if state.running else None
        return JournalStream(_spawn(argv), container_id, run_start, over, lost=lost)

    def oldest_ns(self) -> int | None:
        """The time of the oldest entry the journal still holds (None: it holds none)."""
        argv = [self._journalctl, "--no-pager", "-q", "-o", "json", "--output-fields=_PID"]
        proc = _spawn(argv)
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
        finally:
            _end(proc)
        if not first:
            return None
        return int(json.loads(first)["__REALTIME_TIMESTAMP"]) * 1000

    def history(self, container_id: str, since_ns: int) -> list[tuple[str, int]]:
        """Not needed: a unit's state says where its run's lines begin (``boundary_ns``)."""
        return []

    def reset(self) -> None:
        """Nothing is kept open between calls."""

    def close(self) -> None:
        """Nothing is kept open between calls (streams and events are closed by their users)."""

    def _run_over(self, unit: str, run_start: int | None) -> bool:
        """Whether the run that began at ``run_start`` ended (False when systemd cannot say)."""
        try:
            state = run_state(self.show(unit))
        except (SourceError, ValueError):
            return False
        start = state.boundary_ns + 1 if state.boundary_ns is not None else None
        return not state.running or start != run_start

    def _check_access(self) -> None:
        argv = [self._journalctl, "--no-pager", "-n", "0", "_PID=1"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceError(f"journalctl: {exc}") from exc
        if any(hint in done.stderr for hint in _PERMISSION_HINTS):
            raise SourceError(
                "cannot read the system journal: run the exporter in the systemd-journal group "
                f"({done.stderr.strip()[:200]})"
            )


class JournalStream:
    """One ``journalctl -o json`` of a unit, as timestamped lines, until its run ends."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        unit: str,
        run_start: int | None,
        run_over: Callable[[], bool] | None,
        *,
        lost: bool,
    ) -> None:
        self._proc = proc
        self._unit = unit
        self._run_start = run_start
        self._run_over = run_over  # None: the unit was not running, the stream ends by itself
        self._lost = lost
        self._rest = b""
        self._done = False
        self._interrupted = threading.Event()

    def lost(self) -> bool:
        """The journal no longer reaches back to where this stream began."""
        return self._lost

    def read(self) -> bytes:
        """The next lines as soon as any arrived; b'' once the run ended or the stream was cut."""
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while not self._done:
            ready, _, _ = select.select([fd], [], [], IDLE_CHECK_SECONDS)
            if not ready:
                if self._run_over is not None and self._run_over():
                    self._done = True
                continue
            data = os.read(fd, READ_SIZE)
            if not data:
                self._done = True
                self._raise_if_failed()
                break
            out = self._convert(data)
            if out:
                return out
        return b""

    def interrupt(self) -> None:
        """End the stream now, from any thread: the reader then sees its end."""
        self._interrupted.set()
        with contextlib.suppress(OSError):  # already gone
            self._proc.terminate()

    def close(self) -> None:
        """Stop journalctl and release its pipes."""
        self._interrupted.set()
        _end(self._proc)

    def _convert(self, data: bytes) -> bytes:
        buf = self._rest + data
        cut = buf.rfind(b"\n") + 1
        self._rest = buf[cut:]
        out: list[bytes] = []
        for raw in buf[:cut].splitlines():
            entry = json.loads(raw)
            ns = int(entry["__REALTIME_TIMESTAMP"]) * 1000
            if entry.get("_PID") == "1" and entry.get("UNIT") == self._unit:
                started = self._run_start is not None and ns >= self._run_start
                if started and self._run_over is not None and self._run_over():
                    self._done = True  # what follows belongs to another run: a new stream
                    break
                continue
            stamp = rfc3339(ns).encode()
            text = message_bytes(entry.get("MESSAGE")).replace(b"\n", b"\n" + stamp + b" ")
            out.append(stamp + b" " + text + b"\n")
        return b"".join(out)

    def _raise_if_failed(self) -> None:
        code = self._proc.wait()
        if code != 0 and not self._interrupted.is_set():
            raise SourceError(f"journalctl for {self._unit} exited {code}: {_stderr(self._proc)}")


class _Events:
    """The manager's messages about the units, as ContainerEvents that wake their followers."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    def __iter__(self) -> Iterator[ContainerEvent]:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            unit = str(json.loads(raw).get("UNIT") or "")
            if unit:
                # "start" lets the watcher begin following a unit that appeared since.
                yield ContainerEvent("start", ContainerRef(unit, unit, {}))

    def close(self) -> None:
        """Stop following (from another thread too)."""
        _end(self._proc)


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a journalctl with its errors kept in a file (a pipe left unread could fill)."""
    errors: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _end, with the process
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        errors.close()
        raise SourceError(f"cannot run {argv[0]}: {exc}") from exc
    proc.stderr = errors  # read back by _stderr
    return proc


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    errors = proc.stderr
    if errors is None:
        return ""
    errors.seek(0)
    return errors.read().decode("utf-8", "replace").strip()[-300:] or "no message"


def _end(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        proc.terminate()
    try:
        proc.wait(COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _output(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise SourceError(f"{what} exited {done.returncode}: {done.stderr.strip()[:300]}")
    return done.stdout
