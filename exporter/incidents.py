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

from bisect import bisect_right
from typing import Final

from exporter.classifier import LogClassifier
from exporter.timestamps import NS
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


def served_matcher() -> LogClassifier:
    """Finds the lines of requests the model server served (fleet_contract.errors)."""
    return LogClassifier({SERVED: (SERVED_PATTERN,)})
