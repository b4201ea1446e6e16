"""One container's log, decoded and counted exactly: pure logic, fed bytes by the Docker adapter.

Docker's logs API (with ``timestamps=1``) sends one frame per log message: an 8-byte header
(stream, size) and the message prefixed with its RFC 3339 timestamp. A TTY container's stream
has no headers: just timestamped lines. Messages longer than 16 KiB arrive as several frames,
only the last ending in a newline; they are joined back into one line.

Exactness rests on three rules:

* A cursor (timestamp of the last consumed frame, how many consumed frames carry exactly that
  timestamp) survives reconnects. Docker's ``since`` is inclusive, so a new stream starts at
  the cursor's timestamp (to the nanosecond) and the frames already consumed are skipped.
* A line belongs to the container's current run when its timestamp is after the run's
  boundary (the end of the previous run). ``since_start`` counts matches of the current run
  only, and drops to the new run's count when a new run starts.
* Lines stamped before the exporter started (``live_since_ns``) are history: they count for
  ``since_start`` but not for the counters, which a restarted exporter must not replay.
"""

from __future__ import annotations

import calendar
import struct
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Final

from exporter.classifier import LogClassifier

NS: Final = 1_000_000_000
_HEADER = struct.Struct(">BxxxL")
_HEADER_SIZE: Final = 8


class TimestampError(ValueError):
    """A Docker timestamp could not be parsed."""


def parse_timestamp(text: bytes | str) -> int:
    """Nanoseconds since the epoch for an RFC 3339 time such as Docker's ``...:51.59374Z``."""
    s = text.decode("ascii") if isinstance(text, bytes) else text
    try:
        seconds = calendar.timegm(
            (int(s[0:4]), int(s[5:7]), int(s[8:10]), int(s[11:13]), int(s[14:16]), int(s[17:19]))
        )
        i = 19
        nanos = 0
        if i < len(s) and s[i] == ".":
            j = i + 1
            while j < len(s) and s[j].isdigit():
                j += 1
            digits = s[i + 1 : j]
            nanos = int((digits + "000000000")[:9])
            i = j
        zone = s[i:]
        if zone in ("Z", "z"):
            offset = 0
        elif len(zone) == 6 and zone[0] in "+-" and zone[3] == ":":
            offset = (int(zone[1:3]) * 60 + int(zone[4:6])) * 60
            offset = offset if zone[0] == "+" else -offset
        else:
            raise ValueError(f"unknown zone {zone!r}")
    except (ValueError, IndexError) as exc:
        raise TimestampError(f"not an RFC 3339 timestamp: {s!r}") from exc
    return (seconds - offset) * NS + nanos


def is_zero_time(text: str) -> bool:
    """Docker writes Go's zero time ("0001-01-01T00:00:00Z") for 'never'."""
    return not text or text.startswith("0001-01-01")


def format_since(ns: int) -> str:
    """Docker's ``since`` parameter for a time in nanoseconds, without losing precision."""
    return f"{ns // NS}.{ns % NS:09d}"


@dataclass
class Tally:
    """What one batch added to the counters (lines stamped after the exporter started)."""

    lines: int = 0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Cursor:
    """The last consumed frame's timestamp and how many consumed frames carry it."""

    timestamp: bytes
    count: int

    def since(self) -> str:
        """Docker's inclusive ``since`` for resuming at this cursor."""
        return format_since(parse_timestamp(self.timestamp))


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

    def __init__(self, classifier: LogClassifier, live_since_ns: int) -> None:
        self._classifier = classifier
        self._live_since = live_since_ns
        self.cursor: Cursor | None = None
        self.boundary_ns: int | None = None
        self._run_matches: list[int] = []
        self._rest = b""
        self._pending: list[tuple[bytes, bytes]] = []
        self._skip: _Skip | None = None
        self._tty = False

    @property
    def since_start(self) -> int:
        """Matching lines of the current run."""
        return len(self._run_matches)

    def start_run(self, boundary_ns: int | None) -> None:
        """A run begins after ``boundary_ns`` (None: the log holds only this run)."""
        self.boundary_ns = boundary_ns
        if boundary_ns is not None:
            cut = bisect_right(self._run_matches, boundary_ns)
            del self._run_matches[:cut]

    def since_param(self) -> str | None:
        """Where the next stream starts: at the cursor, else at the run's boundary, else all."""
        if self.cursor is not None:
            return self.cursor.since()
        if self.boundary_ns is not None:
            return format_since(self.boundary_ns)
        return None

    def begin_stream(self, *, tty: bool) -> None:
        """A new stream starts at ``since_param()``: forget partial data, skip what was seen."""
        self._tty = tty
        self._rest = b""
        self._pending = []
        self._skip = _Skip(self.cursor) if self.cursor is not None else None

    def end_stream(self, *, run_over: bool) -> Tally:
        """The stream ended. If the run is over too, a last line without newline is complete."""
        tally = Tally(errors=dict.fromkeys(self._classifier.kinds, 0))
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

    def feed(self, data: bytes) -> Tally:
        """Decode and count a piece of the stream (any split); return what it adds."""
        tally = Tally(errors=dict.fromkeys(self._classifier.kinds, 0))
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
            if index >= live_from:
                tally.errors[kind] += 1
            if boundary is None or ts_ns > boundary:
                self._run_matches.append(ts_ns)

    def _first_live(self, line_ts: list[bytes]) -> int:
        # Timestamps only grow within a stream, so the live lines are a suffix.
        if parse_timestamp(line_ts[0]) >= self._live_since:
            return 0
        if parse_timestamp(line_ts[-1]) < self._live_since:
            return len(line_ts)
        return bisect_left(line_ts, self._live_since, key=parse_timestamp)
