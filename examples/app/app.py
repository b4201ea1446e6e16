"""Example application for model-fleet: answers prompts with whatever model model.env names.

It re-reads the env file on every request, so a model switch by the remediator takes effect
at the next request even before the remediator restarts this container. Standard library only.

    GET  /healthz           -> {"model": ...}               (reads the file, not Ollama)
    GET  /?prompt=Hello     -> {"model": ..., "response": ...}
    POST / with a JSON body {"prompt": "Hello"}

Settings (environment): MODEL_ENV_FILE (default /app-config/model.env), OLLAMA_URL (default
http://ollama:11434), HOST (default 0.0.0.0), PORT (default 8000), OLLAMA_TIMEOUT seconds
(default 120).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODEL_KEY = "OLLAMA_MODEL"


def read_model(path: Path) -> str:
    """The value of OLLAMA_MODEL in the env file at ``path``; raise ValueError if absent."""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        if sep and key.strip() == MODEL_KEY:
            model = value.strip().strip("'\"")
            if model:
                return model
    raise ValueError(f"{path}: no {MODEL_KEY}= line")


def generate(ollama_url: str, model: str, prompt: str, timeout: float) -> str:
    """Ask Ollama for one non-streamed completion; raise RuntimeError with Ollama's reason."""
    body = json.dumps({"model": model, "prompt": prompt, "stream": False}).encode()
    request = urllib.request.Request(
        f"{ollama_url.rstrip('/')}/api/generate",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        # Ollama explains itself in {"error": ...}, e.g. "model 'x' not found".
        detail = exc.read().decode(errors="replace").strip()
        raise RuntimeError(f"Ollama answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, TimeoutError) as exc:
        raise RuntimeError(f"Ollama unreachable at {ollama_url}: {exc}") from exc
    return str(answer.get("response", ""))


class Handler(BaseHTTPRequestHandler):
    """Reads the model for every request, then answers from Ollama."""

    server: AppServer

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/healthz":
            self._with_model(lambda model: (200, {"model": model}))
            return
        if url.path != "/":
            self._send(404, {"error": f"no such path {url.path}"})
            return
        prompt = urllib.parse.parse_qs(url.query).get("prompt", ["Say hello in five words."])[0]
        self._answer(prompt)

    def do_POST(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/":
            self._send(404, {"error": "POST / only"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
            prompt = str(payload["prompt"])
        except (ValueError, KeyError, TypeError):
            self._send(400, {"error": 'send a JSON body {"prompt": "..."}'})
            return
        self._answer(prompt)

    def _answer(self, prompt: str) -> None:
        def ask(model: str) -> tuple[int, dict[str, Any]]:
            cfg = self.server
            try:
                text = generate(cfg.ollama_url, model, prompt, cfg.ollama_timeout)
            except RuntimeError as exc:
                return 502, {"model": model, "error": str(exc)}
            return 200, {"model": model, "response": text}

        self._with_model(ask)

    def _with_model(self, then: Callable[[str], tuple[int, dict[str, Any]]]) -> None:
        try:
            model = read_model(self.server.model_file)
        except (OSError, ValueError) as exc:
            self._send(500, {"error": f"cannot read the model: {exc}"})
            return
        status, body = then(model)
        self._send(status, body)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"app: {self.address_string()} {format % args}\n")


class AppServer(ThreadingHTTPServer):
    """The HTTP server, holding the settings the handler needs."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], model_file: Path, ollama_url: str, ollama_timeout: float
    ) -> None:
        super().__init__(address, Handler)
        self.model_file = model_file
        self.ollama_url = ollama_url
        self.ollama_timeout = ollama_timeout


def main() -> None:
    """Serve until interrupted."""
    server = AppServer(
        address=(os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "8000"))),
        model_file=Path(os.environ.get("MODEL_ENV_FILE", "/app-config/model.env")),
        ollama_url=os.environ.get("OLLAMA_URL", "http://ollama:11434"),
        ollama_timeout=float(os.environ.get("OLLAMA_TIMEOUT", "120")),
    )
    # As PID 1 in a container, SIGTERM is ignored unless handled: without this, every restart
    # by the remediator would wait out Docker's stop timeout.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    port = server.server_address[1]
    print(f"app: serving on :{port}, model from {server.model_file}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
