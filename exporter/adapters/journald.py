"""The system journal as a LogSource: systemd units' lines, runs and restarts (Ollama's own
Linux install runs it as ``ollama.service``, logging to journald).

Only this module (with exporter.adapters.journalctl, which runs the child processes and reads
a stream) talks to journald and systemd for the exporter, through ``journalctl`` and
``systemctl`` (chosen over python-systemd's ``journal.Reader`` by measurement: BENCHMARKS.md,
"Reading the journal"). A unit plays the part of a container:

- its name is the container's ID and name; a start of its main process is a run start
  (``ExecMainStartTimestamp``), and the run's lines are those stamped from that microsecond on
  (``RunState.boundary_ns``);
- a stream is ``journalctl -o json`` of the unit's lines (``_SYSTEMD_UNIT=``) from ``since``,
  inclusive to the microsecond (the journal's resolution: the cursor's line comes again and
  the ledger drops it), following while the unit runs. Each line becomes ``<RFC 3339> <message>``
  (unframed). The stream also reads the manager's messages about the unit (``_PID=1 UNIT=``):
  one stamped after the run began, or ``journalctl.IDLE_CHECK_SECONDS`` without a line, makes
  it ask systemctl whether the run is over, and it ends then, as a container's log stream ends
  when the container stops;
- a stream that begins where the journal no longer reaches (rotated and vacuumed away) says
  so (``lost``): the follower reports a gap;
- events are the manager's messages about the units, followed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from typing import Final

from exporter.adapters.journalctl import COMMAND_TIMEOUT, JournalStream, end, output, spawn
from exporter.logsource import (
    ContainerEvent,
    ContainerGone,
    ContainerInfo,
    ContainerRef,
    SourceError,
)
from exporter.runs import RunState
from fleet_contract.systemd import SHOW_TIMESTAMPS, parse_show, rfc3339, timestamp_ns

NS: Final = 1_000_000_000
# The ActiveStates in which a unit's run may still print: it is starting, up or stopping.
_RUNNING: Final = frozenset({"active", "activating", "deactivating", "reloading"})
_SHOW: Final = "LoadState,ActiveState,ExecMainStartTimestamp,ExecMainExitTimestamp"
_FIELDS: Final = "--output-fields=MESSAGE,_PID,UNIT"
_PERMISSION_HINTS: Final = ("insufficient permissions", "not seeing messages from other users")


def since_arg(since_ns: int) -> str:
    """``journalctl --since`` for a time in ns: an epoch time to the microsecond, inclusive."""
    return f"--since=@{since_ns // NS}.{since_ns % NS // 1000:06d}"


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
        return _Events(spawn(argv))

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
        return parse_show(output(argv, f"systemctl show {unit}"))

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
        return JournalStream(spawn(argv), container_id, run_start, over, lost=lost)

    def oldest_ns(self) -> int | None:
        """The time of the oldest entry the journal still holds (None: it holds none)."""
        argv = [self._journalctl, "--no-pager", "-q", "-o", "json", "--output-fields=_PID"]
        proc = spawn(argv)
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
        finally:
            end(proc)
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
        end(self._proc)
