"""Bounded work per request: ``/healthz`` p99 under 1,000 slow clients and under a 10,000-alert
delivery, against the remediator under gunicorn (default settings) on 127.0.0.1.

Slow clients are sockets that send half a request (a request line and one header) and stall.
The service drops them (its read timeout, remediator/http/worker.py); each dropped one is
replaced at once, so ``clients`` of them stay connected for ``hold`` seconds, after which they
close: the run is bounded in time. Meanwhile /healthz is probed and one Alertmanager delivery
is sent, which must switch the fleet. Prints figures, no pass/fail.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import statistics
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
HALF_REQUEST = b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\n"


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


class SlowClients:
    """``n`` connections that each send half a request and stall, replaced when dropped."""

    def __init__(self, url: str, n: int) -> None:
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._n = n
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self.held: list[float] = []  # seconds the service kept each one it dropped
        self.failed = 0  # connections that could not be opened
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        for _ in range(self._n):
            self._open()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    @property
    def connected(self) -> int:
        """How many are connected now."""
        return len(self._selector.get_map())

    def _open(self) -> None:
        try:
            sock = socket.create_connection(self._address, timeout=5)
            sock.sendall(HALF_REQUEST)
        except OSError:
            self.failed += 1
            return
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, time.monotonic())

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if data:
                    continue  # an answer; the close follows
                self._selector.unregister(sock)
                sock.close()
                self.held.append(time.monotonic() - key.data)
                if not self._stop.is_set():
                    self._open()


def raise_file_limit(needed: int) -> int:
    """Raise this process's descriptor limit to ``needed`` where the hard limit allows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def delivery(n: int) -> bytes:
    """An Alertmanager delivery of ``n`` step-down alerts for the fleet, started now."""
    body = json.loads((REPO / "tests" / "data" / "alertmanager_firing.json").read_text())
    one = body["alerts"][0]
    one["startsAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    body["alerts"] = [{**one, "fingerprint": f"{i:016x}"} for i in range(n)]
    return json.dumps(body).encode()


def post(url: str, payload: bytes, answer: dict[str, float | int]) -> None:
    """POST one delivery; ``answer`` gets its code and seconds."""
    started = time.perf_counter()
    try:
        code = requests.post(
            url + "/webhook/alertmanager",
            data=payload,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=60,
        ).status_code
    except requests.RequestException:
        code = 599
    answer.update(code=code, seconds=time.perf_counter() - started)


def switches(url: str, wait: float = 10.0) -> int | None:
    """The switches in the history, once there is one or ``wait`` is over; None when the
    service does not answer."""
    deadline = time.monotonic() + wait
    while True:
        try:
            history = requests.get(url + "/history", timeout=10).json()
        except requests.RequestException:
            return None
        if history or time.monotonic() > deadline:
            return len(history)
        time.sleep(0.2)


def under_slow_clients(url: str, clients: int, probes: int, hold: float) -> list[Row]:
    """/healthz and one delivery while ``clients`` slow clients stay connected."""
    answer: dict[str, float | int] = {}
    began = time.monotonic()
    with SlowClients(url, clients) as slow:
        time.sleep(0.5)
        connected = slow.connected
        poster = threading.Thread(target=post, args=(url, delivery(1), answer))
        poster.start()
        latencies, failed = probe(url, probes)
        poster.join()
        acted = switches(url)
        time.sleep(max(0.0, hold - (time.monotonic() - began)))
        held, not_opened = list(slow.held), slow.failed
    name = "bounded work (gunicorn defaults)"
    label = f"{clients:,} slow clients"
    dropped = (
        f"{len(held):,}, held median {statistics.median(held):.1f} s, max {max(held):.1f} s"
        if held
        else "0"
    )
    p99 = f"{percentile(latencies, 99) * 1000:.1f} ms"
    return [
        Row(name, f"/healthz p99, {label}", p99, "< 100 ms"),
        Row(name, f"/healthz failed, {label}", str(failed), "0"),
        Row(name, f"{label}: connected at the start (not opened)", f"{connected} ({not_opened})"),
        Row(name, f"{label}: dropped by the service in {hold:g} s (replaced)", dropped),
        Row(
            name,
            f"{label}: a delivery meanwhile",
            f"{answer.get('code')} in {float(answer.get('seconds', 0)):.2f} s, "
            f"{'no answer from /history' if acted is None else f'{acted} switch(es)'}",
            "202, 1 switch",
        ),
    ]


def run(
    clients: int = 1000, alerts: int = 10_000, probes: int = 200, hold: float = 20.0
) -> list[Row]:
    """Measure and return the figures."""
    raise_file_limit(clients + 256)
    rows: list[Row] = []
    name = "bounded work (gunicorn defaults)"
    with (
        tempfile.TemporaryDirectory(prefix="mf-bench-limits-") as tmp,
        FakeOllama(models={"llama3.2:3b": 2048 << 20}) as ollama,
    ):
        # One service for the slow clients and their delivery, a fresh one (no cooldown to
        # wait out) for the large delivery.
        for phase in ("slow", "large"):
            workdir = Path(tmp) / phase
            workdir.mkdir()
            remediator = start_remediator(workdir, ollama.url, TOKEN, log_level="warning")
            try:
                if phase == "slow":
                    base, base_failed = probe(remediator.url, probes)
                    rows.append(
                        Row(
                            name,
                            "/healthz p99, idle",
                            f"{percentile(base, 99) * 1000:.1f} ms",
                            "< 100 ms",
                        )
                    )
                    rows.append(Row(name, "/healthz failed, idle", str(base_failed), "0"))
                    rows += under_slow_clients(remediator.url, clients, probes, hold)
                    continue
                payload = delivery(alerts)
                answer: dict[str, float | int] = {}
                poster = threading.Thread(target=post, args=(remediator.url, payload, answer))
                poster.start()
                batch, batch_failed = probe(remediator.url, probes)
                poster.join()
                acted = switches(remediator.url)
            finally:
                remediator.stop()
    label = f"{alerts:,}-alert delivery"
    rows += [
        Row(name, f"/healthz p99, {label}", f"{percentile(batch, 99) * 1000:.1f} ms", "< 100 ms"),
        Row(name, f"/healthz failed, {label}", str(batch_failed), "0"),
        Row(
            name,
            f"{label}: answer",
            f"{answer.get('code')} in {float(answer.get('seconds', 0)):.2f} s",
        ),
        Row(name, f"{label}: switches", str(acted), "1"),
        Row(name, f"{label}: body", f"{len(payload) / 1e6:.1f} MB"),
    ]
    return rows


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--hold", type=float, default=20.0)
    args = parser.parse_args()
    print(table(run(args.clients, args.alerts, args.probes, args.hold)))


if __name__ == "__main__":
    main()
