"""The Ollama stand-in as a systemd unit: Ollama's API, and its log lines on journald.

Run by a stand-in ``ollama.service`` as ``python -m simulator.native_ollama --app-env FILE
--free-mib FILE``. It serves the fake API (simulator.fake_ollama) on OLLAMA_HOST, keeping
pulled models in ``--store`` across restarts, and prints to its stdout (the unit's journal)
what real Ollama prints: the listen line at start, and, while the model the application's
config names does not fit the free VRAM (the number of MiB in ``--free-mib``), the failed load
of the release and engine of $SIM_OLLAMA (simulator.ollama_corpus) every 2.5 s: more than the
exporter's incident window, so each is one error, as the loop's container stand-in does. Lines
written to ``--emit`` are printed as they are, then the file is removed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Final

from simulator import ollama_corpus
from simulator.fake_ollama import FakeOllama
from simulator.fake_ollama_cli import parse_host
from simulator.loop_setup import MODEL_MIB

FAIL_EVERY_SECONDS: Final = 2.5
TICK_SECONDS: Final = 0.1


def configured_model(app_env: Path, key: str = "OLLAMA_MODEL") -> str | None:
    """The model an env-format application config names (None: no file, no key)."""
    try:
        text = app_env.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip().strip("\"'")
    return None


def does_not_fit(app_env: Path, free_mib: Path) -> bool:
    """Whether the configured model is larger than the free VRAM the test set (no file: fits)."""
    model = configured_model(app_env)
    try:
        free = int(free_mib.read_text().strip())
    except (OSError, ValueError):
        return False
    return model is not None and MODEL_MIB.get(model, 1000) > free


def say(lines: list[str]) -> None:
    """Print ``lines`` to the journal at once (a unit's stdout is a stream to journald)."""
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def run(args: argparse.Namespace, stop: threading.Event) -> None:
    """Print the listen line, then failed loads and emitted lines until ``stop``."""
    spec = os.environ.get(ollama_corpus.ENV) or ollama_corpus.DEFAULT
    version = spec.partition("/")[0]
    load = ollama_corpus.failed_load(spec)
    listening = (
        "time=2000-01-01T00:00:00.000Z level=INFO source=routes.go:1475 "
        f'msg="Listening on 127.0.0.1:{args.port} (version {version})"'
    )
    say(ollama_corpus.printed_now([ollama_corpus.Line(0.0, listening)]))
    next_failure = 0.0
    while not stop.wait(TICK_SECONDS):
        if args.emit.exists():
            say(args.emit.read_text().splitlines())
            args.emit.unlink()
        now = time.monotonic()
        if now >= next_failure and does_not_fit(args.app_env, args.free_mib):
            say(ollama_corpus.printed_now(load))
            next_failure = now + FAIL_EVERY_SECONDS


def main(argv: list[str] | None = None) -> int:
    """Serve the API and print Ollama's lines until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-env", type=Path, required=True)
    parser.add_argument("--free-mib", type=Path, required=True)
    parser.add_argument("--emit", type=Path, default=Path("/run/ollama-emit"))
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=MIB")
    args = parser.parse_args(argv)
    host, args.port = parse_host(os.environ.get("OLLAMA_HOST", "127.0.0.1:11434"))
    models = {}
    for item in args.model:
        name, _, size = item.partition("=")
        models[name] = int(size or 400) * 1024 * 1024
    fake = FakeOllama(models, line_delay=0.05, host=host, store=args.store)
    fake.port = args.port
    fake.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run(args, stop)
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
