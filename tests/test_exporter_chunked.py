"""Streamed HTTP bodies read in big blocks: the chunked decoder, and GETs on a plain socket
against a real HTTP server (tests/test_exporter_docker.py runs them against Docker)."""

from __future__ import annotations

import http.server
import random
import threading
from collections.abc import Iterator

import pytest
import requests

from exporter.adapters.chunked import (
    ChunkedDecoder,
    ChunkedError,
    Endpoint,
    HTTPStatusError,
    body_reader,
    open_get,
)


def chunked(parts: list[bytes]) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return body + b"0\r\n\r\n"


def test_chunked_bodies_decode_whatever_the_split() -> None:
    rng = random.Random(3)
    parts = [b"%d %s\n" % (i, rng.choice([b"out of memory", b"normal line"])) for i in range(50)]
    body = chunked(parts) + b"HTTP/1.1 200 OK\r\n"  # what follows the body is not read
    for _ in range(5):
        decoder = ChunkedDecoder()
        cuts = sorted(rng.sample(range(1, len(body)), 40))
        bounds = zip([0, *cuts], [*cuts, len(body)], strict=True)
        out = b"".join(decoder.feed(body[a:b]) for a, b in bounds)
        assert out == b"".join(parts)
        assert decoder.done


def test_chunk_extensions_are_ignored_and_garbage_is_refused() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"5;name=value\r\nhello\r\n0\r\n\r\n") == b"hello"
    assert decoder.done and decoder.feed(b"more") == b""
    with pytest.raises(ChunkedError):
        ChunkedDecoder().feed(b"zz\r\nhello\r\n")
    with pytest.raises(ChunkedError):
        ChunkedDecoder().feed(b"5\r\nhelloXX")


PARTS = [b"first line\n", b"second line\n", b"third line\n"]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    first_read = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/missing":
            message = b'{"message": "No such container: missing"}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)
            return
        self.send_response(200)
        if self.path == "/chunked":
            # Like Docker: one flushed chunk per log frame, the rest only once the first was
            # read (a reader that waits for more than what is there would hang here).
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(PARTS[0]), PARTS[0]))
            self.wfile.flush()
            self.first_read.wait(10)
            self.wfile.write(chunked(PARTS[1:]))
        else:
            body = b"".join(PARTS)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.first_read.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _Handler.first_read.set()
    httpd.shutdown()
    httpd.server_close()


def endpoint(server: str) -> Endpoint:
    host, port = server.removeprefix("http://").split(":")
    return Endpoint(host=host, port=int(port))


def test_a_chunked_body_on_a_socket_arrives_piece_by_piece(server: str) -> None:
    stream = open_get(endpoint(server), "/chunked", timeout=10)
    try:
        assert stream.read() == PARTS[0]  # at once, before the server sends more
        _Handler.first_read.set()
        rest = b""
        while piece := stream.read():
            rest += piece
        assert rest == b"".join(PARTS[1:])
    finally:
        stream.close()


def test_a_body_of_known_length_on_a_socket_ends_with_it(server: str) -> None:
    stream = open_get(endpoint(server), "/plain", timeout=10)
    body = b""
    while piece := stream.read():
        body += piece
    stream.close()
    assert body == b"".join(PARTS)


def test_another_status_raises_with_the_servers_message(server: str) -> None:
    with pytest.raises(HTTPStatusError) as info:
        open_get(endpoint(server), "/missing", timeout=10)
    assert (info.value.status, info.value.message) == (404, "No such container: missing")


def test_other_bodies_are_read_through_the_public_api(server: str) -> None:
    with requests.get(server + "/plain", stream=True, timeout=10) as response:
        read = body_reader(response)
        body = b""
        while piece := read():
            body += piece
        assert body == b"".join(PARTS)
