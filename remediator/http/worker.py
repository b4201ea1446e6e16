"""gunicorn's gthread worker with a read timeout: a client that stalls holds no thread for long.

gunicorn's gthread worker waits in its poller only for a connection's *first* bytes; once any
arrive it gives the connection a thread, which then blocks reading the rest of the request with
no timeout. A client that sends half a request and stalls (a request line and one header, or
part of a body) held a thread until it hung up, and as many such clients as threads stopped
the service (``/healthz`` included). :class:`ReadTimeoutWorker` changes two things:

- a thread is given only to a request that is here whole: the head, and a body of up to
  :data:`EARLY_BYTES`. What has come of it is read without waiting and kept on the connection
  (handed back to gunicorn's parser when it is whole); meanwhile the connection waits in the
  worker's poller, as gunicorn's deferred connections do. It is dropped when it sends nothing
  for ``keepalive`` seconds (gunicorn's own limit for those), when the request has not come
  whole :data:`READ_TIMEOUT_SECONDS` after its first bytes (a client that trickles a byte now
  and then), or when the client hangs up half-way;
- every socket operation of a thread serving the connection (a larger body, the answer) has
  the timeout :data:`READ_TIMEOUT_SECONDS`: a body that stalls is answered 400
  (``remediator.http.body``) and lets go of its thread by then.

It also serves the two requests that a storm is made of on the worker's own loop, with no
thread at all: an Alertmanager delivery (``POST /webhook/alertmanager``) and ``/healthz``,
when the whole request (head and declared body) has already been read. Both answer at once
without waiting for anything (the webhook takes a fleet's lock without waiting and hands the
switch to the service's background pool), so serving them inline costs the loop their own
half a millisecond, and saves what a thread costs them: the hand-off to a pool thread, and 64
threads of one process taking turns at one GIL. In a storm of 50 concurrent deliveries that
turn-taking, not the work, was the tail (BENCHMARKS.md, "Webhook storm"). Every other request
(manual switches that wait for their switch, ``/status``, ``/metrics``, a notification
forwarded to a sink, anything whose body is still arriving) gets a pool thread as before.
"""

from __future__ import annotations

import re
import socket
import time
from concurrent import futures
from typing import Any, Final

from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import _DEFER, TConn, ThreadWorker

# Alertmanager, Prometheus and the CLI send a request in one go; 10 s without progress is far
# beyond a loaded machine's or a LAN's pauses, and short enough that stalled clients give
# back their threads before many more can pile up (docs/configuration.md, "Slow clients").
READ_TIMEOUT_SECONDS: Final = 10.0
# A request whose head and body fit here gets a thread only once it is all here (a waiting
# connection keeps at most this much). Deliveries of a few alerts take a few KiB; a larger body
# is read by a thread under READ_TIMEOUT_SECONDS.
EARLY_BYTES: Final = 65536

_CONTENT_LENGTH: Final = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)", re.IGNORECASE)
# The requests served on the worker's loop: they never wait for anything (see above).
_INLINE: Final = re.compile(rb"(?:(?:GET|HEAD) /healthz|POST /webhook/alertmanager)[ ?]")
_CHUNKED: Final = re.compile(rb"\r\ntransfer-encoding[ \t]*:", re.IGNORECASE)


def request_is_whole(data: bytes, window: int = EARLY_BYTES) -> bool:
    """Whether a request that began with ``data`` (at most ``window`` bytes) can be served now:
    ``data`` holds its whole head and body, or the request is larger than ``window`` (gunicorn's
    own limits and the read timeout apply then), or ``data`` is empty: the client closed."""
    if not data:
        return True  # closed: gunicorn reads the end and lets go
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) >= window
    length = _CONTENT_LENGTH.search(data, 0, end + 2)
    if length is None:
        return True  # no body, or a chunked one (read under the timeout, cut at its limit)
    whole = end + 4 + int(length.group(1))
    return whole > window or len(data) >= whole


def served_inline(data: bytes) -> bool:
    """Whether a request that began with ``data`` is served on the worker's loop: it is an
    Alertmanager delivery or ``/healthz``, and all of it (head and declared body) is in
    ``data``, so serving it reads nothing more from the client."""
    if not _INLINE.match(data):
        return False
    end = data.find(b"\r\n\r\n")
    if end < 0 or _CHUNKED.search(data, 0, end + 2):
        return False
    length = _CONTENT_LENGTH.search(data, 0, end + 2)
    return len(data) == end + 4 + (int(length.group(1)) if length else 0)


class ReadTimeoutConn(TConn):  # type: ignore[misc]
    """A connection that keeps the start of its unfinished request, and whose socket operations
    time out while a thread serves it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.early = b""  # the request's bytes read before it was whole
        self.waiting_since: float | None = None  # when they began to arrive

    def init(self) -> None:
        """As gunicorn's, then the bytes read early go back to the parser, and the timeout is
        set (on every request: gunicorn makes the socket blocking, with none, before each)."""
        super().init()
        if self.early:
            self.parser.unreader.unread(self.early)
            self.early = b""
        self.sock.settimeout(READ_TIMEOUT_SECONDS)


class ReadTimeoutWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, with a thread only for a request that is here whole, and a read timeout."""

    def accept(self, listener: socket.socket) -> None:
        """As gunicorn's ``accept``, with a :class:`ReadTimeoutConn`."""
        try:
            client_sock, client_addr = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up
        self.nr_conns += 1
        client_sock.setblocking(True)
        conn = ReadTimeoutConn(self.cfg, client_sock, client_addr, listener.getsockname())
        self.enqueue_req(conn)

    def enqueue_req(self, conn: ReadTimeoutConn) -> None:
        """On the worker's loop: read what has come of the request without waiting, then serve
        it here (:func:`served_inline`) or on a pool thread when it is whole; else back to the
        poller, or drop it when it has taken longer than the read timeout or the client hung up
        before it was whole."""
        why = self._read_early(conn)
        if why is None:
            conn.waiting_since = None
            conn.data_ready = True  # gunicorn would wait for bytes this worker already read
            if served_inline(conn.early):
                self.finish_request(conn, _done(super().handle(conn)))
            else:
                fs = self.tpool.submit(super().handle, conn)
                fs.add_done_callback(
                    lambda fut: self.method_queue.defer(self.finish_request, conn, fut)
                )
            return
        now = time.monotonic()
        if not why:
            if conn.waiting_since is None:
                conn.waiting_since = now
            if now - conn.waiting_since <= READ_TIMEOUT_SECONDS:
                self.finish_request(conn, _done(_DEFER))  # the poller hands it back
                return
            why = f"no whole request within {READ_TIMEOUT_SECONDS:g} s"
        self.log.debug("closing the connection of %s: %s", conn.client, why)
        self.nr_conns -= 1
        conn.close()  # not gunicorn's graceful close: that lingers for the client

    def _read_early(self, conn: ReadTimeoutConn) -> str | None:
        """Read what has come of the request without waiting: None when it can be served now,
        "" when it is not whole yet, else why the connection is to be closed."""
        if self.cfg.is_ssl or negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            return None  # TLS records or an HTTP/2 preface: gunicorn reads them as before
        parser = conn.parser
        if not conn.early and parser is not None and parser.unreader.buf.getvalue():
            return None  # a kept-alive connection with the next request already read ahead
        try:
            data = conn.sock.recv(EARLY_BYTES - len(conn.early), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return ""
        except OSError:
            return None  # reset or gone: gunicorn finds out and lets go
        if not data:
            return "closed before its request was whole" if conn.early else None
        conn.early += data
        return None if request_is_whole(conn.early) else ""


def _done(result: Any) -> futures.Future[Any]:
    """A finished future holding ``result``: gunicorn's ``finish_request`` takes one."""
    future: futures.Future[Any] = futures.Future()
    future.set_result(result)
    return future
