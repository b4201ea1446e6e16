"""Webhook storm: the same alert delivered 2,000 times by 50 concurrent clients, under gunicorn.

Prints requests per second, p50/p99 latency, the count of 5xx answers (must be 0) and the
number of switches (must be 1), then the same storm of ``GET /healthz`` on the same server:
the floor this machine and client reach at all. All traffic goes to 127.0.0.1; the run is
bounded in count.

The clients are threads of this one process, each with its own kept-alive connection. With
``http.client`` (the default) a request costs the client about 150 us of CPU; with
``requests`` (``--client requests``, the client of earlier runs) about 650 us, and 50 such
threads then hold this process's GIL nearly all the time on a 2-core machine: the figures
measure the client more than the server (a /healthz storm had p99 about 85 ms). With
``--client ab`` the storm is sent by ApacheBench (``ab -k``, Debian's apache2-utils), a client in
C whose cost per request is a small part of the server's: the figures closest to the server's
own. Each storm also prints the server's CPU time per request (its process group's, from
/proc).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Storm:
    """What one storm measured."""

    per_second: float
    p50_ms: float
    p99_ms: float
    server_errors: int  # 5xx (with ab: every answer that is not 2xx, which it cannot tell apart)
    unexpected: int  # answers other than the one expected (202 or 200)
    server_cpu_us: float  # the server's CPU time per request


def threads_storm(
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


def ab_storm(url: str, payload: bytes | None, total: int, clients: int) -> tuple[float, ...]:
    """The storm sent by ApacheBench with kept-alive connections: requests/s, p50 and p99 in
    ms, the answers that were not 2xx."""
    with tempfile.TemporaryDirectory(prefix="mf-bench-ab-") as tmp:
        argv = ["ab", "-q", "-k", "-c", str(clients), "-n", str(total)]
        argv += ["-H", f"Authorization: Bearer {TOKEN}", "-e", f"{tmp}/pct.csv"]
        if payload is not None:
            Path(tmp, "body.json").write_bytes(payload)
            argv += ["-p", f"{tmp}/body.json", "-T", "application/json"]
        out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
        served = dict(line.split(",") for line in Path(tmp, "pct.csv").read_text().splitlines()[1:])
    per_second = re.search(r"Requests per second:\s+([\d.]+)", out)
    not_2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    # ab counts an answer whose length differs from the first one's as failed ("Length"): the
    # first delivery is accepted, the others are duplicates; only the others count here.
    failed = re.search(r"Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)", out)
    assert per_second is not None, out
    return (
        float(per_second.group(1)),
        float(served["50"]),
        float(served["99"]),
        int(not_2xx.group(1)) if not_2xx else 0,
        sum(int(n) for n in failed.groups()) if failed else 0,
    )


def group_cpu_seconds(pgid: int) -> float:
    """User and system CPU time of the processes in process group ``pgid`` (gunicorn's)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def storm(
    client: str, url: str, path: str, payload: bytes | None, total: int, clients: int, pgid: int
) -> Storm:
    """One storm of ``total`` requests to ``path`` (a POST of ``payload``, or a GET)."""
    expected = 200 if payload is None else 202
    cpu = group_cpu_seconds(pgid)
    if client == "ab":
        per_second, p50, p99, not_2xx, failed = ab_storm(url + path, payload, total, clients)
        cpu_us = (group_cpu_seconds(pgid) - cpu) / total * 1e6
        return Storm(per_second, p50, p99, int(not_2xx), int(not_2xx + failed), cpu_us)
    make = CLIENTS[client]
    latencies, codes, wall = threads_storm(lambda: make(url, path, payload), total, clients)
    cpu_us = (group_cpu_seconds(pgid) - cpu) / total * 1e6
    return Storm(
        total / wall,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
        sum(1 for c in codes if c >= 500),
        sum(1 for c in codes if c != expected),
        cpu_us,
    )


def group_pids(pgid: int) -> list[int]:
    """The processes of process group ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def wait_for_workers(pgid: int, workers: int, timeout: float = 30.0) -> None:
    """Wait until gunicorn's master and all ``workers`` are up and idle: ``/healthz`` answers
    as soon as one worker has loaded the app, while the others may still be importing it (a
    storm sent then meets one worker, not the configured ones)."""
    deadline = time.monotonic() + timeout
    quiet_since, last = time.monotonic(), -1.0
    while time.monotonic() < deadline:
        cpu = group_cpu_seconds(pgid)
        if len(group_pids(pgid)) < workers + 1 or cpu != last:
            quiet_since, last = time.monotonic(), cpu
        elif time.monotonic() - quiet_since >= 0.5:
            return
        time.sleep(0.05)
    raise SystemExit(f"gunicorn's {workers} workers were not all up within {timeout:g} s")


def wait_for_switch(url: str, timeout: float = 30.0) -> int:
    """The number of switches in the history once the storm's switch has committed."""
    deadline = time.monotonic() + timeout
    while True:
        history = requests.get(url + "/history", timeout=10).json()
        if history or time.monotonic() > deadline:
            time.sleep(1.0)  # a second switch, were there one, would have begun by now
            return len(requests.get(url + "/history", timeout=10).json())
        time.sleep(0.1)


def run(
    total: int = 2000, clients: int = 50, workers: int = 3, client: str = "http.client"
) -> list[Row]:
    """Run the storm, then the /healthz storm, and return their figures."""
    if client == "ab" and shutil.which("ab") is None:
        raise SystemExit("--client ab needs ApacheBench (apt-get install apache2-utils)")
    body = json.loads((REPO / "tests" / "data" / "alertmanager_firing.json").read_text())
    body["alerts"][0]["startsAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    payload = json.dumps(body).encode()
    with (
        tempfile.TemporaryDirectory(prefix="mf-bench-webhook-") as tmp,
        FakeOllama(models={"llama3.2:3b": 2048 << 20}) as ollama,
    ):
        remediator = start_remediator(
            Path(tmp), ollama.url, TOKEN, workers=workers, log_level="warning"
        )
        pgid = remediator.proc.pid  # started in a session of its own
        try:
            wait_for_workers(pgid, workers)
            hook = "/webhook/alertmanager"
            first = storm(client, remediator.url, hook, payload, total, clients, pgid)
            switches = wait_for_switch(remediator.url)
            again = storm(client, remediator.url, hook, payload, total, clients, pgid)
            floor = storm(client, remediator.url, "/healthz", None, total, clients, pgid)
        finally:
            remediator.stop()
    name = (
        f"webhook storm ({total} deliveries, {clients} clients, gunicorn {workers} workers, "
        f"{client})"
    )
    return [
        Row(name, "requests/s", f"{first.per_second:.0f}"),
        Row(name, "latency p50", f"{first.p50_ms:.1f} ms"),
        Row(name, "latency p99", f"{first.p99_ms:.1f} ms", "< 50 ms"),
        Row(name, "5xx answers", str(first.server_errors), "0"),
        Row(name, "switches", str(switches), "1"),
        Row(name, "answers other than 202", str(first.unexpected), "0"),
        Row(name, "server CPU per delivery", f"{first.server_cpu_us:.0f} us"),
        Row(
            name,
            "same storm again, all duplicates: requests/s, p50, p99, CPU per delivery",
            f"{again.per_second:.0f}, {again.p50_ms:.1f} ms, {again.p99_ms:.1f} ms, "
            f"{again.server_cpu_us:.0f} us ({again.unexpected} not 202)",
        ),
        Row(
            name,
            "same storm of GET /healthz: requests/s, p50, p99, CPU per request",
            f"{floor.per_second:.0f}, {floor.p50_ms:.1f} ms, {floor.p99_ms:.1f} ms, "
            f"{floor.server_cpu_us:.0f} us ({floor.unexpected} not 200)",
        ),
    ]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--client", choices=[*sorted(CLIENTS), "ab"], default="http.client")
    args = parser.parse_args()
    print(table(run(args.total, args.clients, args.workers, args.client)))


if __name__ == "__main__":
    main()
