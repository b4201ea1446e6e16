"""One container's log, decoded and counted exactly across streams and runs: pure logic.

A log source (exporter.logsource) hands over bytes: Docker's frames, or unframed timestamped
lines (a TTY container, a source without frames). exporter.frames decodes them into lines.

Exactness rests on these rules:

* A cursor (timestamp of the newest consumed frame, how many consumed frames carry exactly
  that timestamp) survives reconnects. A source's ``since`` is inclusive, so a new stream
  starts at the cursor's timestamp (to the nanosecond).
* Every frame is checked against the frames already consumed (exporter.ledger: same timestamp
  and same content): a re-sent frame is dropped wherever it comes, after a reconnect or when
  Docker's follow sends part of a rotated file again; a frame never consumed counts, even when
  older than the cursor. When the follow jumped at a rotation the follower reads again from
  the verified point, and a log that no longer reaches back to where a stream starts is a
  gap, reported.
* A line belongs to the container's current run when its timestamp is after the run's
  boundary (the end of the previous run, which RunTracker works out from the container's
  states). ``since_start`` counts the current run's incidents (exporter.incidents) only, and
  ``consecutive`` those after the run's last served request.
* Lines stamped before the exporter started (``live_since_ns``) are history: they count for
  ``since_start`` but not for the counters (nor an incident whose first line is history).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from exporter.classifier import LogClassifier
from exporter.frames import Frame, Lines, consumed, decode_frames, decode_lines
from exporter.incidents import DEFAULT_WINDOW_NS, Grouper, RunIncidents, served_matcher
from exporter.ledger import Cursor, Ledger
from exporter.timestamps import format_since, parse_timestamp

# Batches handed to the classifier stay cache-sized even when the reader ran ahead.
FEED_SIZE: Final = 64 * 1024


@dataclass
class Tally:
    """What one batch added to the counters (lines stamped after the exporter started)."""

    lines: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # incidents, by their first line's kind
    error_lines: dict[str, int] = field(default_factory=dict)  # matching lines, by kind
    recovered: int = 0  # of ``lines``: lines the follow had skipped, found by a re-read
    gaps: int = 0  # streams that found the log no longer reaching back to where they began


class ContainerLog:
    """Decodes and counts one container's log across streams, reconnects and runs."""

    def __init__(
        self,
        classifier: LogClassifier,
        live_since_ns: int,
        window_ns: int = DEFAULT_WINDOW_NS,
        served: LogClassifier | None = None,
    ) -> None:
        self._classifier = classifier
        self._served = served if served is not None else served_matcher()
        self._live_since = live_since_ns
        self.cursor: Cursor | None = None
        self.boundary_ns: int | None = None
        self.ledger = Ledger()
        self._run = RunIncidents(window_ns)  # since_start
        self._incidents = Grouper(window_ns)  # the counters
        self._rest = b""
        self._pending: list[Frame] = []  # a message's frames until its last one
        self._tty = False
        self._checked_end: tuple[str, str] | None = None  # the run end last read again

    @property
    def since_start(self) -> int:
        """Incidents of the current run."""
        return self._run.count

    @property
    def consecutive(self) -> int:
        """Incidents of the current run after its last served request."""
        return self._run.consecutive

    @property
    def jumped(self) -> bool:
        """The stream re-sent or went back (a rotation): end it; the next one checks."""
        return self.ledger.jumped

    def start_run(self, boundary_ns: int | None) -> None:
        """A run begins after ``boundary_ns`` (None: the log holds only this run)."""
        self.boundary_ns = boundary_ns
        if boundary_ns is not None:
            self._run.cut(boundary_ns)

    def resume_ns(self) -> int | None:
        """Where the next stream starts: at the cursor (or the verified point when a check is
        due), else at the run's boundary, else all."""
        start = self.ledger.start_point(self.cursor)
        if start is not None:
            return parse_timestamp(start.timestamp)
        return self.boundary_ns

    def since_param(self) -> str | None:
        """``resume_ns`` as Docker's ``since`` parameter (None: from the beginning)."""
        ns = self.resume_ns()
        return None if ns is None else format_since(ns)

    def begin_stream(self, *, tty: bool) -> None:
        """A new stream starts at ``since_param()``: forget partial data."""
        self._tty = tty
        self._rest = b""
        self._pending = []
        self.ledger.begin(self.cursor)

    def verify(self) -> None:
        """Read again from the verified point with the next stream (after a jump, at a run's
        end): lines the follow skipped are counted, a log that lost them is a gap."""
        self.ledger.verify()

    def check_run_end(self, started_at: str, finished_at: str) -> None:
        """A run ended: a rotation can skip lines silently, so when live lines came since the
        verified point, read the run's end again once (``verify``)."""
        if self.ledger.unverified and (started_at, finished_at) != self._checked_end:
            self._checked_end = (started_at, finished_at)
            self.verify()

    def end_stream(self, *, run_over: bool) -> Tally:
        """The stream ended. If the run is over too, a last line without newline is complete."""
        tally = self._tally()
        if self.ledger.jumped:
            self.ledger.verify()
        if run_over:
            if self._tty and self._rest:
                self._consume_lines([self._rest + b"\n"], tally)
            elif self._pending:
                ts = self._pending[-1][0]
                text = b"".join(p[1] for p in self._pending) + b"\n"
                for frame_ts, _, key in self._pending:
                    self.cursor = consumed(self.ledger, self.cursor, frame_ts, key)
                self._pending = []
                self._count([ts], [len(text)], text, tally, [])
        self._rest = b""
        self._pending = []
        return tally

    def _tally(self) -> Tally:
        kinds = self._classifier.kinds
        return Tally(errors=dict.fromkeys(kinds, 0), error_lines=dict.fromkeys(kinds, 0))

    def feed_all(self, data: bytes) -> Iterator[Tally]:
        """``feed`` in batches of at most FEED_SIZE, each one's tally as it is counted."""
        for start in range(0, len(data), FEED_SIZE):
            yield self.feed(data[start : start + FEED_SIZE])

    def feed(self, data: bytes) -> Tally:
        """Decode and count a piece of the stream (any split); return what it adds."""
        tally = self._tally()
        gaps = self.ledger.gaps
        if self._tty:
            buf = self._rest + data if self._rest else data
            cut = buf.rfind(b"\n") + 1
            self._rest = buf[cut:]
            if cut:
                self._consume_lines(buf[:cut].split(b"\n")[:-1], tally, add_newline=True)
        else:
            self._consume_frames(data, tally)
        tally.gaps = self.ledger.gaps - gaps
        return tally

    # --- decoding (exporter.frames) ---------------------------------------------------------

    def _consume_frames(self, data: bytes, tally: Tally) -> None:
        buf = self._rest + data if self._rest else data
        lines = Lines()
        pos, self.cursor = decode_frames(buf, self.ledger, self.cursor, self._pending, lines)
        self._rest = buf[pos:]
        self._count_lines(lines, tally)

    def _consume_lines(
        self, lines: list[bytes], tally: Tally, *, add_newline: bool = False
    ) -> None:
        decoded = Lines()
        self.cursor = decode_lines(
            lines, self.ledger, self.cursor, decoded, add_newline=add_newline
        )
        self._count_lines(decoded, tally)

    def _count_lines(self, lines: Lines, tally: Tally) -> None:
        if lines.stamps:
            text = b"".join(lines.parts)
            self._count(lines.stamps, lines.ends, text, tally, lines.recovered)

    # --- counting ----------------------------------------------------------------------------

    def _count(
        self,
        line_ts: list[bytes],
        line_ends: list[int],
        text: bytes,
        tally: Tally,
        recovered: list[int],
    ) -> None:
        live: Callable[[int], bool]
        if recovered:  # recovered lines are older than the others: no order to rely on
            live_since = self._live_since
            flags = [parse_timestamp(ts) >= live_since for ts in line_ts]
            live = flags.__getitem__
            tally.lines += sum(flags)
            tally.recovered += sum(1 for i in recovered if flags[i])
        else:
            live_from = self._first_live(line_ts)
            live = live_from.__le__
            tally.lines += len(line_ts) - live_from
        boundary = self.boundary_ns
        matches = self._classifier.matches(text)
        served = self._served.matches(text)
        if served:  # in the log's order: a served request ends only the errors before it
            matches = sorted([*matches, *((offset, "") for offset, _ in served)])
        for offset, kind in matches:
            index = bisect_right(line_ends, offset)
            ts_ns = parse_timestamp(line_ts[index])
            if not kind:
                if boundary is None or ts_ns > boundary:
                    self._run.served(ts_ns)
                continue
            counts = live(index)
            if self._incidents.opens(ts_ns, boundary) and counts:
                tally.errors[kind] += 1
            if counts:
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
