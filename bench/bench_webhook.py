"""Webhook storm: the same alert delivered 2,000 times by 50 concurrent clients, under gunicorn.

Prints requests per second, p50/p99 latency, the count of 5xx answers (must be 0) and the
number of switches (must be 1). All traffic goes to 127.0.0.1; the run is bounded in count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.common import Row, percentile, table
from simulator.fake_ollama import FakeOllama
from simulator.services import start_remediator

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def storm(
    url: str, body: dict[str, object], total: int, clients: int
) -> tuple[list[float], list[int], float]:
    """Send ``total`` deliveries from ``clients`` threads; return latencies, codes, wall time."""
    latencies: list[float] = []
    codes: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))
    payload = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            started = time.perf_counter()
            try:
                code = session.post(
                    url + "/webhook/alertmanager", data=payload, headers=headers, timeout=30
                ).status_code
            except requests.RequestException:
                code = 599
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


def run(total: int = 2000, clients: int = 50, workers: int = 3) -> list[Row]:
    """Run the storm and return its figures."""
    body = json.loads((REPO / "tests" / "data" / "alertmanager_firing.json").read_text())
    body["alerts"][0]["startsAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    with (
        tempfile.TemporaryDirectory(prefix="mf-bench-webhook-") as tmp,
        FakeOllama(models={"llama3.2:3b": 2048 << 20}) as ollama,
    ):
        remediator = start_remediator(
            Path(tmp), ollama.url, TOKEN, workers=workers, log_level="warning"
        )
        try:
            latencies, codes, wall = storm(remediator.url, body, total, clients)
            time.sleep(1.0)  # let the background switch finish before counting
            history = requests.get(remediator.url + "/history", timeout=10).json()
        finally:
            remediator.stop()
    errors = sum(1 for c in codes if c >= 500)
    name = f"webhook storm ({total} deliveries, {clients} clients, gunicorn {workers} workers)"
    return [
        Row(name, "requests/s", f"{total / wall:.0f}"),
        Row(name, "latency p50", f"{percentile(latencies, 50) * 1000:.1f} ms"),
        Row(name, "latency p99", f"{percentile(latencies, 99) * 1000:.1f} ms"),
        Row(name, "5xx answers", str(errors), "0"),
        Row(name, "switches", str(len(history)), "1"),
        Row(name, "answers other than 202", str(sum(1 for c in codes if c != 202)), "0"),
    ]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    print(table(run(args.total, args.clients, args.workers)))


if __name__ == "__main__":
    main()
