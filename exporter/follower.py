"""One container's log follower: reads its streams across runs into the watcher's LogStore.

A follower owns one container ID and its own thread: it asks the source for the container's
state, follows its log from the cursor, counts what arrives, and after the stream ends asks
again to tell a stopped or restarted container from a broken stream. The arithmetic (cursor,
runs, boundaries) is exporter.containerlog's; the watcher (exporter.watcher) starts followers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from exporter.containerlog import ContainerLog, RunState, RunTracker, Tally
from exporter.logsource import ContainerGone, ContainerInfo, LogStream, SourceError
from exporter.timestamps import is_zero_time, parse_timestamp

if TYPE_CHECKING:
    from exporter.watcher import LogWatcher

log = logging.getLogger(__name__)

# Batches handed to the classifier stay cache-sized even when the reader ran ahead.
FEED_SIZE: Final = 64 * 1024
STOP_GRACE: Final = 0.5
BACKOFF_MIN: Final = 0.1
BACKOFF_MAX: Final = 5.0


class Follower:
    """Follows one container (one ID) across streams and runs."""

    def __init__(self, watcher: LogWatcher, container_id: str, fleet: str, name: str) -> None:
        self.id = container_id
        self.fleet = fleet
        self.name = name
        self._watcher = watcher
        self._source = watcher.source
        self._log = ContainerLog(
            watcher.classifier, watcher.live_since_ns, watcher.incident_window_ns
        )
        self._runs = RunTracker(self._log)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stream: LogStream | None = None
        self._stream_lock = threading.Lock()
        self._framed = True
        self._broken = False  # the last stream ended while the container kept running
        self._failures = 0
        self._checked_end: tuple[str, str] | None = None  # the run end last read again
        self.thread = threading.Thread(target=self._main, name=f"logs-{name}", daemon=True)

    # --- control from other threads ------------------------------------------------------------

    def wake(self) -> None:
        """Something happened to the container: look at it again."""
        self._wake.set()

    def stop(self) -> None:
        """Stop following, and end the stream being read."""
        self._stop.set()
        self._wake.set()
        self.interrupt()

    def interrupt(self) -> None:
        """End the current stream now (the follower then decides what to do)."""
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):  # best effort from another thread
                stream.interrupt()

    # --- the follower's thread -----------------------------------------------------------------

    def _main(self) -> None:
        errors = 0
        while not self._stop.is_set():
            try:
                if self._step():
                    break
                errors = 0
            except Exception:  # a bug must not end the watch of this container for good
                errors += 1
                log.exception("%s: unexpected error while following the log; retrying", self.name)
                self._wake.wait(_backoff(errors))
        self._watcher.store.release(self.fleet, self.name, self.id)
        self._watcher.forget(self)

    def _step(self) -> bool:
        """Look at the container and read its log once; True when it is gone."""
        store = self._watcher.store
        self._wake.clear()
        try:
            info = self._source.inspect(self.id)
        except ContainerGone:
            return True
        except SourceError as exc:
            log.debug("inspect %s failed: %s", self.name, exc)
            self._failures += 1
            self._wake.wait(_backoff(self._failures))  # or until the source is back (events)
            return False
        self._rename(info.name)
        self._framed = info.framed
        if self._runs.observe(info.state, lambda: self._history(info)):
            log.debug(
                "%s: run started %s, lines after %s count",
                self.name,
                self._runs.started_at,
                self._log.boundary_ns,
            )
        if self._runs.idle(info.state) and not self._log.ledger.check_due:
            self._report(up=False)
            self._wake.wait()
            return False
        if self._broken:
            store.reconnected(self.fleet, self.name)
        outcome = self._read(info.state.running)
        if self._stop.is_set() or outcome == "gone":
            return True
        if outcome == "restarted":
            log.debug("%s: another run began before its stream was read; looking again", self.name)
            self._broken = False  # the run ended: a broken stream of it is no reconnect now
            return False
        if outcome == "jumped":
            # Docker's follow sent old lines again at a rotation, and may have skipped some:
            # read again from the verified point at once (exporter.ledger).
            store.add(self.fleet, self.name, self._log.end_stream(run_over=False))
            log.debug("%s: the log stream jumped at a rotation; reading it again", self.name)
            return False
        # Why did the stream end? Ask the source before deciding what the tail means.
        try:
            after: RunState | None = self._why_ended()
        except ContainerGone:
            store.add(self.fleet, self.name, self._log.end_stream(run_over=True))
            self._report(up=False)
            return True
        except SourceError:
            after = None
        run_over = self._runs.stream_ended(after)
        store.add(self.fleet, self.name, self._log.end_stream(run_over=run_over))
        if run_over and after is not None and self._log.ledger.unverified:
            # A rotation can skip lines silently: read the run's end again once, from the
            # verified point (lines found are counted, a log that lost them is a gap).
            end = (after.started_at, after.finished_at)
            if end != self._checked_end:
                self._checked_end = end
                self._log.verify()
        if run_over:
            self._broken = False
            self._failures = 0
        else:
            self._broken = True
            self._failures = 0 if outcome == "data" else self._failures + 1
            self._wake.wait(_backoff(self._failures))
        self._report(up=False)
        return False

    def _why_ended(self) -> RunState:
        """Ask again after a stream ended, giving the runtime a moment to record a stop."""
        state = self._source.inspect(self.id).state
        if self._runs.same_run(state):
            # The stream ends as the container exits, a moment before Docker marks it stopped
            # (and then sends the die event): wait for that event, or this long.
            self._wake.clear()
            state = self._source.inspect(self.id).state
            if self._runs.same_run(state):
                self._wake.wait(STOP_GRACE)
                state = self._source.inspect(self.id).state
        return state

    def _history(self, info: ContainerInfo) -> Sequence[tuple[str, int]] | None:
        if is_zero_time(info.created):
            return None
        try:
            return self._source.history(self.id, parse_timestamp(info.created))
        except SourceError as exc:
            log.debug("%s: no event history: %s", self.name, exc)
            return None

    def _rename(self, name: str) -> None:
        if name and name != self.name:
            fleet = self._watcher.selection.fleet_of(name, {}) or self.fleet
            self._watcher.store.release(self.fleet, self.name, self.id)
            log.info("container %s renamed to %s", self.name, name)
            self.fleet, self.name = fleet, name
            self._watcher.store.register(self.fleet, self.name)

    def _report(self, *, up: bool) -> None:
        self._watcher.store.report_run(
            self.fleet,
            self.name,
            self.id,
            self._runs.started_ns,
            since_start=self._log.since_start,
            up=up,
            started_at=self._runs.started_at or "",
            consecutive=self._log.consecutive,
        )

    def _restarted_since_inspect(self) -> bool:
        """Whether the container began another run since it was inspected for this stream.

        Asked once the stream is open: a restart after this answer stops the container, which
        ends the stream; one before it is seen here. Unknown (the source did not answer): no.
        """
        try:
            state = self._source.inspect(self.id).state
        except (ContainerGone, SourceError):
            return False
        return state.ever_started and state.started_at != self._runs.started_at

    def _read(self, running: bool) -> str:
        """Read one log stream to its end: 'data', 'empty', 'error', 'gone', 'jumped', or
        'restarted' (the container began another run before the stream was read)."""
        try:
            stream = self._source.follow(self.id, self._log.resume_ns())
        except ContainerGone:
            return "gone"
        except SourceError as exc:
            log.debug("%s: log stream failed to open: %s", self.name, exc)
            return "error"
        with self._stream_lock:
            self._stream = stream
        if self._stop.is_set():
            self.interrupt()
        if self._restarted_since_inspect():
            # A stream opened in a newer run reads the older run's tail and the new run's
            # lines as one, and ends only when the new run does: counted as the old run, the
            # errors since start would never go back to 0. Look at the container again first.
            with self._stream_lock:
                self._stream = None
            with contextlib.suppress(Exception):  # nothing was read from it
                stream.close()
            return "restarted"
        self._log.begin_stream(tty=not self._framed)
        self._report(up=running)
        store = self._watcher.store
        if self._log.cursor is None and stream.lost():
            # From the run's start, where the ledger has no line to miss: the source says.
            store.add(self.fleet, self.name, Tally(gaps=1))
            _warn_gap(self.name, self._source.name)
        got_data = False
        error: BaseException | None = None
        try:
            while payload := stream.read():
                got_data = True
                for start in range(0, len(payload), FEED_SIZE):
                    tally = self._log.feed(payload[start : start + FEED_SIZE])
                    if tally.gaps:
                        _warn_gap(self.name, self._source.name)
                    store.update(
                        self.fleet,
                        self.name,
                        self.id,
                        self._runs.started_ns,
                        tally,
                        since_start=self._log.since_start,
                        up=running,
                        started_at=self._runs.started_at or "",
                        consecutive=self._log.consecutive,
                    )
                if self._log.jumped:
                    break
        except Exception as exc:  # any failure ends this stream; the caller decides what next
            error = exc
        with self._stream_lock:
            self._stream = None
        with contextlib.suppress(Exception):  # already broken: nothing left to release
            stream.close()
        if error is not None and not self._stop.is_set():
            log.debug("%s: log stream broke: %s", self.name, error)
            return "data" if got_data else "error"
        if self._log.jumped and not self._stop.is_set():
            return "jumped"
        return "data" if got_data else "empty"


def _warn_gap(name: str, source: str) -> None:
    log.warning(
        "%s: %s rotated log lines away before the exporter read them; lines may be lost "
        "(model_fleet_log_gaps_total)",
        name,
        source,
    )


def _backoff(failures: int) -> float:
    if failures <= 0:
        return 0.0
    return float(min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (failures - 1)))
