"""``model-fleet-exporter scan``: the lines, incidents and matching lines of a log file, by the
rule the live counters follow (exporter.incidents), on the times the lines carry in their text.
Pure logic: the caller reads the file.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from exporter.classifier import LogClassifier, line_blocks
from exporter.incidents import (
    DEFAULT_WINDOW_SECONDS,
    Grouper,
    ends_streak,
    served_matcher,
    window_ns,
)
from exporter.timestamps import NS, TimestampError, parse_timestamp

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
