"""The exporter's HTTP server: /metrics and /healthz, one process (never one per worker)."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder

from fleet_contract import metrics

log = logging.getLogger(__name__)

Health = Callable[[], dict[str, Any]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(
    host: str, port: int, registry: CollectorRegistry, health: Health
) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) for ``registry`` on host:port (port 0: any free port)."""
    spec = metrics.spec(metrics.EXPORTER_SCRAPE_DURATION)
    scrape_seconds = Histogram(
        spec.name,
        spec.help,
        spec.labels,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        registry=registry,
    )

    class Handler(BaseHTTPRequestHandler):
        server_version = "model-fleet-exporter"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                start = time.perf_counter()
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                body = encoder(registry)
                scrape_seconds.observe(time.perf_counter() - start)
                self._send(200, content_type, body)
            elif path == "/healthz":
                self._send(200, "application/json", json.dumps(health()).encode() + b"\n")
            elif path == "/":
                self._send(
                    200,
                    "text/plain; charset=utf-8",
                    b"model-fleet-exporter: /metrics, /healthz\n",
                )
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    server_class = _Server6 if ":" in host else _Server
    return server_class((host, port), Handler)
