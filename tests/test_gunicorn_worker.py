"""The remediator's gunicorn worker (remediator/http/worker.py): which requests its loop
serves itself and which get a pool thread.

A storm of Alertmanager deliveries is served on the worker's loop, with no thread hand-off
(BENCHMARKS.md, "Webhook storm"); everything that may wait (a manual switch, a body still
arriving) must keep going to the pool, or it would stop the loop and every connection on it.
The worker runs under real gunicorn on 127.0.0.1 with an app that answers with the name of
the thread that served the request (tests/support/thread_name_app.py).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remediator.http.worker import EARLY_BYTES, served_inline
from simulator.local_http import free_port

REPO = Path(__file__).resolve().parent.parent
WEBHOOK = b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\n"


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_only_a_whole_delivery_or_health_check_is_served_inline() -> None:
    assert served_inline(post(b"/webhook/alertmanager", b'{"alerts": []}'))
    assert served_inline(post(b"/webhook/alertmanager?x=1", b"{}"))
    assert served_inline(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert served_inline(b"HEAD /healthz HTTP/1.1\r\n\r\n")
    # Not all here yet, or more than one request: a thread reads it (under the read timeout).
    assert not served_inline(post(b"/webhook/alertmanager", b'{"alerts": []}')[:-1])
    assert not served_inline(WEBHOOK)
    assert not served_inline(post(b"/webhook/alertmanager", b"{}") * 2)
    chunked = WEBHOOK + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    assert not served_inline(chunked)
    # Requests that may wait: a manual switch waits for its switch, /status may read Prometheus,
    # a notification is forwarded to a sink.
    for path in (b"/downgrade", b"/upgrade", b"/reset", b"/webhook/notify"):
        assert not served_inline(post(path, b"{}"))
    assert not served_inline(b"GET /status HTTP/1.1\r\n\r\n")
    assert not served_inline(b"GET /metrics HTTP/1.1\r\n\r\n")
    assert not served_inline(b"GET /healthzz HTTP/1.1\r\n\r\n")
    assert not served_inline(b"")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """gunicorn with one ReadTimeoutWorker and the shipped thread count, serving the app."""
    port = free_port()
    log = tmp_path_factory.mktemp("worker") / "gunicorn.log"
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "remediator.http.worker.ReadTimeoutWorker",
        "--workers",
        "1",
        "--threads",
        "64",
        "--bind",
        f"127.0.0.1:{port}",
        "tests.support.thread_name_app:app",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(30)


def ask(address: tuple[str, int], *pieces: bytes) -> str:
    """Send ``pieces`` (pausing between them) on one connection; the answer's body."""
    with socket.create_connection(address, timeout=15) as sock:
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(0.3)
            sock.sendall(piece)
        answer = b""
        while (chunk := sock.recv(65536)) and not _complete(answer := answer + chunk):
            pass
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return answer.partition(b"\r\n\r\n")[2].decode()


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return bool(sep) and length is not None and len(body) >= int(length.group(1))


def test_the_loop_serves_a_whole_delivery_and_health_checks(worker: tuple[str, int]) -> None:
    assert ask(worker, post(b"/webhook/alertmanager", b'{"alerts": []}')) == "MainThread"
    assert ask(worker, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == "MainThread"
    # Sent in pieces: it waits in the poller, and the loop serves it once it is whole.
    whole = post(b"/webhook/alertmanager", b'{"alerts": []}')
    assert ask(worker, whole[:30], whole[30:]) == "MainThread"


def test_what_may_wait_gets_a_pool_thread(worker: tuple[str, int]) -> None:
    pool = "ThreadPoolExecutor-"
    assert ask(worker, post(b"/downgrade", b"{}")).startswith(pool)
    assert ask(worker, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").startswith(pool)
    chunked = WEBHOOK + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    assert ask(worker, chunked).startswith(pool)
    # A body larger than the worker reads ahead: its thread reads the rest under the timeout.
    large = post(b"/webhook/alertmanager", b" " * (2 * EARLY_BYTES))
    assert ask(worker, large).startswith(pool)
