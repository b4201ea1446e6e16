"""Streamed HTTP bodies read fast: HTTP/1.1 chunked transfer decoding in big blocks.

Docker flushes every log frame as its own HTTP chunk. Decoding those one at a time through
the HTTP library (urllib3's public ``read1`` returns one chunk per call) costs several
microseconds per line, more than Docker takes to send it, and the exporter falls to about
half the speed of ``docker logs``; decoding whole reads of the socket here keeps it ahead.

That needs the one private attribute path in the exporter, wrapped in ``buffered_socket``:
tests/test_exporter_chunked.py fails when urllib3 or http.client stop providing it, and
without it ``body_reader`` falls back to the public ``read1`` (correct, slower).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

READ_SIZE: Final = 256 * 1024


def buffered_socket(response: Any) -> Callable[[int], bytes] | None:
    """``read1`` of the socket's buffered reader under a streamed ``requests`` response.

    urllib3's response keeps http.client's response as ``_fp``, which keeps the socket's
    ``BufferedReader`` as ``fp`` (the Docker SDK reaches the same object for attached
    streams). None when either library no longer does.
    """
    buffered = getattr(getattr(getattr(response, "raw", None), "_fp", None), "fp", None)
    read1 = getattr(buffered, "read1", None)
    return read1 if callable(read1) else None


def body_reader(response: Any) -> Callable[[], bytes]:
    """The next piece of a streamed body as soon as any arrived; b'' at its end.

    A quiet container's line still arrives at once: ``read1`` returns whatever is there.
    """
    chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
    read1 = buffered_socket(response) if chunked else None
    if read1 is None:
        raw = response.raw
        return lambda: bytes(raw.read1(READ_SIZE, decode_content=False))
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
