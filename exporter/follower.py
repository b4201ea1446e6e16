"""One container's log follower: reads its streams across runs into a LogStore.

A follower owns one container ID: it asks the source for the container's state, follows its
log from the cursor, counts what arrives (exporter.containerlog, exporter.runs), and after the
stream ends asks again to tell a stopped or restarted container from a broken stream. It is
handed all it uses; the watcher (exporter.watcher) runs each on a thread until ``run`` returns.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Sequence
from typing import Final

from exporter.config import ContainerSelection
from exporter.containerlog import ContainerLog, Tally
from exporter.logsource import ContainerGone, ContainerInfo, LogSource, LogStream, SourceError
from exporter.metrics import LogStore
from exporter.runs import RunState, RunTracker
from exporter.timestamps import is_zero_time, parse_timestamp

log = logging.getLogger(__name__)

STOP_GRACE: Final = 0.5
BACKOFF_MIN: Final = 0.1
BACKOFF_MAX: Final = 5.0


class StreamEnd(enum.Enum):
    """How one read of a container's log stream ended."""

    DATA = "data"  # lines came, then the stream ended (or broke)
    EMPTY = "empty"  # it ended without a line
    ERROR = "error"  # it failed to open, or broke before its first line
    GONE = "gone"  # the container is gone
    JUMPED = "jumped"  # Docker's follow went back at a rotation: read again (exporter.ledger)
    RESTARTED = "restarted"  # the container began another run before the stream was read


class Follower:
    """Follows one container (one ID) across streams and runs."""

    def __init__(
        self,
        source: LogSource,
        store: LogStore,
        selection: ContainerSelection,
        container_log: ContainerLog,
        *,
        container_id: str,
        fleet: str,
        name: str,
    ) -> None:
        self.id, self.fleet, self.name = container_id, fleet, name  # fleet, name: until renamed
        self._source = source
        self._store = store
        self._selection = selection  # the fleet of a container renamed
        self._log = container_log
        self._runs = RunTracker(container_log)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stream: LogStream | None = None
        self._stream_lock = threading.Lock()
        self._framed = True
        self._broken = False  # the last stream ended while the container kept running
        self._failures = 0

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

    def run(self) -> None:
        """Follow until the container is gone or ``stop()``; its name is then released."""
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
        self._store.release(self.fleet, self.name, self.id)

    def _step(self) -> bool:
        """Look at the container and read its log once; True when it is gone."""
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
            self._publish(Tally(), up=False)
            self._wake.wait()
            return False
        if self._broken:
            self._store.reconnected(self.fleet, self.name)
        end = self._read(info.state.running)
        if self._stop.is_set() or end is StreamEnd.GONE:
            return True
        if end is StreamEnd.RESTARTED:
            log.debug("%s: another run began before its stream was read; looking again", self.name)
            self._broken = False  # the run ended: a broken stream of it is no reconnect now
            return False
        if end is StreamEnd.JUMPED:
            # Docker's follow sent old lines again at a rotation, and may have skipped some:
            # read again from the verified point at once (exporter.ledger).
            self._store.add(self.fleet, self.name, self._log.end_stream(run_over=False))
            log.debug("%s: the log stream jumped at a rotation; reading it again", self.name)
            return False
        return self._ended(end)

    def _ended(self, end: StreamEnd) -> bool:
        """Ask the source why the stream ended, then settle its tail; True when it is gone."""
        try:
            after: RunState | None = self._why_ended()
        except ContainerGone:
            self._store.add(self.fleet, self.name, self._log.end_stream(run_over=True))
            self._publish(Tally(), up=False)
            return True
        except SourceError:
            after = None
        run_over = self._runs.stream_ended(after)
        self._store.add(self.fleet, self.name, self._log.end_stream(run_over=run_over))
        if run_over and after is not None:
            self._log.check_run_end(after.started_at, after.finished_at)
        if run_over:
            self._broken = False
            self._failures = 0
        else:
            self._broken = True
            self._failures = 0 if end is StreamEnd.DATA else self._failures + 1
            self._wake.wait(_backoff(self._failures))
        self._publish(Tally(), up=False)
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
            fleet = self._selection.fleet_of(name, {}) or self.fleet
            self._store.release(self.fleet, self.name, self.id)
            log.info("container %s renamed to %s", self.name, name)
            self.fleet, self.name = fleet, name
            self._store.register(self.fleet, self.name)

    def _publish(self, tally: Tally, *, up: bool) -> None:
        """Add ``tally`` and report the run's count and state in one step of the store."""
        self._store.update(
            self.fleet,
            self.name,
            self.id,
            self._runs.started_ns,
            tally,
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

    def _read(self, running: bool) -> StreamEnd:
        """Read one log stream to its end."""
        try:
            stream = self._source.follow(self.id, self._log.resume_ns())
        except ContainerGone:
            return StreamEnd.GONE
        except SourceError as exc:
            log.debug("%s: log stream failed to open: %s", self.name, exc)
            return StreamEnd.ERROR
        with self._stream_lock:
            self._stream = stream
        if self._stop.is_set():
            self.interrupt()
        if self._restarted_since_inspect():
            # A stream opened in a newer run reads the older run's tail and the new run's
            # lines as one, and ends only when the new run does: counted as the old run, the
            # errors since start would never go back to 0. Look at the container again first.
            self._close(stream)
            return StreamEnd.RESTARTED
        self._log.begin_stream(tty=not self._framed)
        self._publish(Tally(), up=running)
        if self._log.cursor is None and stream.lost():
            # From the run's start, where the ledger has no line to miss: the source says.
            self._store.add(self.fleet, self.name, Tally(gaps=1))
            _warn_gap(self.name, self._source.name)
        got_data, error = self._drain(stream, running)
        self._close(stream)
        if error is not None and not self._stop.is_set():
            log.debug("%s: log stream broke: %s", self.name, error)
            return StreamEnd.DATA if got_data else StreamEnd.ERROR
        if self._log.jumped and not self._stop.is_set():
            return StreamEnd.JUMPED
        return StreamEnd.DATA if got_data else StreamEnd.EMPTY

    def _drain(self, stream: LogStream, running: bool) -> tuple[bool, Exception | None]:
        """Count the stream until it ends or jumps: whether anything came, and why it broke."""
        got_data = False
        try:
            while payload := stream.read():
                got_data = True
                for tally in self._log.feed_all(payload):
                    if tally.gaps:
                        _warn_gap(self.name, self._source.name)
                    self._publish(tally, up=running)
                if self._log.jumped:
                    break
        except Exception as exc:  # any failure ends this stream; the caller decides what next
            return got_data, exc
        return got_data, None

    def _close(self, stream: LogStream) -> None:
        with self._stream_lock:
            self._stream = None
        with contextlib.suppress(Exception):  # broken, or nothing read: nothing to release
            stream.close()


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
