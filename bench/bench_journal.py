"""Reading the journal: ``journalctl -o json`` as a child process against python-systemd's
``journal.Reader``, on a real journald (systemd as PID 1 in a locally built container,
simulator.systemd_host).

A unit prints ``--lines`` Ollama-like lines as fast as journald takes them; then each reader
reads all of them as the exporter does (the unit's lines, as ``<RFC 3339> <message>``): the
figure is lines per second and the reading process's CPU per line. Then the live path: the
unit prints a line every 50 ms and each reader, following, receives it; the figure is the delay
from the entry's own timestamp (journald's reception) to the reader's. Both readers run in the
container's Debian python3 (python-systemd is Debian's python3-systemd; on PyPI it builds
against libsystemd's headers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Row, percentile, table

UNIT = "mf-bench-journal.service"
REPO = Path(__file__).resolve().parent.parent
LINE = (
    'time=2026-12-05T09:00:00.000Z level=INFO source=server.go:1332 msg="loading model" '
    '"model layers"=29 requested=-1 n={}'
)


# --- inside the container ----------------------------------------------------------------------


def _format(ns: int, message: bytes) -> bytes:
    from fleet_contract.systemd import rfc3339

    return rfc3339(ns).encode() + b" " + message + b"\n"


def read_journalctl(unit: str, follow_seconds: float = 0.0) -> tuple[int, list[float]]:
    """All of ``unit``'s lines through journalctl, converted as the exporter's source does;
    with ``follow_seconds``, follow that long and return each line's delay too."""
    from exporter.adapters.journalctl import JournalStream

    argv = ["journalctl", "--no-pager", "-q", "-o", "json", "--all"]
    argv += ["--output-fields=MESSAGE,_PID,UNIT", f"_SYSTEMD_UNIT={unit}"]
    if follow_seconds:
        argv += ["--follow", "--lines=0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    stream = JournalStream(proc, unit, None, None, lost=False)
    lines, delays = 0, []
    deadline = time.monotonic() + follow_seconds
    if follow_seconds:
        import threading

        threading.Timer(follow_seconds, stream.interrupt).start()
    while piece := stream.read():
        now = time.time_ns()
        for line in piece.splitlines():
            lines += 1
            if follow_seconds:
                from exporter.timestamps import parse_timestamp

                delays.append((now - parse_timestamp(line.split(b" ", 1)[0])) / 1e6)
        if follow_seconds and time.monotonic() > deadline:
            break
    stream.close()
    return lines, delays


def read_reader(unit: str, follow_seconds: float = 0.0) -> tuple[int, list[float]]:
    """All of ``unit``'s lines through python-systemd's Reader; the same lines and delays."""
    from systemd import journal  # Debian's python3-systemd

    reader = journal.Reader()
    reader.add_match(_SYSTEMD_UNIT=unit)
    if follow_seconds:
        reader.seek_tail()
        reader.get_previous()
    lines, delays, out = 0, [], []
    deadline = time.monotonic() + follow_seconds
    while True:
        entry = reader.get_next()
        if not entry:
            if not follow_seconds or time.monotonic() > deadline:
                break
            reader.wait(0.5)
            continue
        ns = int(entry["__REALTIME_TIMESTAMP"].timestamp() * 1e6) * 1000
        message = entry.get("MESSAGE", "")
        out.append(_format(ns, message.encode() if isinstance(message, str) else bytes(message)))
        lines += 1
        if follow_seconds:
            delays.append((time.time_ns() - ns) / 1e6)
    return lines, delays


def inside(args: argparse.Namespace) -> None:
    """Measure both readers (run inside the container); print JSON."""
    results = {}
    for name, read in (("journalctl", read_journalctl), ("reader", read_reader)):
        cpu, wall = time.process_time(), time.perf_counter()
        children = os.times().children_user + os.times().children_system
        lines, _ = read(UNIT)
        spent = time.process_time() - cpu
        spent += os.times().children_user + os.times().children_system - children
        results[name] = {
            "lines": lines,
            "seconds": time.perf_counter() - wall,
            "cpu_us_per_line": spent / max(1, lines) * 1e6,
        }
    print(json.dumps(results))


def inside_live(args: argparse.Namespace) -> None:
    """Follow while the unit prints a line every 50 ms (run inside the container)."""
    name = args.live
    read = read_journalctl if name == "journalctl" else read_reader
    lines, delays = read(UNIT, follow_seconds=args.seconds)
    print(json.dumps({"lines": lines, "delays_ms": delays}))


# --- on the host -------------------------------------------------------------------------------


def _unit(command: str) -> str:
    escaped = command.replace("$", "$$")  # systemd's own variables are $NAME
    return f"[Service]\nExecStart=/bin/sh -c '{escaped}'\n"


def run(lines: int = 100_000, seconds: float = 10.0) -> list[Row]:
    """Boot the bed, fill the journal, measure both readers; return the figures."""
    import docker

    from simulator.systemd_host import SystemdHost

    python = ["/usr/bin/python3", "-m", "bench.bench_journal"]
    env = {"PYTHONPATH": str(REPO)}
    with SystemdHost(docker.from_env(), name_prefix="mf-bench-journal") as host:
        # journald drops a unit's lines past its rate limit (10,000 in 30 s, scaled by the free
        # disk); LogRateLimitIntervalSec= of the unit did not lift it here: lift it for all.
        host.write_file(
            "/etc/systemd/journald.conf.d/bench.conf", "[Journal]\nRateLimitIntervalSec=0\n"
        )
        host.systemctl("restart", "systemd-journald")
        line = LINE.replace('"', '\\"').replace("{}", "$i")
        fill = f'i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo "{line}"; done; sleep 3600'
        host.install_unit(UNIT, _unit(fill))
        host.systemctl("start", UNIT)
        while int(host.exec("sh", "-c", f"journalctl -q -o cat -u {UNIT} | wc -l").stdout) < lines:
            time.sleep(1)
        bulk = json.loads(host.exec(*python, "--inside", env=env, timeout=600).stdout)
        host.systemctl("stop", UNIT)
        tick = f'i=0; while true; do i=$((i+1)); echo "{line}"; sleep 0.05; done'
        host.install_unit(UNIT, _unit(tick))
        host.systemctl("start", UNIT)
        live = {}
        for name in ("journalctl", "reader"):
            out = host.exec(*python, "--live", name, "--seconds", str(seconds), env=env)
            live[name] = json.loads(out.stdout)
    rows = []
    for name, label in (("journalctl", "journalctl -o json"), ("reader", "journal.Reader")):
        b, f = bulk[name], live[name]
        bench = f"reading the journal, {label}"
        rows.append(Row(bench, f"{b['lines']} lines: lines/s", f"{b['lines'] / b['seconds']:.0f}"))
        rows.append(Row(bench, "CPU per line (reader and child)", f"{b['cpu_us_per_line']:.1f} us"))
        delays = f["delays_ms"] or [float("nan")]
        rows.append(
            Row(
                bench,
                f"following, {f['lines']} lines at 20/s: delay p50, p99",
                f"{percentile(delays, 50):.1f} ms, {percentile(delays, 99):.1f} ms",
            )
        )
    return rows


def main() -> None:
    """Print the table (on the host), or measure (inside the container)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--live", choices=("journalctl", "reader"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
    elif args.live:
        inside_live(args)
    else:
        print(table(run(args.lines, args.seconds)))


if __name__ == "__main__":
    sys.exit(main())
