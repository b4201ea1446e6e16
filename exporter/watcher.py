"""The log watcher: follows the selected containers' logs from a LogSource into a LogStore.

Driven by the source's events, never by polling: one thread reads the events stream and wakes
the follower of the container an event names (or starts one for a container that appears).
Each follower (exporter.follower) owns one container ID and reads its log across streams and
runs. Only the source (exporter.logsource) knows which runtime it talks to.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Final, NamedTuple

from exporter.classifier import LogClassifier
from exporter.config import ContainerSelection
from exporter.containerlog import ContainerLog
from exporter.follower import Follower
from exporter.incidents import DEFAULT_WINDOW_SECONDS, window_ns
from exporter.logsource import (
    EVENT_ACTIONS,
    ContainerEvent,
    ContainerGone,
    EventStream,
    LogSource,
    SourceError,
)
from exporter.metrics import LogStore

log = logging.getLogger(__name__)

EVENTS_BACKOFF_MAX: Final = 30.0


class _Followed(NamedTuple):
    follower: Follower
    thread: threading.Thread  # runs ``follower.run``, then forgets it


class LogWatcher:
    """Watches the selected containers' logs from ``source`` into a LogStore, until stopped."""

    def __init__(
        self,
        selection: ContainerSelection,
        classifier: LogClassifier,
        store: LogStore,
        source: LogSource,
        *,
        live_since_ns: int | None = None,
        incident_window_seconds: float = DEFAULT_WINDOW_SECONDS,
    ) -> None:
        self.ready = threading.Event()  # set once the first container listing was handled
        self._selection = selection
        self._classifier = classifier
        self._store = store
        self._source = source
        self._live_since_ns = time.time_ns() if live_since_ns is None else live_since_ns
        # matching lines this close to an incident's first line are part of it
        self._window_ns = window_ns(incident_window_seconds)
        self._followers: dict[str, _Followed] = {}
        self._followers_lock = threading.Lock()
        self._stopping = threading.Event()
        self._events: EventStream | None = None
        self._thread = threading.Thread(target=self._main, name="log-events", daemon=True)
        self._source_up = False
        self._down_reason: str | None = None
        self._names: dict[str, str | None] = {}
        for name, fleet in selection.names.items():
            store.register(fleet, name, expected=True)

    @property
    def source_up(self) -> bool:
        """True while the source's events stream is connected."""
        return self._source_up

    def start(self) -> None:
        """Connect (in the background, retrying) and start following."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every stream and thread; returns within about ``timeout`` seconds."""
        self._stopping.set()
        events = self._events
        if events is not None:
            with contextlib.suppress(Exception):  # the stream may already be gone
                events.close()
        with self._followers_lock:
            followers = list(self._followers.values())
        for f, _ in followers:
            f.stop()
        deadline = time.monotonic() + timeout
        for _, thread in followers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):  # best effort at shutdown
            self._source.close()

    def watched(self) -> dict[str, tuple[str, str]]:
        """Container ID -> (fleet, name) of every container being followed."""
        with self._followers_lock:
            return {cid: (f.fleet, f.name) for cid, (f, _) in self._followers.items()}

    def interrupt(self, name: str) -> bool:
        """Break the log stream of the container called ``name`` (it reattaches by itself)."""
        with self._followers_lock:
            followers = [f for f, _ in self._followers.values() if f.name == name]
        for f in followers:
            f.interrupt()
        return bool(followers)

    def container_name(self, container_id: str) -> str | None:
        """The name of a container (for GPU processes); None when the source cannot say."""
        with self._followers_lock:
            followed = self._followers.get(container_id)
        if followed is not None:
            return followed.follower.name
        if container_id in self._names:
            return self._names[container_id]
        if not self._source_up:
            return None
        try:
            name: str | None = self._source.inspect(container_id).name or None
        except ContainerGone:
            name = None
        except SourceError:
            return None
        if len(self._names) > 1024:
            self._names.clear()
        self._names[container_id] = name
        return name

    def _run(self, follower: Follower) -> None:
        """A follower's thread: it runs until its container is gone or the watcher stops."""
        follower.run()
        with self._followers_lock:
            followed = self._followers.get(follower.id)
            if followed is not None and followed.follower is follower:
                del self._followers[follower.id]

    # --- the events thread ---------------------------------------------------------------------

    def _main(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                # Subscribe first, then list: whatever changes after the listing is an event.
                events = self._source.events()
                self._events = events
                if self._stopping.is_set():
                    events.close()
                    break
                self._sync()
                self._set_up(True)
                failures = 0
                for event in events:
                    self._on_event(event)
                if not self._stopping.is_set():
                    raise ConnectionError(f"the {self._source.name} events stream ended")
            except Exception as exc:  # whatever broke the events stream: connect again
                if self._stopping.is_set():
                    break
                if not isinstance(exc, (SourceError, ConnectionError)):
                    log.debug("events stream failed", exc_info=True)
                self._set_up(False, f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(Exception):  # a fresh connection after it comes back
                    self._source.reset()
                failures += 1
                self._stopping.wait(min(EVENTS_BACKOFF_MAX, 2.0 ** (failures - 1)))
        self._set_up(False)

    def _set_up(self, up: bool, reason: str | None = None) -> None:
        if up and not self._source_up:
            if self._down_reason is not None:
                log.info("%s is reachable again", self._source.name)
            self._down_reason = None
        elif not up and reason is not None and reason != self._down_reason:
            # logged once per cause, not at every retry
            log.warning(
                "%s is not reachable (%s); log metrics pause until it is", self._source.name, reason
            )
            self._down_reason = reason
        self._source_up = up
        if up:
            self.ready.set()

    def _sync(self) -> None:
        for c in self._source.containers():
            fleet = self._selection.fleet_of(c.name, c.labels)
            if fleet is not None:
                self._follow(c.id, fleet, c.name)
        with self._followers_lock:
            followers = [f for f, _ in self._followers.values()]
        for f in followers:
            f.wake()  # events may have been missed while disconnected

    def _on_event(self, event: ContainerEvent) -> None:
        if event.action not in EVENT_ACTIONS:
            return
        c = event.container
        with self._followers_lock:
            followed = self._followers.get(c.id)
        if followed is not None:
            followed.follower.wake()
            return
        if event.action in ("start", "restart", "rename"):
            fleet = self._selection.fleet_of(c.name, c.labels)
            if fleet is not None:
                self._follow(c.id, fleet, c.name)

    def _follow(self, cid: str, fleet: str, name: str) -> None:
        with self._followers_lock:
            followed = self._followers.get(cid)
            if followed is None:
                if self._stopping.is_set():
                    return
                counted = ContainerLog(self._classifier, self._live_since_ns, self._window_ns)
                follower = Follower(
                    self._source,
                    self._store,
                    self._selection,
                    counted,
                    container_id=cid,
                    fleet=fleet,
                    name=name,
                )
                thread = threading.Thread(
                    target=self._run, args=(follower,), name=f"logs-{name}", daemon=True
                )
                self._followers[cid] = _Followed(follower, thread)
                self._store.register(fleet, name)
                log.info("following the log of %s (fleet %s)", name, fleet)
                thread.start()
                return
        followed.follower.wake()
