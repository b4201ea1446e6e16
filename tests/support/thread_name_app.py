"""A WSGI app that answers with the name of the thread serving the request: run under
``remediator.http.worker.ReadTimeoutWorker`` it shows which requests the worker's loop
serves itself and which a pool thread serves (tests/test_gunicorn_worker.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Read the whole body, then answer the serving thread's name."""
    stream = environ["wsgi.input"]
    while stream.read(65536):
        pass
    name = threading.current_thread().name.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(name)))])
    return [name]
