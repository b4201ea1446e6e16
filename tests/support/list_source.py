"""A LogSource held in lists, for tests: containers, runs, lines and events without Docker.

The test drives it (create, start, emit, stop, remove, go down); the watcher reads it through
the LogSource protocol only. Time is a counter that every operation advances by one tick (a
microsecond unless the test chooses another), so lines, starts and stops are ordered and exact.
Log streams are unframed (``<timestamp> <message>`` lines), follow the run they were opened in,
and end when it stops; ``since`` is inclusive, as Docker's.
"""

from __future__ import annotations

import calendar
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from exporter.logsource import (
    ContainerEvent,
    ContainerGone,
    ContainerInfo,
    ContainerRef,
    SourceError,
)
from exporter.runs import RunState

NEVER = "0001-01-01T00:00:00Z"
START_NS = calendar.timegm((2026, 3, 2, 14, 20, 0)) * 1_000_000_000
TICK_NS = 1000


def stamp(ns: int) -> str:
    """RFC 3339 with nanoseconds, as Docker writes it."""
    date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    return f"{date}.{ns % 1_000_000_000:09d}Z"


@dataclass
class _Container:
    ref: ContainerRef
    created_ns: int
    running: bool = False
    run: int = 0  # how many times it started
    started_at: str = NEVER
    finished_at: str = NEVER
    lines: list[tuple[int, bytes]] = field(default_factory=list)  # (ns, message with newline)


class _Stream:
    def __init__(self, source: ListLogSource, c: _Container, since_ns: int | None) -> None:
        self._source = source
        self._c = c
        self._run = c.run
        self._pos = (
            0
            if since_ns is None
            else next((i for i, (ns, _) in enumerate(c.lines) if ns >= since_ns), len(c.lines))
        )
        self._ended = False

    def read(self) -> bytes:
        with self._source.changed:
            while True:
                if self._ended:
                    return b""
                if self._pos < len(self._c.lines):
                    lines = self._c.lines[self._pos :]
                    self._pos = len(self._c.lines)
                    return b"".join(stamp(ns).encode() + b" " + msg for ns, msg in lines)
                if not self._c.running or self._c.run != self._run or self._source.down:
                    return b""
                self._source.changed.wait()

    def interrupt(self) -> None:
        with self._source.changed:
            self._ended = True
            self._source.changed.notify_all()

    def close(self) -> None:
        self.interrupt()

    def lost(self) -> bool:
        return False


class _Events:
    def __init__(self, source: ListLogSource) -> None:
        self._source = source
        self._next = len(source.event_log)
        self._closed = False

    def __iter__(self) -> Iterator[ContainerEvent]:
        source = self._source
        while True:
            with source.changed:
                while not self._closed and not source.down and self._next >= len(source.event_log):
                    source.changed.wait()
                if self._closed:
                    return
                if source.down:
                    raise SourceError("the list source went down")
                event = source.event_log[self._next]
                self._next += 1
            yield event

    def close(self) -> None:
        with self._source.changed:
            self._closed = True
            self._source.changed.notify_all()


class ListLogSource:
    """An in-memory LogSource, driven by the test."""

    name = "The list source"

    def __init__(self, tick_ns: int = TICK_NS) -> None:
        self.changed = threading.Condition()
        self.now_ns = START_NS
        self.tick_ns = tick_ns
        self.down = False
        self.event_log: list[ContainerEvent] = []
        self._history: list[tuple[str, str, int]] = []  # (container id, action, ns)
        self._containers: dict[str, _Container] = {}
        # Called (once) when a stream is next opened, before it is: what happens between the
        # follower's look at the container and its stream (a restart, say).
        self.before_next_follow: Callable[[], None] | None = None

    # --- what the test does --------------------------------------------------------------------

    def tick(self) -> int:
        """Advance the clock; the new time in ns."""
        self.now_ns += self.tick_ns
        return self.now_ns

    def pause(self, ns: int) -> None:
        """Time passes: the next operation happens ``ns`` later (plus its tick)."""
        with self.changed:
            self.now_ns += ns

    def create(self, cid: str, name: str, labels: Mapping[str, str]) -> None:
        """A new container, not started."""
        with self.changed:
            self._containers[cid] = _Container(ContainerRef(cid, name, dict(labels)), self.tick())
            self._event(cid, "create")

    def start(self, cid: str) -> str:
        """Start a run; its StartedAt."""
        with self.changed:
            c = self._containers[cid]
            c.running, c.run, c.started_at = True, c.run + 1, stamp(self.tick())
            self._event(cid, "start")
            return c.started_at

    def emit(self, cid: str, *messages: str, same_instant: bool = False) -> None:
        """The container prints ``messages`` (one timestamp for all if ``same_instant``)."""
        with self.changed:
            c = self._containers[cid]
            ns = self.tick()
            for msg in messages:
                c.lines.append((ns, msg.encode() + b"\n"))
                if not same_instant:
                    ns = self.tick()
            self.changed.notify_all()

    def stop(self, cid: str) -> None:
        """The run ends (its streams end after their last line)."""
        with self.changed:
            c = self._containers[cid]
            c.running, c.finished_at = False, stamp(self.tick())
            self._event(cid, "die")

    def remove(self, cid: str) -> None:
        """The container is gone."""
        with self.changed:
            c = self._containers.pop(cid)
            c.running = False
            self._event(cid, "destroy", c.ref)

    def set_down(self, down: bool) -> None:
        """The source stops (or starts again) answering."""
        with self.changed:
            self.down = down
            self.changed.notify_all()

    def _event(self, cid: str, action: str, ref: ContainerRef | None = None) -> None:
        ref = ref or self._containers[cid].ref
        self._history.append((cid, action, self.now_ns))
        self.event_log.append(ContainerEvent(action, ref))
        self.changed.notify_all()

    # --- the LogSource protocol ------------------------------------------------------------------

    def _get(self, cid: str) -> _Container:
        if self.down:
            raise SourceError("the list source is down")
        c = self._containers.get(cid)
        if c is None:
            raise ContainerGone(cid)
        return c

    def events(self) -> _Events:
        with self.changed:
            if self.down:
                raise SourceError("the list source is down")
            return _Events(self)

    def containers(self) -> list[ContainerRef]:
        with self.changed:
            if self.down:
                raise SourceError("the list source is down")
            return [c.ref for c in self._containers.values()]

    def inspect(self, container_id: str) -> ContainerInfo:
        with self.changed:
            c = self._get(container_id)
            state = RunState(c.running, c.started_at, c.finished_at)
            return ContainerInfo(c.ref.id, c.ref.name, state, stamp(c.created_ns), framed=False)

    def follow(self, container_id: str, since_ns: int | None) -> _Stream:
        with self.changed:
            hook, self.before_next_follow = self.before_next_follow, None
            if hook is not None:
                hook()
            return _Stream(self, self._get(container_id), since_ns)

    def history(self, container_id: str, since_ns: int) -> list[tuple[str, int]]:
        with self.changed:
            return [
                (a, ns) for cid, a, ns in self._history if cid == container_id and ns >= since_ns
            ]

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass
