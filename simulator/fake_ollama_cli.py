"""The client side of the stand-in's ``ollama`` command: ``ollama list`` and ``ollama pull``.

They talk to the server named by OLLAMA_HOST over HTTP, as the real command does, so the
shipped health check (``ollama list``) and a manual pull work inside the stand-in image.
Only the standard library: the image copies this file next to fake_ollama.py.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request


def parse_host(value: str) -> tuple[str, int]:
    """OLLAMA_HOST's forms: ``host``, ``host:port``, ``:port``, with or without ``http://``."""
    value = value.split("://", 1)[-1].rstrip("/")
    host, sep, port = value.rpartition(":")
    if not sep:
        return value or "127.0.0.1", 11434
    return host or "127.0.0.1", int(port)


def client_url() -> str:
    """The server a client command talks to: OLLAMA_HOST, with 0.0.0.0 meaning this host."""
    host, port = parse_host(os.environ.get("OLLAMA_HOST", "127.0.0.1:11434"))
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"


def cli_list() -> int:
    """``ollama list``: the local models as a table; exit 1 when the server does not answer."""
    try:
        with urllib.request.urlopen(f"{client_url()}/api/tags", timeout=5) as response:
            models = json.load(response)["models"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"Error: could not connect to ollama app, is it running? ({exc})", file=sys.stderr)
        return 1
    print(f"{'NAME':<24}{'ID':<16}{'SIZE':<10}MODIFIED")
    for m in models:
        print(
            f"{m['name']:<24}{m['digest'][:12]:<16}{m['size'] // 2**20:>5} MB  {m['modified_at']}"
        )
    return 0


def cli_pull(name: str) -> int:
    """``ollama pull NAME``: stream the progress lines; exit 1 on an error line."""
    request = urllib.request.Request(
        f"{client_url()}/api/pull",
        data=json.dumps({"model": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            for raw in response:
                line = json.loads(raw)
                if "error" in line:
                    print(f"Error: {line['error']}", file=sys.stderr)
                    return 1
                done, total = line.get("completed"), line.get("total")
                extra = f" {100 * done // total}%" if done is not None and total else ""
                print(f"{line.get('status', '')}{extra}", file=sys.stderr, flush=True)
    except (OSError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0
