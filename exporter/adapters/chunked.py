"""Streamed HTTP bodies read fast: a GET on a plain socket, chunked decoding in big blocks.

Docker flushes every log frame as its own HTTP chunk. Decoding those one at a time through
the HTTP library (urllib3's public ``read1`` returns one chunk per call) costs several
microseconds per line, more than Docker takes to send it, and the exporter falls to about
half the speed of ``docker logs``. So the log stream's request is sent here, on a socket
opened with the standard library, and whole ``recv`` results go through ``ChunkedDecoder``:
no private attribute of any HTTP library is needed. ``body_reader`` is the public ``read1``
path for streams that only the HTTP library can open (TLS engines): correct, slower.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

READ_SIZE: Final = 256 * 1024
HEAD_LIMIT: Final = 64 * 1024  # an engine's status line and headers are far smaller
ERROR_BODY_LIMIT: Final = 64 * 1024


def body_reader(response: Any) -> Callable[[], bytes]:
    """The next piece of a streamed ``requests`` body as soon as any arrived; b'' at its end.

    A quiet container's line still arrives at once: ``read1`` returns whatever is there.
    """
    raw = response.raw
    return lambda: bytes(raw.read1(READ_SIZE, decode_content=False))


class ChunkedError(ValueError):
    """The body is not valid chunked encoding."""


class ChunkedDecoder:
    """Turns pieces of a chunked body (split anywhere) into the bytes they carry."""

    def __init__(self) -> None:
        self._rest = b""
        self._left = 0  # data bytes of the current chunk still to come
        self._crlf = False  # the CRLF after a chunk's data is still to come
        self.done = False  # the last (empty) chunk arrived

    def feed(self, data: bytes) -> bytes:
        """Decode the next piece of the body; return the data it completes (may be b'')."""
        if self.done:
            return b""
        buf = self._rest + data if self._rest else data
        end = len(buf)
        pos = 0
        out: list[bytes] = []
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                self._crlf = self._left == 0
                continue
            if self._crlf:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ChunkedError(
                        f"expected CRLF after chunk data, got {buf[pos : pos + 2]!r}"
                    )
                pos += 2
                self._crlf = False
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > 1024:
                    raise ChunkedError("chunk size line too long")
                break
            try:
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
            except ValueError as exc:
                raise ChunkedError(f"bad chunk size line {buf[pos:eol]!r}") from exc
            pos = eol + 2
            if size == 0:
                self.done = True  # trailers, if any, are of no interest
                pos = end
                break
            self._left = size
        self._rest = buf[pos:] if pos < end else b""
        return b"".join(out)


class HTTPStatusError(Exception):
    """The server answered something other than 200; ``message`` is what it said why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Endpoint:
    """Where a plain-HTTP server listens: a unix socket path, or a TCP host and port."""

    unix_path: str | None = None
    host: str = "localhost"
    port: int = 0

    def connect(self, timeout: float) -> socket.socket:
        """A connected socket (OSError when nothing answers within ``timeout``)."""
        if self.unix_path is None:
            return socket.create_connection((self.host, self.port), timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def host_header(self) -> str:
        """The Host header for requests sent here."""
        return self.host if self.unix_path is not None else f"{self.host}:{self.port}"


class SocketStream:
    """A streamed HTTP/1.1 response body on a socket of its own (a ``LogStream``)."""

    def __init__(self, sock: socket.socket, headers: dict[str, str], first: bytes) -> None:
        self._sock = sock
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._first = first  # body bytes that came with the headers
        self._decoder: ChunkedDecoder | None = None
        self._left: int | None = None  # bytes of a Content-Length body still to come
        if headers.get("transfer-encoding", "").lower() == "chunked":
            self._decoder = ChunkedDecoder()
        elif "content-length" in headers:
            self._left = int(headers["content-length"])

    def _recv(self) -> bytes:
        if self._first:
            data, self._first = self._first, b""
            return data
        # recv_into a reused buffer: whatever arrived, at once, with no big allocation per call
        n = self._sock.recv_into(self._buffer, READ_SIZE)
        return bytes(self._view[:n])

    def read(self) -> bytes:
        """The next piece of the body as soon as any arrived; b'' at its end."""
        decoder = self._decoder
        if decoder is not None:
            while not decoder.done:
                data = self._recv()
                if not data:
                    return b""
                payload = decoder.feed(data)
                if payload:
                    return payload
            return b""
        if self._left is not None:
            if self._left <= 0:
                return b""
            data = self._recv()[: self._left]
            self._left -= len(data)
            return data
        return self._recv()  # the body ends when the connection does

    def interrupt(self) -> None:
        """End the body now from any thread: a blocked ``read`` returns b'' at once."""
        with contextlib.suppress(OSError):  # already shut down, or the peer went first
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Release the socket."""
        self.interrupt()
        self._sock.close()

    def lost(self) -> bool:
        """Docker's logs API never says (the ledger finds a log that no longer reaches back)."""
        return False


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The status line and headers (up to the blank line), and the body bytes read past it."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return data[:end], data[end + 4 :]
        if len(data) > HEAD_LIMIT:
            raise OSError(f"response headers longer than {HEAD_LIMIT} bytes")
        piece = sock.recv(READ_SIZE)
        if not piece:
            raise OSError("the connection closed before the response headers ended")
        data += piece


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise OSError(f"not an HTTP response: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _error_message(stream: SocketStream, status: int) -> str:
    """What the server said (Docker: ``{"message": ...}``), read within a short time."""
    body = b""
    try:
        while len(body) < ERROR_BODY_LIMIT and (piece := stream.read()):
            body += piece
    except (OSError, ChunkedError):
        pass  # the status alone still says what went wrong
    text = body.decode("utf-8", "replace").strip()
    try:
        message = json.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else text or f"HTTP {status}"


def open_get(endpoint: Endpoint, target: str, timeout: float) -> SocketStream:
    """Send ``GET target`` and return its 200 response's body stream.

    Connecting and the response headers must come within ``timeout``; the body then waits as
    long as it takes. Raises HTTPStatusError for another status, OSError when the connection
    fails.
    """
    sock = endpoint.connect(timeout)
    try:
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {endpoint.host_header}\r\n"
            "User-Agent: model-fleet-exporter\r\nAccept-Encoding: identity\r\n\r\n"
        )
        sock.sendall(request.encode("ascii"))
        head, first = _read_head(sock)
        status, headers = _parse_head(head)
        stream = SocketStream(sock, headers, first)
        if status != 200:
            raise HTTPStatusError(status, _error_message(stream, status))
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return stream
