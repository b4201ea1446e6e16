"""One container's log, decoded and counted exactly across streams and runs: pure logic.

A log source (exporter.logsource) hands over bytes. Docker's logs API (with ``timestamps=1``)
sends one frame per log message: an 8-byte header (stream, size) and the message prefixed with
its RFC 3339 timestamp. Unframed streams (a TTY container, a source without frames) have no
headers: just timestamped lines. Messages longer than 16 KiB arrive as several frames, only the
last ending in a newline; they are joined back into one line.

Exactness rests on three rules:

* A cursor (timestamp of the last consumed frame, how many consumed frames carry exactly that
  timestamp) survives reconnects. A source's ``since`` is inclusive, so a new stream starts at
  the cursor's timestamp (to the nanosecond) and the frames already consumed are skipped.
* A line belongs to the container's current run when its timestamp is after the run's
  boundary (the end of the previous run, which RunTracker works out from the container's
  states). ``since_start`` counts the current run's incidents (exporter.incidents) only.
* Lines stamped before the exporter started (``live_since_ns``) are history: they count for
  ``since_start`` but not for the counters (nor an incident whose first line is history).
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from exporter.classifier import LogClassifier
from exporter.incidents import DEFAULT_WINDOW_NS, Grouper, RunIncidents
from exporter.timestamps import format_since, is_zero_time, parse_timestamp

_HEADER = struct.Struct(">BxxxL")
_HEADER_SIZE: Final = 8


@dataclass
class Tally:
    """What one batch added to the counters (lines stamped after the exporter started)."""

    lines: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # incidents, by their first line's kind
    error_lines: dict[str, int] = field(default_factory=dict)  # matching lines, by kind


@dataclass(frozen=True)
class Cursor:
    """The last consumed frame's timestamp and how many consumed frames carry it."""

    timestamp: bytes
    count: int


class _Skip:
    """Drops the frames a resumed stream repeats: those before the cursor and at it."""

    def __init__(self, cursor: Cursor) -> None:
        self._ns = parse_timestamp(cursor.timestamp)
        self._left = cursor.count

    def swallow(self, ts: bytes) -> bool:
        """True if the frame stamped ``ts`` was consumed already; False ends the skipping."""
        ts_ns = parse_timestamp(ts)
        if ts_ns < self._ns:
            return True
        if ts_ns == self._ns and self._left > 0:
            self._left -= 1
            return True
        return False


class ContainerLog:
    """Decodes and counts one container's log across streams, reconnects and runs."""

    def __init__(
        self, classifier: LogClassifier, live_since_ns: int, window_ns: int = DEFAULT_WINDOW_NS
    ) -> None:
        self._classifier = classifier
        self._live_since = live_since_ns
        self.cursor: Cursor | None = None
        self.boundary_ns: int | None = None
        self._run = RunIncidents(window_ns)  # since_start
        self._incidents = Grouper(window_ns)  # the counters
        self._rest = b""
        self._pending: list[tuple[bytes, bytes]] = []
        self._skip: _Skip | None = None
        self._tty = False

    @property
    def since_start(self) -> int:
        """Incidents of the current run."""
        return self._run.count

    def start_run(self, boundary_ns: int | None) -> None:
        """A run begins after ``boundary_ns`` (None: the log holds only this run)."""
        self.boundary_ns = boundary_ns
        if boundary_ns is not None:
            self._run.cut(boundary_ns)

    def resume_ns(self) -> int | None:
        """Where the next stream starts: at the cursor, else at the run's boundary, else all."""
        if self.cursor is not None:
            return parse_timestamp(self.cursor.timestamp)
        return self.boundary_ns

    def since_param(self) -> str | None:
        """``resume_ns`` as Docker's ``since`` parameter (None: from the beginning)."""
        ns = self.resume_ns()
        return None if ns is None else format_since(ns)

    def begin_stream(self, *, tty: bool) -> None:
        """A new stream starts at ``since_param()``: forget partial data, skip what was seen."""
        self._tty = tty
        self._rest = b""
        self._pending = []
        self._skip = _Skip(self.cursor) if self.cursor is not None else None

    def end_stream(self, *, run_over: bool) -> Tally:
        """The stream ended. If the run is over too, a last line without newline is complete."""
        tally = self._tally()
        if run_over:
            if self._tty and self._rest:
                self._consume_lines([self._rest + b"\n"], tally)
            elif self._pending:
                ts = self._pending[-1][0]
                frames = [p[0] for p in self._pending]
                text = b"".join(p[1] for p in self._pending) + b"\n"
                self._pending = []
                self._count([ts], [len(text)], text, tally)
                self._advance(frames)
        self._rest = b""
        self._pending = []
        return tally

    def _tally(self) -> Tally:
        kinds = self._classifier.kinds
        return Tally(errors=dict.fromkeys(kinds, 0), error_lines=dict.fromkeys(kinds, 0))

    def feed(self, data: bytes) -> Tally:
        """Decode and count a piece of the stream (any split); return what it adds."""
        tally = self._tally()
        if self._tty:
            buf = self._rest + data if self._rest else data
            cut = buf.rfind(b"\n") + 1
            self._rest = buf[cut:]
            if cut:
                self._consume_lines(buf[:cut].split(b"\n")[:-1], tally, add_newline=True)
            return tally
        self._consume_frames(data, tally)
        return tally

    # --- decoding ----------------------------------------------------------------------------

    def _consume_frames(self, data: bytes, tally: Tally) -> None:
        buf = self._rest + data if self._rest else data
        pos = 0
        end = len(buf)
        unpack = _HEADER.unpack_from
        parts: list[bytes] = []
        line_ts: list[bytes] = []
        line_ends: list[int] = []
        total = 0
        cur_ts, cur_n = (self.cursor.timestamp, self.cursor.count) if self.cursor else (b"", 0)
        skip = self._skip
        pending = self._pending
        while end - pos >= _HEADER_SIZE:
            _, size = unpack(buf, pos)
            stop = pos + _HEADER_SIZE + size
            if stop > end:
                break
            space = buf.find(b" ", pos + _HEADER_SIZE, stop)
            if space < 0:  # no timestamp: not a frame of a timestamped stream
                pos = stop
                continue
            ts = buf[pos + _HEADER_SIZE : space]
            msg = buf[space + 1 : stop]
            pos = stop
            if skip is not None:
                if skip.swallow(ts):
                    continue
                skip = None
            if not pending and msg.endswith(b"\n"):
                parts.append(msg)
                total += len(msg)
                line_ts.append(ts)
                line_ends.append(total)
                if ts == cur_ts:
                    cur_n += 1
                else:
                    cur_ts, cur_n = ts, 1
                continue
            pending.append((ts, msg))
            if msg.endswith(b"\n"):
                joined = b"".join(p[1] for p in pending)
                parts.append(joined)
                total += len(joined)
                line_ts.append(ts)
                line_ends.append(total)
                for frame_ts, _ in pending:
                    if frame_ts == cur_ts:
                        cur_n += 1
                    else:
                        cur_ts, cur_n = frame_ts, 1
                pending.clear()
        self._rest = buf[pos:]
        self._skip = skip
        if line_ts:
            self.cursor = Cursor(cur_ts, cur_n)
            self._count(line_ts, line_ends, b"".join(parts), tally)

    def _consume_lines(
        self, lines: list[bytes], tally: Tally, *, add_newline: bool = False
    ) -> None:
        # TTY streams: one timestamped line per message, no frame headers.
        parts: list[bytes] = []
        line_ts: list[bytes] = []
        line_ends: list[int] = []
        total = 0
        consumed: list[bytes] = []
        skip = self._skip
        for line in lines:
            space = line.find(b" ")
            if space < 0:
                continue
            ts = line[:space]
            if skip is not None:
                if skip.swallow(ts):
                    continue
                skip = None
            msg = line[space + 1 :] + b"\n" if add_newline else line[space + 1 :]
            parts.append(msg)
            total += len(msg)
            line_ts.append(ts)
            line_ends.append(total)
            consumed.append(ts)
        self._skip = skip
        if consumed:
            self._advance(consumed)
            self._count(line_ts, line_ends, b"".join(parts), tally)

    def _advance(self, frame_timestamps: list[bytes]) -> None:
        cur_ts, cur_n = (self.cursor.timestamp, self.cursor.count) if self.cursor else (b"", 0)
        for ts in frame_timestamps:
            if ts == cur_ts:
                cur_n += 1
            else:
                cur_ts, cur_n = ts, 1
        self.cursor = Cursor(cur_ts, cur_n)

    # --- counting ----------------------------------------------------------------------------

    def _count(self, line_ts: list[bytes], line_ends: list[int], text: bytes, tally: Tally) -> None:
        live_from = self._first_live(line_ts)
        tally.lines += len(line_ts) - live_from
        boundary = self.boundary_ns
        for offset, kind in self._classifier.matches(text):
            index = bisect_right(line_ends, offset)
            ts_ns = parse_timestamp(line_ts[index])
            if self._incidents.opens(ts_ns, boundary) and index >= live_from:
                tally.errors[kind] += 1
            if index >= live_from:
                tally.error_lines[kind] += 1
            if boundary is None or ts_ns > boundary:
                self._run.add(ts_ns)

    def _first_live(self, line_ts: list[bytes]) -> int:
        # Timestamps only grow within a stream, so the live lines are a suffix.
        if parse_timestamp(line_ts[0]) >= self._live_since:
            return 0
        if parse_timestamp(line_ts[-1]) < self._live_since:
            return len(line_ts)
        return bisect_left(line_ts, self._live_since, key=parse_timestamp)


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

    def __init__(self, log: ContainerLog) -> None:
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
        if started in self._previous_end:
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
