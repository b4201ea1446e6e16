"""The HTTP face of the Ollama stand-in: one request handler class per FakeOllama.

Routes are thin: each asks the fake for its answer (under the fake's lock) and writes it, as
Ollama does, closing the connection after every response. Only the standard library and no
sibling at run time: the stand-in image copies these files next to each other, without the
``simulator`` package.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulator.fake_ollama import FakeOllama


def make_handler(fake: FakeOllama) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; the fake records calls instead

        def do_GET(self) -> None:
            failure = fake._record("GET", self.path, None)
            if failure:
                self._json(failure[0], {"error": failure[1]})
            elif self.path == "/api/tags":
                self._json(200, fake._tags())
            elif self.path == "/api/ps":
                self._json(200, fake._ps())
            elif self.path == "/api/version":
                self._json(200, {"version": "0.12.6"})
            elif self.path == "/":
                self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
            else:
                self._send(404, b"404 page not found", "text/plain; charset=utf-8")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = None
            failure = fake._record("POST", self.path, body)
            if failure:
                self._json(failure[0], {"error": failure[1]})
            elif not isinstance(body, dict):
                self._json(400, {"error": "invalid JSON body"})
            elif self.path == "/api/generate":
                self._json(*fake._generate(body))
            elif self.path == "/api/pull":
                self._pull(body)
            elif self.path == "/api/create":
                self._create(body)
            else:
                self._send(404, b"404 page not found", "text/plain; charset=utf-8")

        def _pull(self, body: dict[str, Any]) -> None:
            requested = body.get("model") or body.get("name")
            if not isinstance(requested, str) or not requested:
                self._json(400, {"error": "model is required"})
                return
            name, size, error_after, stall_after = fake._pull_plan(requested)
            if size is None:
                lines: list[dict[str, Any]] = [
                    {"status": "pulling manifest"},
                    {"error": "pull model manifest: file does not exist"},
                ]
            else:
                lines = fake._pull_lines(name, size)
            if body.get("stream") is False:
                last = lines[-1]
                self._json(500 if "error" in last else 200, last)
                if size is not None and "error" not in last:
                    fake._pulled(name, size)
                return

            def before(line: dict[str, Any]) -> None:
                if line.get("status") == "success" and size is not None:
                    fake._pulled(name, size)  # Ollama writes the manifest before it says so

            self._stream(lines, before, error_after, stall_after)

        def _create(self, body: dict[str, Any]) -> None:
            plan, error_after = fake._create_plan(body)
            successes = [i for i, line in enumerate(plan.lines) if line.get("status") == "success"]

            def before(line: dict[str, Any]) -> None:
                if line.get("status") != "success":
                    return
                if plan.pulled is not None and successes and line is plan.lines[successes[0]]:
                    fake._pulled(*plan.pulled)  # the base's own pull, inside the create
                if line is plan.lines[-1] and plan.created is not None:
                    fake._created(plan)

            if body.get("stream") is False:
                for line in plan.lines:
                    before(line)
                last = plan.lines[-1]
                self._json(int(last.pop("status", 500)) if "error" in last else 200, last)
                return
            self._stream(plan.lines, before, error_after, None)

        def _stream(
            self,
            lines: list[dict[str, Any]],
            before: Callable[[dict[str, Any]], None],
            error_after: tuple[int, str] | None,
            stall_after: int | None,
        ) -> None:
            """NDJSON in chunks; an error before any line is an HTTP error, as in Ollama."""
            if lines and "error" in lines[0]:
                first = dict(lines[0])
                self._json(int(first.pop("status", 500)), first)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            for i, line in enumerate(lines):
                if error_after is not None and i == error_after[0]:
                    self._chunk({"error": error_after[1]})
                    break
                if stall_after is not None and i == stall_after:
                    # Silent until released, then drop the connection without ending the stream.
                    fake._release.wait()
                    self.close_connection = True
                    return
                before(line)
                self._chunk({k: v for k, v in line.items() if k != "status" or "error" not in line})
                if "error" in line:
                    break
                time.sleep(fake.line_delay)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _chunk(self, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _json(self, status: int, obj: dict[str, Any]) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

    return Handler
