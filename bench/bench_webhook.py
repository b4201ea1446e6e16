"""Webhook storm: the same alert delivered 2,000 times by 50 concurrent clients, under gunicorn.

Prints requests per second, p50/p99 latency, the count of 5xx answers (must be 0) and the
number of switches (must be 1), then the same storm of ``GET /healthz`` on the same server:
the floor this machine and client reach at all. All traffic goes to 127.0.0.1; the run is
bounded in count.

The clients are threads of this one process, each with its own kept-alive connection. With
``http.client`` (the default) a request costs the client about 150 us of CPU; with
``requests`` (``--client requests``, the client of earlier runs) about 650 us, and 50 such
threads then hold this process's GIL nearly all the time on a 2-core machine: the figures
measure the client more than the server (a /healthz storm had p99 about 85 ms).
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests

from bench.common import Row, percentile, table
from simulator.fake_ollama import FakeOllama
from simulator.services import start_remediator

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


Send = Callable[[], int]


def http_client(url: str, path: str, payload: bytes | None) -> Send:
    """One kept-alive connection with ``http.client``: POST ``payload`` (GET when None)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def send() -> int:
        try:
            if payload is None:
                conn.request("GET", path)
            else:
                conn.request("POST", path, body=payload, headers=headers)
            with conn.getresponse() as resp:
                resp.read()
                return resp.status
        except (OSError, http.client.HTTPException):
            conn.close()  # the next request reconnects
            return 599

    return send


def requests_client(url: str, path: str, payload: bytes | None) -> Send:
    """One kept-alive ``requests`` session: POST ``payload`` (GET when None)."""
    session = requests.Session()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def send() -> int:
        try:
            if payload is None:
                return session.get(url + path, timeout=30).status_code
            return session.post(url + path, data=payload, headers=headers, timeout=30).status_code
        except requests.RequestException:
            return 599

    return send


CLIENTS: dict[str, Callable[[str, str, bytes | None], Send]] = {
    "http.client": http_client,
    "requests": requests_client,
}


def storm(
    connect: Callable[[], Send], total: int, clients: int
) -> tuple[list[float], list[int], float]:
    """Send ``total`` requests from ``clients`` threads; return latencies, codes, wall time."""
    latencies: list[float] = []
    codes: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        send = connect()
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            started = time.perf_counter()
            code = send()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                codes.append(code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, codes, time.perf_counter() - began


def run(
    total: int = 2000, clients: int = 50, workers: int = 3, client: str = "http.client"
) -> list[Row]:
    """Run the storm, then the /healthz storm, and return their figures."""
    body = json.loads((REPO / "tests" / "data" / "alertmanager_firing.json").read_text())
    body["alerts"][0]["startsAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    payload = json.dumps(body).encode()
    make = CLIENTS[client]
    with (
        tempfile.TemporaryDirectory(prefix="mf-bench-webhook-") as tmp,
        FakeOllama(models={"llama3.2:3b": 2048 << 20}) as ollama,
    ):
        remediator = start_remediator(
            Path(tmp), ollama.url, TOKEN, workers=workers, log_level="warning"
        )
        try:
            latencies, codes, wall = storm(
                lambda: make(remediator.url, "/webhook/alertmanager", payload), total, clients
            )
            time.sleep(1.0)  # let the background switch finish before counting
            history = requests.get(remediator.url + "/history", timeout=10).json()
            floor, floor_codes, floor_wall = storm(
                lambda: make(remediator.url, "/healthz", None), total, clients
            )
        finally:
            remediator.stop()
    errors = sum(1 for c in codes if c >= 500)
    name = (
        f"webhook storm ({total} deliveries, {clients} clients, gunicorn {workers} workers, "
        f"{client})"
    )
    floor_errors = sum(1 for c in floor_codes if c != 200)
    return [
        Row(name, "requests/s", f"{total / wall:.0f}"),
        Row(name, "latency p50", f"{percentile(latencies, 50) * 1000:.1f} ms"),
        Row(name, "latency p99", f"{percentile(latencies, 99) * 1000:.1f} ms", "< 50 ms"),
        Row(name, "5xx answers", str(errors), "0"),
        Row(name, "switches", str(len(history)), "1"),
        Row(name, "answers other than 202", str(sum(1 for c in codes if c != 202)), "0"),
        Row(
            name,
            "same storm of GET /healthz: requests/s, p50, p99",
            f"{total / floor_wall:.0f}, {percentile(floor, 50) * 1000:.1f} ms, "
            f"{percentile(floor, 99) * 1000:.1f} ms ({floor_errors} not 200)",
        ),
    ]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--client", choices=sorted(CLIENTS), default="http.client")
    args = parser.parse_args()
    print(table(run(args.total, args.clients, args.workers, args.client)))


if __name__ == "__main__":
    main()
