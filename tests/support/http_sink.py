"""A tiny HTTP endpoint on 127.0.0.1 that records the JSON POSTed to it (a chat webhook)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HttpSink:
    """Records every POST (path, headers, JSON body) and answers ``status`` (200 by default)."""

    def __init__(self, path: str = "/hooks/T000/B000/secret-part") -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                with sink._lock:
                    sink.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                self.send_response(sink.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{path}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def bodies(self) -> list[Any]:
        """The JSON bodies received so far."""
        with self._lock:
            return [r["body"] for r in self.requests]

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
