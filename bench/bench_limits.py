"""Bounded work per request: ``/healthz`` p99 under 100 slow clients and under a 10,000-alert
delivery, against the remediator under gunicorn (default settings) on 127.0.0.1.

Slow clients are sockets that send half a request (a request line and one header) and hold
it for ``hold`` seconds, then close: the run is bounded in time. Prints figures, no pass/fail.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from bench.common import Row, percentile, table
from simulator.fake_ollama import FakeOllama
from simulator.services import start_remediator

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def probe(url: str, count: int, pause: float = 0.02) -> tuple[list[float], int]:
    """``count`` GET /healthz, one at a time; latencies and the number that failed or timed out."""
    latencies, failed = [], 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            ok = requests.get(url + "/healthz", timeout=10).status_code == 200
        except requests.RequestException:
            ok = False
        latencies.append(time.perf_counter() - started)
        failed += not ok
        time.sleep(pause)
    return latencies, failed


def slow_clients(url: str, n: int, hold: float) -> list[socket.socket]:
    """Open ``n`` connections that each send half a request and stop."""
    parts = urlsplit(url)
    socks = []
    for _ in range(n):
        s = socket.create_connection((parts.hostname, parts.port), timeout=5)
        s.sendall(b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    threading.Timer(hold, lambda: [s.close() for s in socks]).start()
    return socks


def big_delivery(n: int) -> bytes:
    body = json.loads((REPO / "tests" / "data" / "alertmanager_firing.json").read_text())
    one = body["alerts"][0]
    one["startsAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    body["alerts"] = [{**one, "fingerprint": f"{i:016x}"} for i in range(n)]
    return json.dumps(body).encode()


def run(
    clients: int = 100, alerts: int = 10_000, probes: int = 200, hold: float = 20.0
) -> list[Row]:
    """Measure and return the figures."""
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="mf-bench-limits-") as tmp,
        FakeOllama(models={"llama3.2:3b": 2048 << 20}) as ollama,
    ):
        remediator = start_remediator(Path(tmp), ollama.url, TOKEN, log_level="warning")
        try:
            base, base_failed = probe(remediator.url, probes)
            slow_clients(remediator.url, clients, hold)
            time.sleep(0.5)
            slow, slow_failed = probe(remediator.url, probes)
            time.sleep(max(0.0, hold - 0.5))
            payload = big_delivery(alerts)
            answer: dict[str, float | int] = {}

            def post() -> None:
                started = time.perf_counter()
                code = requests.post(
                    remediator.url + "/webhook/alertmanager",
                    data=payload,
                    headers={
                        "Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "application/json",
                    },
                    timeout=60,
                ).status_code
                answer.update(code=code, seconds=time.perf_counter() - started)

            poster = threading.Thread(target=post)
            poster.start()
            batch, batch_failed = probe(remediator.url, probes)
            poster.join()
            time.sleep(1.0)
            history = requests.get(remediator.url + "/history", timeout=10).json()
        finally:
            remediator.stop()
    name = "bounded work (gunicorn defaults)"
    for label, lat, failed in (
        ("idle", base, base_failed),
        (f"{clients} slow clients", slow, slow_failed),
        (f"{alerts:,}-alert delivery", batch, batch_failed),
    ):
        rows.append(
            Row(name, f"/healthz p99, {label}", f"{percentile(lat, 99) * 1000:.1f} ms", "< 100 ms")
        )
        rows.append(Row(name, f"/healthz failed, {label}", str(failed), "0"))
    rows.append(
        Row(
            name,
            f"{alerts:,}-alert delivery: answer",
            f"{answer.get('code')} in {float(answer.get('seconds', 0)):.2f} s",
        )
    )
    rows.append(Row(name, f"{alerts:,}-alert delivery: switches", str(len(history)), "1"))
    rows.append(Row(name, f"{alerts:,}-alert delivery: body", f"{len(payload) / 1e6:.1f} MB"))
    return rows


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--hold", type=float, default=20.0)
    args = parser.parse_args()
    print(table(run(args.clients, args.alerts, args.probes, args.hold)))


if __name__ == "__main__":
    main()
