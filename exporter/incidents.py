"""Incidents: the matching lines of one failure, counted once. Pure logic, no I/O.

One failed model load makes Ollama print several matching lines within a moment: the runner's
``cudaMalloc failed: out of memory``, then the server's ``error loading llama server ... out
of memory``; while it waits for VRAM to come back it logs ``didn't recover within timeout``
every 250 ms. Counted line by line, "3 errors" could mean one and a half failures.

The rule, the same for the live counters, for the recount after an exporter restart and for
``model-fleet-exporter scan``:

* An incident begins with a matching line and takes in every matching line of the same log
  (any kind) stamped less than the window after that first line. The next matching line at or
  past the window begins the next incident. The window runs from the incident's first line,
  not from line to line: errors that keep coming still count, one per window.
* An incident has the kind of its first line (an ``oom`` line followed within the window by
  a ``vram_recovery_timeout`` line is one ``oom`` incident): the alert counts failures, not
  the kinds of line one failure prints. The lines of every kind are counted too.
* Times are the lines' own timestamps (Docker's), never the time of reading, so a replay, a
  reconnect or a recount groups the same lines the same way. An incident never spans two runs
  of a container.
* A window of 0 makes every matching line an incident of its own.

"3 consecutive VRAM errors" (the original system's words) counts the incidents since the last
request the server served (``consecutive``): a served request (gin's 2xx access line for an
endpoint that runs a model, fleet_contract.errors.SERVED_PATTERN) ends a run of errors. Gin
logs a request when it ends; a streamed answer has its 200 sent before the runner can die in
the middle of it (CUDA error: out of memory while generating), so a served line stamped less
than the window after an error line is that failed request's own, and ends nothing.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from exporter.classifier import LogClassifier, line_blocks
from exporter.timestamps import NS, TimestampError, parse_timestamp
from fleet_contract.errors import SERVED, SERVED_PATTERN

DEFAULT_WINDOW_SECONDS: Final = 2.0


def window_ns(seconds: float) -> int:
    """The window in nanoseconds."""
    return round(seconds * NS)


DEFAULT_WINDOW_NS: Final = window_ns(DEFAULT_WINDOW_SECONDS)


class Grouper:
    """Groups matching lines, in the order of the log, into incidents."""

    def __init__(self, window: int) -> None:
        self.window = window  # ns
        self.first: int | None = None  # time of the open incident's first line

    def opens(self, ts_ns: int, boundary_ns: int | None = None) -> bool:
        """Whether the line stamped ``ts_ns`` begins an incident (then it is the open one).

        ``boundary_ns``: where the current run began. A line on the other side of it from the
        open incident's first line begins a new incident, however close in time. The counters
        group with the boundary known when a line is read (a runtime reports a restart before
        the new run's lines are read); ``since_start`` (RunIncidents) groups again when a
        boundary comes later.
        """
        first = self.first
        if (
            first is not None
            and abs(ts_ns - first) < self.window
            and (boundary_ns is None or (first > boundary_ns) == (ts_ns > boundary_ns))
        ):
            return False
        self.first = ts_ns
        return True


def ends_streak(served_ns: int, last_error_ns: int | None, window: int) -> bool:
    """Whether a served request at ``served_ns`` ends the run of errors: not when it is
    stamped less than the window after the last error line (the failed request's own 200)."""
    return last_error_ns is None or served_ns >= last_error_ns + window


class RunIncidents:
    """The incidents of a container's current run (``since_start``), and those since the last
    served request (``consecutive``), recounted exactly.

    Holds the time of every matching line after the run's boundary and of the last served
    request that ended a run of errors; when a later boundary turns out to cut the run
    shorter, the lines before it go and the rest is grouped again.
    """

    def __init__(self, window: int) -> None:
        self._window = window
        self._times: list[int] = []
        self._firsts: list[int] = []  # each incident's first line
        self._group = Grouper(window)
        self._served: int | None = None  # the last served request that ended a streak
        self.count = 0

    def add(self, ts_ns: int) -> None:
        """A matching line of the run (lines come in the log's order)."""
        self._times.append(ts_ns)
        if self._group.opens(ts_ns):
            self._firsts.append(ts_ns)
            self.count += 1

    def served(self, ts_ns: int) -> bool:
        """A served request of the run (in the log's order); True when it ends the streak."""
        last_error = self._times[-1] if self._times else None
        if not ends_streak(ts_ns, last_error, self._window):
            return False
        if self._served is None or ts_ns > self._served:
            self._served = ts_ns
        return True

    @property
    def consecutive(self) -> int:
        """Incidents that began after the last served request (all of them: none served)."""
        if self._served is None:
            return self.count
        return len(self._firsts) - bisect_right(self._firsts, self._served)

    def cut(self, boundary_ns: int) -> None:
        """The run begins after ``boundary_ns``: forget earlier lines, group the rest again."""
        if self._served is not None and self._served <= boundary_ns:
            self._served = None
        cut = bisect_right(self._times, boundary_ns)
        if not cut:
            return
        del self._times[:cut]
        self._group = Grouper(self._window)
        self._firsts = [ts for ts in self._times if self._group.opens(ts)]
        self.count = len(self._firsts)


# --- scanning a log file ---------------------------------------------------------------------

_TIME: Final = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"
# Docker's --timestamps prefix, or Ollama's own `time=...` field.
_STAMP: Final = re.compile(rb"(?m)^(" + _TIME + rb")[ \t]|\btime=(" + _TIME + rb")")


# gin's access line: "[GIN] 2025/11/20 - 10:01:02 | 200 | ..." (the server's local time, UTC
# in Ollama's container; whole seconds).
_GIN_TIME: Final = re.compile(rb"\[GIN\] (\d{4})/(\d\d)/(\d\d) - (\d\d):(\d\d):(\d\d)")


@dataclass
class Scan:
    """What ``scan`` found: all lines, per kind its incidents and matching lines, the
    incidents after the last served request, and the served requests that ended a streak."""

    lines: int
    incidents: dict[str, int]
    error_lines: dict[str, int]
    window_seconds: float
    consecutive: int = 0
    successes: int = 0


class _FileGrouper:
    """Incidents of a log file, whose lines carry their times in the text (if at all).

    A line's time is Docker's prefix (``docker logs --timestamps``) or Ollama's ``time=``
    field. A matching line without one (llama.cpp's own messages) takes the time of the next
    line that has one: the server logs the failure right after its runner printed it. A
    matching line with no time on or after it is an incident of its own.
    """

    def __init__(self, kinds: tuple[str, ...], window: int) -> None:
        self.incidents = dict.fromkeys(kinds, 0)
        self.error_lines = dict.fromkeys(kinds, 0)
        self.consecutive = 0
        self.successes = 0
        self._window = window
        self._group = Grouper(window)
        self._untimed: list[str] = []  # kinds of matching lines waiting for a time
        self._last_error: int | None = None  # the newest error line's time
        self._last_ns: int | None = None  # the newest time seen on a counted line

    def chunk(
        self, text: bytes, matches: list[tuple[int, str]], served: list[int] | None = None
    ) -> None:
        if served:
            # Served lines and error lines in the log's order: a served request ends only the
            # errors before it.
            events = sorted([*matches, *((start, "") for start in served)])
            i = 0
            for j, (start, kind) in enumerate(events):
                if kind:
                    continue
                self._chunk(text, events[i:j])
                self._served(text, start)
                i = j + 1
            self._chunk(text, events[i:])
        else:
            self._chunk(text, matches)

    def _served(self, text: bytes, start: int) -> None:
        end = text.find(b"\n", start)
        end = len(text) if end < 0 else end
        own = _STAMP.search(text, start, end)
        ts = _stamp_ns(own) if own is not None else _gin_ns(text, start, end)
        if self._last_ns is not None and (ts is None or ts < self._last_ns):
            ts = self._last_ns  # gin's whole seconds: never before the line before it
        if self._untimed:
            self._resolve(ts)  # llama.cpp's lines before it: no later time to take
        if ts is None or ends_streak(ts, self._last_error, self._window):
            self.successes += 1
            self.consecutive = 0
        if ts is not None:
            self._last_ns = ts

    def _chunk(self, text: bytes, matches: list[tuple[int, str]]) -> None:
        if not matches:
            return
        if self._untimed:
            first = _STAMP.search(text)
            if first is None:
                self._untimed.extend(kind for _, kind in matches)
                for _, kind in matches:
                    self.error_lines[kind] += 1
                return
            self._resolve(_stamp_ns(first))
        # The first time stamp after the end of an earlier untimed line, and where it is (past
        # the text: none), so that many untimed lines before it do not search again.
        next_at, next_ns = -1, None
        for start, kind in matches:
            self.error_lines[kind] += 1
            end = text.find(b"\n", start)
            end = len(text) if end < 0 else end
            own = _STAMP.search(text, start, end)
            if own is not None:
                self._add(_stamp_ns(own), kind)
                continue
            self._untimed.append(kind)
            if end > next_at:
                following = _STAMP.search(text, end)
                next_at = len(text) + 1 if following is None else following.start()
                next_ns = None if following is None else _stamp_ns(following)
            if next_at <= len(text):
                self._resolve(next_ns)

    def _resolve(self, ts_ns: int | None) -> None:
        for kind in self._untimed:
            self._add(ts_ns, kind)
        self._untimed = []

    def _add(self, ts_ns: int | None, kind: str) -> None:
        if ts_ns is None or self._group.opens(ts_ns):
            self.incidents[kind] += 1
            self.consecutive += 1
        if ts_ns is not None:
            if self._last_error is None or ts_ns > self._last_error:
                self._last_error = ts_ns
            if self._last_ns is None or ts_ns > self._last_ns:
                self._last_ns = ts_ns

    def end(self) -> None:
        self._resolve(None)


def _stamp_ns(m: re.Match[bytes]) -> int | None:
    text = m.group(1) or m.group(2)
    try:
        return parse_timestamp(text)
    except TimestampError:
        return None


def _gin_ns(text: bytes, start: int, end: int) -> int | None:
    m = _GIN_TIME.search(text, start, end)
    if m is None:
        return None
    fields = tuple(int(g) for g in m.groups())
    return calendar.timegm((*fields, 0, 0, 0)) * NS


def scan(
    classifier: LogClassifier,
    read: Callable[[int], bytes],
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    chunk_size: int = 256 * 1024,
    served: LogClassifier | None = None,
) -> Scan:
    """Count the lines, incidents and matching lines of what ``read(n)`` returns until b'';
    ``served`` finds the served requests (None: the default, SERVED_PATTERN)."""
    served = served if served is not None else served_matcher()
    grouper = _FileGrouper(classifier.kinds, window_ns(window_seconds))
    lines = 0
    for block in line_blocks(read, chunk_size):
        lines += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        grouper.chunk(block, classifier.matches(block), [at for at, _ in served.matches(block)])
    grouper.end()
    return Scan(
        lines,
        grouper.incidents,
        grouper.error_lines,
        window_seconds,
        consecutive=grouper.consecutive,
        successes=grouper.successes,
    )


def served_matcher() -> LogClassifier:
    """Finds the lines of requests the model server served (fleet_contract.errors)."""
    return LogClassifier({SERVED: (SERVED_PATTERN,)})
