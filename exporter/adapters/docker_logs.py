"""The Docker engine as a LogSource: containers, events, states and log streams.

Only this module (with exporter.adapters.chunked) talks to Docker. Log streams are
``GET /containers/{id}/logs`` with ``follow``, ``timestamps`` and a nanosecond ``since``, sent
on a socket of their own to the engine the client talks to (a unix socket or plain TCP); only
a TLS or SSH engine's streams go through the Docker SDK's session, at about half the speed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import docker
import docker.errors
import requests

from exporter.adapters.chunked import (
    Endpoint,
    HTTPStatusError,
    SocketStream,
    body_reader,
    open_get,
)
from exporter.logsource import (
    ContainerEvent,
    ContainerGone,
    ContainerInfo,
    ContainerRef,
    SourceError,
)
from exporter.runs import RunState
from exporter.timestamps import format_since

log = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 10.0
DEFAULT_SOCKET: Final = "unix:///var/run/docker.sock"
_DOCKER_ERRORS: Final = (docker.errors.DockerException, requests.RequestException, OSError)

_HISTORY: Final = ["create", "die"]

ClientFactory = Callable[[], Any]


def engine_endpoint(api: Any) -> Endpoint | None:
    """Where the client's engine listens on a plain socket; None for TLS and SSH engines.

    Unix sockets sit behind the SDK's ``http+docker://localhost`` URL: requests' public
    ``get_adapter`` gives the SDK's adapter for it, which names its ``socket_path``; were that
    gone, DOCKER_HOST (or Docker's default socket) names it as it did for ``from_env``. The
    socket test in tests/test_exporter_docker.py fails if neither finds the engine.
    """
    base = str(api.base_url)
    url = urlsplit(base)
    if url.scheme == "http" and url.hostname:
        return Endpoint(host=url.hostname, port=url.port or 80)
    if base != "http+docker://localhost":
        return None
    path = getattr(api.get_adapter(base), "socket_path", None)
    if isinstance(path, str) and path:
        return Endpoint(unix_path=path)
    host = os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
    return Endpoint(unix_path=host.removeprefix("unix://")) if host.startswith("unix://") else None


def default_client() -> Any:
    """A Docker client from the environment, with room for one stream per container."""
    return docker.from_env(timeout=30, max_pool_size=128)


@contextlib.contextmanager
def _answers() -> Iterator[None]:
    """Docker's failures as the LogSource protocol names them."""
    try:
        yield
    except docker.errors.NotFound as exc:
        raise ContainerGone(str(exc)) from exc
    except _DOCKER_ERRORS as exc:
        raise SourceError(f"{type(exc).__name__}: {exc}") from exc


class _Events:
    """Docker's container events stream as ContainerEvents."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[ContainerEvent]:
        with _answers():
            for event in self._stream:
                actor = event.get("Actor") or {}
                cid = str(actor.get("ID") or event.get("id") or "")
                attrs = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
                name = attrs.pop("name", cid[:12])
                action = str(event.get("Action") or event.get("status") or "")
                yield ContainerEvent(action, ContainerRef(cid, name, attrs))

    def close(self) -> None:
        """Stop the stream (from another thread too)."""
        self._stream.close()


class _LogStream:
    """One streamed logs response."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self.read: Callable[[], bytes] = body_reader(response)

    def interrupt(self) -> None:
        """Shut the connection down under the reader, which then sees the end."""
        try:
            self._response.raw.shutdown()
        except (OSError, ValueError, RuntimeError, AttributeError):
            with contextlib.suppress(Exception):  # best effort from another thread
                self._response.close()

    def close(self) -> None:
        """Release the connection."""
        self._response.close()

    def lost(self) -> bool:
        """Docker's logs API never says (the ledger finds a log that no longer reaches back)."""
        return False


class DockerLogSource:
    """The LogSource of one Docker engine (the client is made on first use, again after reset)."""

    name = "Docker"

    def __init__(self, client_factory: ClientFactory = default_client) -> None:
        self._client_factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()
        self._said_slow = False

    def _docker(self) -> Any:
        with self._lock:
            if self._client is None:
                with _answers():
                    self._client = self._client_factory()
            return self._client

    def events(self) -> _Events:
        """Subscribe to container events."""
        with _answers():
            return _Events(self._docker().events(decode=True, filters={"type": "container"}))

    def containers(self) -> list[ContainerRef]:
        """Every container, running or not."""
        with _answers():
            listing = self._docker().api.containers(all=True)
        refs = []
        for c in listing:
            cid = str(c.get("Id"))
            names = c.get("Names") or []
            name = str(names[0]).lstrip("/") if names else cid[:12]
            labels: Mapping[str, str] = c.get("Labels") or {}
            refs.append(ContainerRef(cid, name, labels))
        return refs

    def inspect(self, container_id: str) -> ContainerInfo:
        """Name, state and framing of one container."""
        with _answers():
            attrs = self._docker().api.inspect_container(container_id)
        state = attrs.get("State") or {}
        return ContainerInfo(
            id=container_id,
            name=str(attrs.get("Name") or "").lstrip("/"),
            state=RunState(
                running=bool(state.get("Running")),
                started_at=str(state.get("StartedAt") or ""),
                finished_at=str(state.get("FinishedAt") or ""),
            ),
            created=str(attrs.get("Created") or ""),
            framed=not (attrs.get("Config") or {}).get("Tty"),
        )

    def follow(self, container_id: str, since_ns: int | None) -> _LogStream | SocketStream:
        """Stream the container's log from ``since_ns`` (inclusive), following."""
        api = self._docker().api
        params: dict[str, Any] = {"stdout": 1, "stderr": 1, "follow": 1, "timestamps": 1}
        if since_ns is not None:
            params["since"] = format_since(since_ns)
        path = f"/v{api.api_version}/containers/{container_id}/logs"
        endpoint = engine_endpoint(api)
        if endpoint is None:
            self._say_slow_once(str(api.base_url))
            return self._follow_session(api, container_id, path, params)
        try:
            return open_get(endpoint, f"{path}?{urlencode(params)}", CONNECT_TIMEOUT)
        except HTTPStatusError as exc:
            if exc.status == 404:
                raise ContainerGone(f"{container_id}: {exc.message}") from exc
            raise SourceError(f"{container_id}: logs answered {exc}") from exc
        except OSError as exc:
            raise SourceError(f"{type(exc).__name__}: {exc}") from exc

    def _say_slow_once(self, base_url: str) -> None:
        with self._lock:
            said, self._said_slow = self._said_slow, True
        if not said:
            log.info(
                "Docker at %s is not a plain socket (TLS or SSH): log streams are read "
                "through the Docker SDK, at about half the speed of `docker logs`",
                base_url,
            )

    @staticmethod
    def _follow_session(
        api: Any, container_id: str, path: str, params: dict[str, Any]
    ) -> _LogStream:
        with _answers():
            response = api.get(
                f"{api.base_url}{path}", params=params, stream=True, timeout=(CONNECT_TIMEOUT, None)
            )
        if response.status_code >= 400:
            response.close()
            if response.status_code == 404:
                raise ContainerGone(f"{container_id}: no such container")
            raise SourceError(f"{container_id}: logs answered {response.status_code}")
        return _LogStream(response)

    def history(self, container_id: str, since_ns: int) -> list[tuple[str, int]]:
        """The container's create and die events since ``since_ns``, oldest first."""
        with _answers():
            events = self._docker().events(
                since=format_since(since_ns),
                until=format_since(time.time_ns()),
                filters={
                    "type": "container",
                    "container": container_id,
                    "event": ["create", "die"],
                },
                decode=True,
            )
            return [
                (str(e.get("Action") or e.get("status")), int(e.get("timeNano") or 0))
                for e in events
            ]

    def reset(self) -> None:
        """Forget the client: the next call makes a fresh one (streams open on it go on)."""
        with self._lock:
            self._client = None

    def close(self) -> None:
        """Close the client."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # best effort at shutdown
                client.close()
