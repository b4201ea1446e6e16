"""A stand-in for the Ollama endpoints model-fleet uses, on a real 127.0.0.1 HTTP port.

It speaks ``GET /api/tags``, ``POST /api/pull`` (NDJSON progress in chunked encoding, shaped
like Ollama's: ``pulling manifest``, ``pulling <digest>`` with ``total``/``completed``,
``verifying sha256 digest``, ``writing manifest``, ``success``; errors as ``{"error": ...}``),
``POST /api/create`` (simulator.fake_ollama_create: Ollama's status lines and errors; the
created model is then listed, with a size), ``POST /api/generate`` (``keep_alive: 0``
unloads, an empty prompt loads, a prompt answers "ok" with Ollama's timing fields),
``GET /api/ps`` (``size``, ``size_vram``: :meth:`load` can load a model partly offloaded, and
a request leaves a loaded model where it is; ``expires_at``: the last use plus Ollama's
default keep-alive) and ``GET /api/version``. It records every call and fails on demand:
refuse a pull, break a pull or a create mid-stream, stall a pull, answer any path with an HTTP
error, or go down altogether.
Every response closes its connection, so "down" means down for every client at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Imported as simulator.fake_ollama, or run as a script from the stand-in image, where these
# files lie next to each other and there is no simulator package.
if __package__:
    from simulator.fake_ollama_cli import cli_list, cli_pull, parse_host
    from simulator.fake_ollama_create import CreatePlan, plan_create
    from simulator.fake_ollama_http import make_handler
else:
    from fake_ollama_cli import cli_list, cli_pull, parse_host  # type: ignore[no-redef]
    from fake_ollama_create import CreatePlan, plan_create  # type: ignore[no-redef]
    from fake_ollama_http import make_handler  # type: ignore[no-redef]

DEFAULT_SIZE = 400 * 1024 * 1024
CREATED_AT = "2025-01-01T00:00:00.000000Z"
KEEP_ALIVE_SECONDS = 300  # Ollama's default keep_alive: expires_at is the last use plus this


@dataclass(frozen=True)
class RecordedCall:
    """One request the fake received."""

    method: str
    path: str
    body: Any
    at: float


def canonical(name: str) -> str:
    """Ollama's canonical model name (``name`` without a tag means ``name:latest``)."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _rfc3339(at: float) -> str:
    """Go's time format as Ollama writes it, in UTC with nanoseconds."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return f"{whole}.{int(at % 1 * 1e9):09d}Z"


def _details() -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1B",
        "quantization_level": "Q4_0",
    }


class FakeOllama:
    """A threaded fake Ollama server; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        models: dict[str, int] | None = None,
        *,
        registry: dict[str, int] | None = None,
        progress_steps: int = 4,
        line_delay: float = 0.01,
        host: str = "127.0.0.1",
        store: Path | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.host = host
        # With a store, pulled models survive a restart of the process (a container restart
        # on a switch), as Ollama's model directory does.
        self.store = store
        self._calls: list[RecordedCall] = []
        # Local store and loaded models, keyed by canonical name.
        self.models: dict[str, int] = {canonical(k): v for k, v in (models or {}).items()}
        if store is not None and store.exists():
            self.models.update(json.loads(store.read_text(encoding="utf-8")))
        self.loaded: dict[str, tuple[int, int]] = {}  # name -> (size, size_vram)
        self.file_types: dict[str, str] = {}  # name -> file type, for the models created here
        self._used_at: dict[str, float] = {}  # name -> last load or request (expires_at)
        self.eval_seconds_per_token = 0.02  # eval_duration of the one token a generation makes
        # None: any model can be pulled (with DEFAULT_SIZE); else only these.
        self.registry = {canonical(k): v for k, v in registry.items()} if registry else None
        self.progress_steps = progress_steps
        self.line_delay = line_delay
        self._failures: dict[str, tuple[int, str]] = {}
        self._pull_error_after: tuple[int, str] | None = None
        self._pull_stall_after: int | None = None
        self._create_error_after: tuple[int, str] | None = None
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeOllama:
        """Listen on an ephemeral 127.0.0.1 port (the same port again after go_down)."""
        self._release.clear()
        server = ThreadingHTTPServer((self.host, self.port), make_handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        # A short poll interval keeps stop() (and so every test's teardown) fast.
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.02,), name="fake-ollama", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and end stalled streams; connections are refused afterwards."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def go_down(self) -> None:
        """Simulate Ollama going away: the port refuses connections until come_back()."""
        self.stop()

    def come_back(self) -> None:
        """Listen again on the same port."""
        self.start()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # failures on demand ------------------------------------------------------------------------

    def fail(self, path: str, status: int = 500, message: str = "internal error") -> None:
        """Answer every request to ``path`` with HTTP ``status`` and ``{"error": message}``."""
        with self._lock:
            self._failures[path] = (status, message)

    def refuse_pull(self, message: str = "pull refused", status: int = 500) -> None:
        """Answer pulls at once with an HTTP error."""
        self.fail("/api/pull", status, message)

    def fail_pull_mid_stream(self, message: str = "download interrupted", after: int = 2) -> None:
        """Stream ``after`` progress lines, then an ``{"error": ...}`` line, like Ollama does."""
        with self._lock:
            self._pull_error_after = (after, message)

    def stall_pull(self, after: int = 2) -> None:
        """Stream ``after`` progress lines, then go silent until stop() or go_down()."""
        with self._lock:
            self._pull_stall_after = after

    def fail_create_mid_stream(
        self, message: str = "no space left on device", after: int = 1
    ) -> None:
        """Stream ``after`` status lines of a create, then an ``{"error": ...}`` line."""
        with self._lock:
            self._create_error_after = (after, message)

    def heal(self) -> None:
        """Forget every failure set on demand."""
        with self._lock:
            self._failures.clear()
            self._create_error_after = None
            self._pull_error_after = None
            self._pull_stall_after = None

    # state helpers -----------------------------------------------------------------------------

    def load(self, name: str, size_vram: int | None = None) -> None:
        """Mark a local model as loaded, with ``size_vram`` of it on the GPU (default: all)."""
        key = canonical(name)
        with self._lock:
            size = self.models.setdefault(key, DEFAULT_SIZE)
            self.loaded[key] = (size, size if size_vram is None else size_vram)
            self._used_at[key] = time.time()

    def forget(self, name: str) -> None:
        """Remove a model from the local store (as ``ollama rm`` does)."""
        key = canonical(name)
        with self._lock:
            self.models.pop(key, None)
            self.loaded.pop(key, None)

    @property
    def calls(self) -> list[RecordedCall]:
        """Every call so far, in arrival order."""
        with self._lock:
            return list(self._calls)

    def calls_to(self, path: str, method: str | None = None) -> list[RecordedCall]:
        """Calls to ``path`` (and ``method``, if given)."""
        return [c for c in self.calls if c.path == path and (method is None or c.method == method)]

    # request handling (called from handler threads) ------------------------------------------

    def _record(self, method: str, path: str, body: Any) -> tuple[int, str] | None:
        with self._lock:
            self._calls.append(RecordedCall(method, path, body, time.time()))
            return self._failures.get(path)

    def _tags(self) -> dict[str, Any]:
        with self._lock:
            items = sorted(self.models.items())
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "modified_at": CREATED_AT,
                    "size": size,
                    "digest": _digest(name),
                    "details": _details(),
                }
                for name, size in items
            ]
        }

    def _ps(self) -> dict[str, Any]:
        with self._lock:
            items = sorted(self.loaded.items())
            used = dict(self._used_at)
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "size": size,
                    "digest": _digest(name),
                    "details": _details(),
                    # Ollama's default keep-alive: 5 minutes after the last request.
                    "expires_at": _rfc3339(used.get(name, 0.0) + KEEP_ALIVE_SECONDS),
                    "size_vram": vram,
                }
                for name, (size, vram) in items
            ]
        }

    def _generate(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = canonical(str(body.get("model", "")))
        with self._lock:
            size = self.models.get(name)
            if size is None:
                return 404, {"error": f"model '{body.get('model')}' not found"}
            reply: dict[str, Any] = {
                "model": body.get("model"),
                "created_at": CREATED_AT,
                "response": "",
                "done": True,
            }
            if body.get("keep_alive") in (0, "0", "0s", "0m"):
                self.loaded.pop(name, None)
                reply["done_reason"] = "unload"
                return 200, reply
            # A loaded model stays where it is (a partial offload too); else it loads whole.
            self.loaded[name] = self.loaded.get(name, (size, size))
            self._used_at[name] = time.time()
            if not body.get("prompt"):
                reply["done_reason"] = "load"
            else:
                reply["response"] = "ok"
                reply["done_reason"] = "stop"
                # Ollama's timing fields (nanoseconds): one token ("ok"), by default in 20 ms.
                eval_ns = round(self.eval_seconds_per_token * 1e9)
                reply.update(
                    total_duration=eval_ns + 5_000_000,
                    load_duration=1_000_000,
                    prompt_eval_count=len(str(body.get("prompt")).split()),
                    prompt_eval_duration=2_000_000,
                    eval_count=1,
                    eval_duration=eval_ns,
                )
        return 200, reply

    def _pull_plan(
        self, requested: str
    ) -> tuple[str, int | None, tuple[int, str] | None, int | None]:
        name = canonical(requested)
        with self._lock:
            size = DEFAULT_SIZE if self.registry is None else self.registry.get(name)
            return name, size, self._pull_error_after, self._pull_stall_after

    def _pull_lines(self, name: str, size: int) -> list[dict[str, Any]]:
        digest = _digest(name)
        layer = f"pulling {digest[:12]}"
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        lines.append({"status": layer, "digest": f"sha256:{digest}", "total": size})
        for i in range(1, self.progress_steps + 1):
            done = size * i // self.progress_steps
            lines.append(
                {"status": layer, "digest": f"sha256:{digest}", "total": size, "completed": done}
            )
        lines += [
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        return lines

    def _create_plan(self, body: dict[str, Any]) -> tuple[CreatePlan, tuple[int, str] | None]:
        def registry_size(name: str) -> int | None:
            return DEFAULT_SIZE if self.registry is None else self.registry.get(name)

        with self._lock:
            plan = plan_create(
                body, dict(self.models), dict(self.file_types), self._pull_lines, registry_size
            )
            return plan, self._create_error_after

    def _created(self, plan: CreatePlan) -> None:
        assert plan.created is not None
        name, size = plan.created
        with self._lock:
            self.file_types[name] = plan.file_type
        self._pulled(name, size)

    def _pulled(self, name: str, size: int) -> None:
        with self._lock:
            self.models[name] = size
            if self.store is not None:
                tmp = self.store.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.models), encoding="utf-8")
                tmp.replace(self.store)


def main(argv: list[str] | None = None) -> int:
    """``serve`` (the default), ``list`` and ``pull NAME``, like the ``ollama`` command.

    ``serve`` listens on OLLAMA_HOST (or ``--port``); ``--store FILE`` keeps pulled models
    across restarts. Run as ``python -m simulator.fake_ollama`` or as the stand-in image's
    ``ollama`` command.
    """
    import argparse
    import signal

    parser = argparse.ArgumentParser(
        prog="ollama", description="A stand-in for the Ollama endpoints model-fleet uses."
    )
    parser.add_argument("command", nargs="?", default="serve", choices=("serve", "list", "pull"))
    parser.add_argument("name", nargs="?", help="the model to pull")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=MIB",
        help="a model already pulled, with its size in MiB (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.command == "list":
        return cli_list()
    if args.command == "pull":
        if not args.name:
            parser.error("pull needs a model name")
        return cli_pull(args.name)
    models = {}
    for item in args.model:
        name, _, size = item.partition("=")
        models[name] = int(size or 400) * 1024 * 1024
    host, port = parse_host(os.environ.get("OLLAMA_HOST", "127.0.0.1:11434"))
    store = args.store or (
        Path(os.environ["OLLAMA_MODELS"]) / "models.json"
        if os.environ.get("OLLAMA_MODELS")
        else None
    )
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
    fake = FakeOllama(models, line_delay=0.05, host=host, store=store)
    fake.port = args.port if args.port is not None else port
    fake.start()
    print(f"fake ollama listening on {host}:{fake.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
