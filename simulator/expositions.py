"""Prometheus text for tests: serve it, write it for every contract metric, read samples back.

``MetricsEndpoint`` serves Prometheus text over HTTP; ``exporter_exposition`` /
``remediator_exposition`` produce every metric of the contract (fleet_contract.metrics) so
queries can be checked before the real services run; ``sample_values`` reads /metrics text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleet_contract import metrics as m
from fleet_contract.errors import ERROR_KINDS
from fleet_contract.labels import HOST_LABEL

# The host both stand-in services name on every sample (fleet_contract.labels.HOST_LABEL).
HOST = "gpu-sim"
MIB = 1024 * 1024
GIB = 1024 * MIB


class MetricsEndpoint:
    """Serves ``render(n)`` at /metrics on a free 127.0.0.1 port; n counts the scrapes from 1."""

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._lock = threading.Lock()
        self.scrapes = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                with endpoint._lock:
                    endpoint.scrapes += 1
                    body = endpoint._render(endpoint.scrapes).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the test output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> MetricsEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(sample: str) -> m.MetricSpec | None:
    """The contract metric a sample belongs to (a histogram's _bucket, _sum and _count too)."""
    if sample in m.BY_NAME:
        return m.BY_NAME[sample]
    for suffix in ("_bucket", "_sum", "_count"):
        spec = m.BY_NAME.get(sample.removesuffix(suffix))
        if sample.endswith(suffix) and spec is not None and spec.kind == "histogram":
            return spec
    return None


def exposition(
    samples: Sequence[tuple[str, Mapping[str, str], float]], host: str | None = None
) -> str:
    """Prometheus text format for (name, labels, value) samples, with # TYPE lines; ``host``:
    every sample labelled with it first, as both services label theirs."""
    lines: list[str] = []
    typed: set[str] = set()
    for name, own, value in samples:
        labels = {HOST_LABEL: host, **own} if host is not None else own
        spec = _family(name)
        family = spec.name if spec is not None else name
        if family not in typed:
            lines.append(f"# TYPE {family} {spec.kind if spec is not None else 'untyped'}")
            typed.add(family)
        pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        number = str(int(value)) if float(value).is_integer() else repr(float(value))
        lines.append(f"{name}{{{pairs}}} {number}" if pairs else f"{name} {number}")
    return "\n".join(lines) + "\n"


LADDER = (
    ("llama3.2:3b", 2048),
    ("phi3:mini", 2200),
    ("tinyllama:1.1b", 637),
    ("qwen2.5:0.5b", 397),
)


def exporter_exposition(scrape: int, host: str = HOST) -> str:
    """Every exporter metric of the contract for fleet "default" on GPU "0" of ``host``;
    counters grow."""
    gpu = {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000", "name": "Fake T4"}
    total = 16 * GIB
    used = 6 * GIB + scrape * 10 * MIB
    ollama = {"fleet": "default", "container": "ollama"}
    samples: list[tuple[str, Mapping[str, str], float]] = [
        (m.GPU_MEMORY_TOTAL, gpu, total),
        (m.GPU_MEMORY_USED, gpu, used),
        (m.GPU_MEMORY_FREE, gpu, total - used),
        # The process metric names the container, not the fleet.
        (m.GPU_PROCESS_MEMORY, {"gpu": "0", "pid": "4242", "container": "ollama"}, used),
        (m.NVML_UP, {}, 1),
    ]
    samples += [
        (m.VRAM_ERRORS, {**ollama, "kind": kind.name}, scrape if i == 0 else 0)
        for i, kind in enumerate(ERROR_KINDS)
    ]
    samples += [
        (m.VRAM_ERRORS_SINCE_START, ollama, 3),
        (m.VRAM_ERRORS_CONSECUTIVE, ollama, 3),
        (m.LOG_LINES, ollama, 10 * scrape),
        (m.LOG_STREAM_UP, ollama, 1),
        (m.LOG_STREAM_RECONNECTS, ollama, 0),
        (m.CONTAINER_START_INFO, {**ollama, "started_at": "2026-11-27T10:00:00Z"}, 1),
        (m.CONTAINER_START_TIME, ollama, 1795773600.0),  # the same start
        (m.EXPORTER_DOCKER_UP, {}, 1),
        (f"{m.EXPORTER_SCRAPE_DURATION}_bucket", {"le": "0.01"}, scrape),
        (f"{m.EXPORTER_SCRAPE_DURATION}_bucket", {"le": "+Inf"}, scrape),
        (f"{m.EXPORTER_SCRAPE_DURATION}_sum", {}, 0.002 * scrape),
        (f"{m.EXPORTER_SCRAPE_DURATION}_count", {}, scrape),
    ]
    # The model server's view (/api/ps and the probe): phi3:mini, a quarter of it offloaded.
    model = {"fleet": "default", "model": LADDER[1][0]}
    size = LADDER[1][1] * MIB
    samples += [
        (m.MODEL_SERVER_UP, {"fleet": "default"}, 1),
        (m.MODEL_MEMORY, {**model, "location": "vram"}, size - size // 4),
        (m.MODEL_MEMORY, {**model, "location": "system"}, size // 4),
        (m.PROBE_SUCCESS, model, 1),
        (m.PROBE_DURATION, model, 0.25),
        (m.PROBE_TOKENS_PER_SECOND, model, 40.0 + scrape % 5),
    ]
    return exposition(samples, host)


def remediator_exposition(
    scrape: int, now: Callable[[], float] = time.time, host: str = HOST
) -> str:
    """Every remediator metric of the contract: fleet "default" of ``host`` on phi3:mini;
    counters grow."""
    current = 1
    fleet = {"fleet": "default"}
    samples: list[tuple[str, Mapping[str, str], float]] = [
        (m.CURRENT_MODEL_INFO, {**fleet, "model": LADDER[current][0]}, 1),
        (m.CURRENT_MODEL_INDEX, fleet, current),
        (m.LADDER_SIZE, fleet, len(LADDER)),
        (m.CAN_DOWNGRADE, fleet, 1),
        (m.OFFLOAD_TOLERANCE, fleet, 0.1),
        (m.VRAM_ERROR_COUNTING, {**fleet, "counting": "consecutive"}, 1),
    ]
    samples += [
        (m.LADDER_MODEL_BYTES, {**fleet, "model": name, "rung": str(i)}, mb * MIB)
        for i, (name, mb) in enumerate(LADDER)
    ]
    samples += [
        (m.NEXT_LARGER_MODEL_BYTES, {**fleet, "gpu": "0"}, LADDER[0][1] * MIB),
        (m.SWITCHES, {**fleet, "direction": "down", "trigger": "alert"}, scrape),
        (m.REMEDIATION_FAILURES, {**fleet, "step": "pull"}, scrape // 2),
        (m.WEBHOOK_REQUESTS, {"outcome": "accepted"}, scrape),
        (m.ALERTS_DEFERRED, {**fleet, "reason": "cooldown"}, scrape // 2),
        (m.NOTIFICATIONS, {"outcome": "forwarded"}, scrape // 3),
        (m.LAST_SWITCH_TIMESTAMP, fleet, round(now()) - 30),
    ]
    return exposition(samples, host)


def sample_values(text: str, name: str, **labels: str) -> list[float]:
    """Values of the samples called ``name`` whose labels include ``labels``, from /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out.append(float(s.value))
    return out
