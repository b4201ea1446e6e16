"""The exporter's seam to a container runtime's logs: the LogSource protocol and its records.

The watcher (exporter.watcher) follows containers through this protocol only; the Docker
engine implements it in exporter.adapters.docker_logs. A source lists the containers, streams
their lifecycle events, tells a container's state, and follows its log with timestamps from a
point in time. Its ``since`` is inclusive, to the nanosecond: the log's cursor rests on that
(exporter.containerlog).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from exporter.runs import RunState

# The events that can change what a follower reads: a run starts or ends, a name changes.
EVENT_ACTIONS: Final = frozenset({"start", "restart", "die", "stop", "destroy", "rename"})


class SourceError(Exception):
    """The source did not answer (its daemon is down, a stream failed to open)."""


class ContainerGone(SourceError):
    """The container does not exist (any more)."""


@dataclass(frozen=True)
class ContainerRef:
    """A container as a listing or an event names it."""

    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerInfo:
    """What the source says about one container now."""

    id: str
    name: str
    state: RunState
    created: str = ""  # RFC 3339; empty when unknown
    # True: the log comes as Docker's frames (8-byte header per message); False: as plain
    # timestamped lines (a TTY container, or a source without frames).
    framed: bool = True


@dataclass(frozen=True)
class ContainerEvent:
    """A lifecycle event (one of EVENT_ACTIONS) of one container."""

    action: str
    container: ContainerRef


class LogStream(Protocol):
    """One open log stream: ``<RFC 3339 timestamp> <message>`` per line, framed or not."""

    def read(self) -> bytes:
        """The next piece (split anywhere) as soon as any arrived; b'' at the end.

        It ends when the container stops, when interrupted, or when the connection breaks
        (then it may also raise).
        """
        ...

    def interrupt(self) -> None:
        """End the stream now; safe from another thread (the reader then sees its end)."""
        ...

    def lost(self) -> bool:
        """The source knows the log no longer reaches back to where this stream began (a
        vacuumed journal); False when it cannot tell (Docker: the ledger finds such gaps)."""
        ...

    def close(self) -> None:
        """Release the stream (the reader's thread, once done)."""
        ...


class EventStream(Protocol):
    """The source's container events, as they happen, until closed or broken."""

    def __iter__(self) -> Iterator[ContainerEvent]: ...

    def close(self) -> None:
        """Stop the stream; safe from another thread."""
        ...


class LogSource(Protocol):
    """Where containers, their states, events and logs come from (Docker in production)."""

    name: str  # for log messages: "Docker is not reachable"

    def events(self) -> EventStream:
        """Subscribe to container events (before listing: what changes after is an event)."""
        ...

    def containers(self) -> Sequence[ContainerRef]:
        """Every container, running or not, with its labels."""
        ...

    def inspect(self, container_id: str) -> ContainerInfo:
        """The container's name, run state and log framing; ContainerGone when it is gone."""
        ...

    def follow(self, container_id: str, since_ns: int | None) -> LogStream:
        """Its log from ``since_ns`` (inclusive; None: from the start), following new lines."""
        ...

    def history(self, container_id: str, since_ns: int) -> Sequence[tuple[str, int]]:
        """Its create and die events since ``since_ns`` as (action, time in ns), oldest first."""
        ...

    def reset(self) -> None:
        """Drop the connection; the next call connects afresh (after the daemon came back)."""
        ...

    def close(self) -> None:
        """Release every connection (at shutdown)."""
        ...
