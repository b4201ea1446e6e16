"""The Docker adapter: finds the model-server containers and follows their logs.

Driven by Docker's events API, never by polling: one thread reads the events stream and
wakes the follower of the container an event names (or starts one for a container that
appears). Each follower owns one container ID: it inspects the container, attaches its log
stream (``follow``, ``timestamps``, ``since`` at its cursor), counts what arrives, and after
the stream ends inspects again to tell a stopped or restarted container from a broken stream.

Only this module talks to Docker.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import docker
import docker.errors
import requests

from exporter.adapters.chunked import ChunkedDecoder
from exporter.classifier import LogClassifier
from exporter.config import ContainerSelection
from exporter.logstream import ContainerLog, format_since, is_zero_time, parse_timestamp
from exporter.metrics import LogStore

log = logging.getLogger(__name__)

READ_SIZE: Final = 256 * 1024
# Batches handed to the classifier stay cache-sized even when the reader ran ahead.
FEED_SIZE: Final = 64 * 1024
CONNECT_TIMEOUT: Final = 10.0
# A container's first lines can be stamped a few milliseconds before its StartedAt. When the
# end of its previous run is unknown, the run is taken to begin this long before StartedAt;
# Docker needs far longer than this to restart a container.
RUN_START_SLACK_NS: Final = 100_000_000
STOP_GRACE: Final = 0.5
BACKOFF_MIN: Final = 0.1
BACKOFF_MAX: Final = 5.0
EVENTS_BACKOFF_MAX: Final = 30.0
_EVENTS: Final = ("start", "restart", "die", "stop", "destroy", "rename")

_DOCKER_ERRORS: Final = (docker.errors.DockerException, requests.RequestException, OSError)

ClientFactory = Callable[[], Any]


def default_client() -> Any:
    """A Docker client from the environment, with room for one stream per container."""
    return docker.from_env(timeout=30, max_pool_size=128)


class _Follower:
    """Follows one container (one ID) across streams and runs."""

    def __init__(self, watcher: LogWatcher, container_id: str, fleet: str, name: str) -> None:
        self.id = container_id
        self.fleet = fleet
        self.name = name
        self._watcher = watcher
        self._log = ContainerLog(watcher.classifier, watcher.live_since_ns)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._response: Any = None
        self._response_lock = threading.Lock()
        self._run_started: str | None = None
        self._run_started_ns = -1
        self._read_through: tuple[str, str] | None = None
        # FinishedAt values seen, by the StartedAt of the run they were seen with
        self._previous_end: dict[str, int] = {}
        self._own_end: dict[str, int] = {}
        self._tty = False
        self._broken = False  # the last stream ended while the container kept running
        self._failures = 0
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
        with self._response_lock:
            response = self._response
        if response is not None:
            try:
                response.raw.shutdown()
            except (OSError, ValueError, RuntimeError, AttributeError):
                with contextlib.suppress(Exception):  # best effort from another thread
                    response.close()

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
            attrs = self._watcher.client().api.inspect_container(self.id)
        except docker.errors.NotFound:
            return True
        except _DOCKER_ERRORS as exc:
            log.debug("inspect %s failed: %s", self.name, exc)
            self._failures += 1
            self._wake.wait(_backoff(self._failures))  # or until Docker is back (events thread)
            return False
        state = attrs.get("State") or {}
        running = bool(state.get("Running"))
        started = str(state.get("StartedAt") or "")
        finished = str(state.get("FinishedAt") or "")
        self._rename(str(attrs.get("Name") or "").lstrip("/"))
        self._tty = bool((attrs.get("Config") or {}).get("Tty"))
        self._adopt(state, str(attrs.get("Created") or ""))
        if is_zero_time(started) or (not running and self._read_through == (started, finished)):
            # never started, or stopped and read to the end: wait for an event (start, destroy)
            self._report(up=False)
            self._wake.wait()
            return False
        if self._broken:
            store.reconnected(self.fleet, self.name)
        outcome = self._stream(running)
        if self._stop.is_set() or outcome == "gone":
            return True
        # Why did the stream end? Ask Docker before deciding what the tail means.
        try:
            after: dict[str, Any] | None = self._why_ended()
        except docker.errors.NotFound:
            store.add(self.fleet, self.name, self._log.end_stream(run_over=True))
            self._report(up=False)
            return True
        except _DOCKER_ERRORS:
            after = None
        a_state = (after or {}).get("State") or {}
        a_started = str(a_state.get("StartedAt") or "")
        run_over = after is not None and (
            not a_state.get("Running") or a_started != self._run_started
        )
        store.add(self.fleet, self.name, self._log.end_stream(run_over=run_over))
        if run_over:
            if not a_state.get("Running") and a_started == self._run_started:
                self._read_through = (a_started, str(a_state.get("FinishedAt") or ""))
            self._broken = False
            self._failures = 0
        else:
            self._broken = True
            self._failures = 0 if outcome == "data" else self._failures + 1
            self._wake.wait(_backoff(self._failures))
        self._report(up=False)
        return False

    def _why_ended(self) -> dict[str, Any]:
        """Inspect after a stream ended, giving Docker a moment to record a stop."""
        api = self._watcher.client().api

        def same_run(attrs: dict[str, Any]) -> bool:
            state = attrs.get("State") or {}
            return bool(state.get("Running")) and state.get("StartedAt") == self._run_started

        attrs: dict[str, Any] = api.inspect_container(self.id)
        if same_run(attrs):
            # The stream ends as the container exits, a moment before Docker marks it stopped
            # (and then sends the die event): wait for that event, or this long.
            self._wake.clear()
            attrs = api.inspect_container(self.id)
            if same_run(attrs):
                self._wake.wait(STOP_GRACE)
                attrs = api.inspect_container(self.id)
        return attrs

    def _rename(self, name: str) -> None:
        if name and name != self.name:
            fleet = self._watcher.selection.fleet_of(name, {}) or self.fleet
            self._watcher.store.release(self.fleet, self.name, self.id)
            log.info("container %s renamed to %s", self.name, name)
            self.fleet, self.name = fleet, name
            self._watcher.store.register(self.fleet, self.name)

    def _adopt(self, state: dict[str, Any], created: str) -> None:
        """Recognise a new run and where its lines begin: after the previous run's end."""
        started = str(state.get("StartedAt") or "")
        finished = str(state.get("FinishedAt") or "")
        running = bool(state.get("Running"))
        if is_zero_time(started):
            return
        started_ns = parse_timestamp(started)
        finished_ns = None if is_zero_time(finished) else parse_timestamp(finished)
        if finished_ns is not None:
            # While a container runs, FinishedAt is its previous run's end. Once it stopped,
            # FinishedAt is this run's end, even when a run so short that Docker recorded its
            # exit before its start puts FinishedAt before StartedAt.
            ends = self._previous_end if running else self._own_end
            ends[started] = finished_ns
            for d in (self._previous_end, self._own_end):
                while len(d) > 8:
                    del d[next(iter(d))]
        if started == self._run_started:
            return
        boundary: int | None
        earlier = [
            end
            for run, end in self._own_end.items()
            if run != started and parse_timestamp(run) < started_ns
        ]
        if started in self._previous_end:
            boundary = self._previous_end[started]
        elif earlier:
            boundary = max(earlier)  # we saw the previous run end
        elif running:
            boundary = None  # never stopped before: the whole log is this run
        else:
            boundary = self._boundary_from_history(created, started_ns, finished_ns)
        self._log.start_run(boundary)
        self._run_started = started
        self._run_started_ns = started_ns
        log.debug("%s: run started %s, lines after %s count", self.name, started, boundary)

    def _boundary_from_history(
        self, created: str, started_ns: int, finished_ns: int | None
    ) -> int | None:
        """Where the last run of a stopped container began, from Docker's event history.

        Every run ends with a die event, sent after the run's last line; the previous run's
        die is the last one before this run's end. Docker keeps only the last few hundred
        events: without the history, the run is taken to begin shortly before StartedAt.
        """
        fallback = started_ns - RUN_START_SLACK_NS
        if is_zero_time(created) or finished_ns is None:
            return fallback
        try:
            events = self._watcher.client().events(
                since=format_since(parse_timestamp(created)),
                until=format_since(time.time_ns()),
                filters={"type": "container", "container": self.id, "event": ["create", "die"]},
                decode=True,
            )
            history = [
                (str(e.get("Action") or e.get("status")), int(e.get("timeNano") or 0))
                for e in events
            ]
        except _DOCKER_ERRORS as exc:
            log.debug("%s: no event history: %s", self.name, exc)
            return fallback
        before = [t for action, t in history if action == "die" and 0 < t < finished_ns]
        if before:
            return max(before)
        if any(action == "create" for action, _ in history):
            return None  # the history goes back to its creation: this was its only run
        return fallback

    def _report(self, *, up: bool) -> None:
        self._watcher.store.report_run(
            self.fleet,
            self.name,
            self.id,
            self._run_started_ns,
            since_start=self._log.since_start,
            up=up,
            started_at=self._run_started or "",
        )

    def _stream(self, running: bool) -> str:
        """Read one log stream to its end: 'data', 'empty', 'error' or 'gone'."""
        api = self._watcher.client().api
        params: dict[str, Any] = {"stdout": 1, "stderr": 1, "follow": 1, "timestamps": 1}
        since = self._log.since_param()
        if since is not None:
            params["since"] = since
        url = f"{api.base_url}/v{api.api_version}/containers/{self.id}/logs"
        try:
            response = api.get(url, params=params, stream=True, timeout=(CONNECT_TIMEOUT, None))
        except _DOCKER_ERRORS as exc:
            log.debug("%s: log stream failed to open: %s", self.name, exc)
            return "error"
        if response.status_code == 404:
            response.close()
            return "gone"
        if response.status_code >= 400:
            log.debug("%s: logs answered %s", self.name, response.status_code)
            response.close()
            return "error"
        with self._response_lock:
            self._response = response
        if self._stop.is_set():
            self.interrupt()
        self._log.begin_stream(tty=self._tty)
        self._report(up=running)
        got_data = False
        error: BaseException | None = None
        read = _body_reader(response)
        try:
            while payload := read():
                got_data = True
                for start in range(0, len(payload), FEED_SIZE):
                    tally = self._log.feed(payload[start : start + FEED_SIZE])
                    self._watcher.store.update(
                        self.fleet,
                        self.name,
                        self.id,
                        self._run_started_ns,
                        tally,
                        since_start=self._log.since_start,
                        up=running,
                        started_at=self._run_started or "",
                    )
        except Exception as exc:  # any failure ends this stream; the caller decides what next
            error = exc
        with self._response_lock:
            self._response = None
        response.close()
        if error is not None and not self._stop.is_set():
            log.debug("%s: log stream broke: %s", self.name, error)
            return "data" if got_data else "error"
        return "data" if got_data else "empty"


def _body_reader(response: Any) -> Callable[[], bytes]:
    """Returns the next piece of a log stream's body as soon as any arrived; b'' at its end.

    Docker flushes every log frame as its own HTTP chunk. Decoding those one by one through
    urllib3 costs more per line than Docker needs to send it, so when the HTTP stack exposes
    the socket's buffered reader under urllib3's response (where the Docker SDK finds it for
    attached streams too), whole reads of it are decoded here. A quiet container's line
    still arrives at once: ``read1`` returns whatever is there.
    """
    buffered = getattr(getattr(response.raw, "_fp", None), "fp", None)
    read1 = getattr(buffered, "read1", None)
    if response.headers.get("Transfer-Encoding", "").lower() != "chunked" or not callable(read1):
        raw = response.raw
        return lambda: bytes(raw.read1(READ_SIZE))
    decoder = ChunkedDecoder()

    def read() -> bytes:
        while not decoder.done:
            data = read1(READ_SIZE)
            if not data:
                return b""
            payload = decoder.feed(data)
            if payload:
                return payload
        return b""

    return read


def _backoff(failures: int) -> float:
    if failures <= 0:
        return 0.0
    return float(min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (failures - 1)))


class LogWatcher:
    """Watches the selected containers' logs into a LogStore, until stopped."""

    def __init__(
        self,
        selection: ContainerSelection,
        classifier: LogClassifier,
        store: LogStore,
        *,
        client_factory: ClientFactory = default_client,
        live_since_ns: int | None = None,
    ) -> None:
        self.selection = selection
        self.classifier = classifier
        self.store = store
        self.live_since_ns = time.time_ns() if live_since_ns is None else live_since_ns
        self._client_factory = client_factory
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._followers: dict[str, _Follower] = {}
        self._followers_lock = threading.Lock()
        self._stopping = threading.Event()
        self._events: Any = None
        self._thread = threading.Thread(target=self._main, name="docker-events", daemon=True)
        self._docker_up = False
        self._down_reason: str | None = None
        self._names: dict[str, str | None] = {}
        self.ready = threading.Event()  # set once the first container listing was handled
        for name, fleet in selection.names.items():
            store.register(fleet, name, expected=True)

    @property
    def docker_up(self) -> bool:
        """True while the events stream is connected."""
        return self._docker_up

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
        for f in followers:
            f.stop()
        deadline = time.monotonic() + timeout
        for f in followers:
            f.thread.join(max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # best effort at shutdown
                client.close()

    def client(self) -> Any:
        """The shared Docker client (created on first use)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def watched(self) -> dict[str, tuple[str, str]]:
        """Container ID -> (fleet, name) of every container being followed."""
        with self._followers_lock:
            return {cid: (f.fleet, f.name) for cid, f in self._followers.items()}

    def interrupt(self, name: str) -> bool:
        """Break the log stream of the container called ``name`` (it reattaches by itself)."""
        with self._followers_lock:
            followers = [f for f in self._followers.values() if f.name == name]
        for f in followers:
            f.interrupt()
        return bool(followers)

    def container_name(self, container_id: str) -> str | None:
        """The name of a container (for GPU processes); None when Docker cannot say."""
        with self._followers_lock:
            f = self._followers.get(container_id)
        if f is not None:
            return f.name
        if container_id in self._names:
            return self._names[container_id]
        if not self._docker_up:
            return None
        try:
            attrs = self.client().api.inspect_container(container_id)
            name: str | None = str(attrs.get("Name") or "").lstrip("/") or None
        except docker.errors.NotFound:
            name = None
        except _DOCKER_ERRORS:
            return None
        if len(self._names) > 1024:
            self._names.clear()
        self._names[container_id] = name
        return name

    def forget(self, follower: _Follower) -> None:
        """A follower ended (its container is gone, or the watcher stops)."""
        with self._followers_lock:
            if self._followers.get(follower.id) is follower:
                del self._followers[follower.id]

    # --- the events thread ---------------------------------------------------------------------

    def _main(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                client = self.client()
                # Subscribe first, then list: whatever changes after the listing is an event.
                events = client.events(decode=True, filters={"type": "container"})
                self._events = events
                if self._stopping.is_set():
                    events.close()
                    break
                self._sync(client)
                self._set_up(True)
                failures = 0
                for event in events:
                    self._on_event(event)
                if not self._stopping.is_set():
                    raise ConnectionError("the Docker events stream ended")
            except Exception as exc:  # whatever broke the events stream: connect again
                if self._stopping.is_set():
                    break
                if not isinstance(exc, (*_DOCKER_ERRORS, ConnectionError)):
                    log.debug("events stream failed", exc_info=True)
                self._set_up(False, f"{type(exc).__name__}: {exc}")
                with self._client_lock:
                    self._client = None  # a fresh client after the daemon comes back
                failures += 1
                self._stopping.wait(min(EVENTS_BACKOFF_MAX, 2.0 ** (failures - 1)))
        self._set_up(False)

    def _set_up(self, up: bool, reason: str | None = None) -> None:
        if up and not self._docker_up:
            if self._down_reason is not None:
                log.info("Docker is reachable again")
            self._down_reason = None
        elif not up and reason is not None and reason != self._down_reason:
            # logged once per cause, not at every retry
            log.warning("Docker is not reachable (%s); log metrics pause until it is", reason)
            self._down_reason = reason
        self._docker_up = up
        if up:
            self.ready.set()

    def _sync(self, client: Any) -> None:
        for c in client.api.containers(all=True):
            cid = str(c.get("Id"))
            names = c.get("Names") or []
            name = str(names[0]).lstrip("/") if names else cid[:12]
            fleet = self.selection.fleet_of(name, c.get("Labels") or {})
            if fleet is not None:
                self._follow(cid, fleet, name)
        with self._followers_lock:
            followers = list(self._followers.values())
        for f in followers:
            f.wake()  # events may have been missed while disconnected

    def _on_event(self, event: dict[str, Any]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        if action not in _EVENTS:
            return
        actor = event.get("Actor") or {}
        cid = str(actor.get("ID") or event.get("id") or "")
        with self._followers_lock:
            follower = self._followers.get(cid)
        if follower is not None:
            follower.wake()
            return
        if action in ("start", "restart", "rename"):
            attrs = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
            name = attrs.pop("name", cid[:12])
            fleet = self.selection.fleet_of(name, attrs)
            if fleet is not None:
                self._follow(cid, fleet, name)

    def _follow(self, cid: str, fleet: str, name: str) -> None:
        with self._followers_lock:
            follower = self._followers.get(cid)
            if follower is None:
                if self._stopping.is_set():
                    return
                follower = _Follower(self, cid, fleet, name)
                self._followers[cid] = follower
                self.store.register(fleet, name)
                log.info("following the log of %s (fleet %s)", name, fleet)
                follower.thread.start()
                return
        follower.wake()
