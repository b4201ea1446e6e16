"""HTTP/1.1 chunked transfer decoding in big blocks.

Docker flushes every log frame as its own HTTP chunk. Decoding those one at a time through
the HTTP library costs several microseconds per line, more than Docker takes to send it;
decoding whole reads of the socket here keeps the exporter ahead of ``docker logs``.
"""

from __future__ import annotations


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
