"""Which run of a container its log is in, and where that run's lines begin: pure logic.

RunTracker is fed the container's states (exporter.logsource) and tells the log
(exporter.containerlog.ContainerLog) when a new run starts and after which instant its lines
belong to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from exporter.timestamps import is_zero_time, parse_timestamp


class RunLog(Protocol):
    """The log a RunTracker starts runs of (exporter.containerlog.ContainerLog)."""

    def start_run(self, boundary_ns: int | None) -> None:
        """A run begins after ``boundary_ns`` (None: the log holds only this run)."""
        ...


# --- runs ------------------------------------------------------------------------------------

# A container's first lines can be stamped a few milliseconds before its StartedAt. When the
# end of its previous run is unknown, the run is taken to begin this long before StartedAt;
# a runtime needs far longer than this to restart a container.
RUN_START_SLACK_NS: Final = 100_000_000
_ENDS_KEPT: Final = 8

# The create and die events of one container, (action, time in ns), oldest first; None when
# the source cannot say. Called only for a stopped container whose previous run is unknown.
History = Callable[[], Sequence[tuple[str, int]] | None]


@dataclass(frozen=True)
class RunState:
    """A container's current or last run, as its runtime reports it."""

    running: bool
    started_at: str = ""  # RFC 3339; empty or Go's zero time: never started
    finished_at: str = ""  # while running: the previous run's end; once stopped: this run's
    # Where the run's lines begin when the runtime knows it (lines stamped after it are the
    # run's: systemd's start of the main process); None: worked out from FinishedAt and the
    # event history, as for Docker, whose log of a container spans its runs.
    boundary_ns: int | None = None

    @property
    def ever_started(self) -> bool:
        """False for a container created but never started."""
        return not is_zero_time(self.started_at)


class RunTracker:
    """Which run of one container its log is in, and where that run's lines begin.

    Fed the container's states (before a stream, and after it ended), it tells the log when a
    new run starts and after which instant its lines belong to it: the end of the previous run
    (FinishedAt seen while the new run runs, or seen when the previous run stopped), else the
    container's event history, else shortly before StartedAt.
    """

    def __init__(self, log: RunLog) -> None:
        self._log = log
        self.started_at: str | None = None  # StartedAt of the run being counted
        self.started_ns = -1
        # FinishedAt values seen, by the StartedAt of the run they were seen with
        self._previous_end: dict[str, int] = {}
        self._own_end: dict[str, int] = {}
        self._read_through: tuple[str, str] | None = None  # a stopped run read to its end

    def observe(self, state: RunState, history: History) -> bool:
        """Record ``state``; when it shows a new run, start the log's count there. True if so."""
        if not state.ever_started:
            return False
        started = state.started_at
        started_ns = parse_timestamp(started)
        finished_ns = (
            None if is_zero_time(state.finished_at) else parse_timestamp(state.finished_at)
        )
        if finished_ns is not None:
            # While a container runs, FinishedAt is its previous run's end. Once it stopped,
            # FinishedAt is this run's end, even when a run so short that Docker recorded its
            # exit before its start puts FinishedAt before StartedAt.
            ends = self._previous_end if state.running else self._own_end
            ends[started] = finished_ns
            for d in (self._previous_end, self._own_end):
                while len(d) > _ENDS_KEPT:
                    del d[next(iter(d))]
        if started == self.started_at:
            return False
        earlier = [
            end
            for run, end in self._own_end.items()
            if run != started and parse_timestamp(run) < started_ns
        ]
        boundary: int | None
        if state.boundary_ns is not None:
            boundary = state.boundary_ns
        elif started in self._previous_end:
            boundary = self._previous_end[started]
        elif earlier:
            boundary = max(earlier)  # we saw the previous run end
        elif state.running:
            boundary = None  # never stopped before: the whole log is this run
        else:
            boundary = boundary_from_history(history, started_ns, finished_ns)
        self._log.start_run(boundary)
        self.started_at = started
        self.started_ns = started_ns
        return True

    def idle(self, state: RunState) -> bool:
        """Nothing to read: never started, or stopped and read to its end (wait for an event)."""
        if not state.ever_started:
            return True
        return not state.running and self._read_through == (state.started_at, state.finished_at)

    def same_run(self, state: RunState) -> bool:
        """The run being counted is still running."""
        return state.running and state.started_at == self.started_at

    def stream_ended(self, after: RunState | None) -> bool:
        """A stream ended and ``after`` is the state then (None: unknown); True if the run is over.

        The run is over when the container stopped or started another run meanwhile; a stream
        that ended while the same run goes on was broken, and its partial last line waits.
        """
        if after is None or self.same_run(after):
            return False
        if not after.running and after.started_at == self.started_at:
            self._read_through = (after.started_at, after.finished_at)
        return True


def boundary_from_history(history: History, started_ns: int, finished_ns: int | None) -> int | None:
    """Where the last run of a stopped container began, from its event history.

    Every run ends with a die event, sent after the run's last line; the previous run's die is
    the last one before this run's end. Docker keeps only the last few hundred events: without
    the history, the run is taken to begin shortly before StartedAt.
    """
    fallback = started_ns - RUN_START_SLACK_NS
    if finished_ns is None:
        return fallback
    events = history()
    if events is None:
        return fallback
    before = [t for action, t in events if action == "die" and 0 < t < finished_ns]
    if before:
        return max(before)
    if any(action == "create" for action, _ in events):
        return None  # the history goes back to its creation: this was its only run
    return fallback
