"""Pure decoding speed of ContainerLog.feed: microseconds per line, no Docker.

A framed buffer like Docker's logs API sends (``timestamps=1``, nanosecond timestamps, the
bench's 100-byte Ollama line, 0.1% error lines) fed in the follower's chunks to a live stream,
as a followed container's log is. The best of several runs (process CPU time).

Run from the repository root: ``.venv/bin/python -m bench.bench_decode [--lines N]``.
"""

from __future__ import annotations

import argparse
import gc
import struct
import sys
import time
from collections.abc import Sequence

from exporter.classifier import LogClassifier
from exporter.containerlog import FEED_SIZE, ContainerLog
from exporter.timestamps import format_since

BASE_NS = 1_772_461_211_000_000_000
LINE = 'time=2026-03-02T14:20:11.512Z level=INFO source=server.go:622 msg="llama runner started"'


def framed(lines: int) -> bytes:
    """``lines`` frames about 9.7 us apart, one in 1,000 an out-of-memory error."""
    parts = []
    for i in range(lines):
        stamp = format_since(BASE_NS + i * 9_731).encode()  # seconds.nanoseconds
        seconds, _, nanos = stamp.partition(b".")
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(seconds))).encode()
        msg = (
            b"CUDA error: out of memory" if i % 1000 == 500 else b"%s line=%d" % (LINE.encode(), i)
        )
        body = ts + b"." + nanos + b"Z " + msg + b"\n"
        parts.append(struct.pack(">BxxxL", 1, len(body)) + body)
    return b"".join(parts)


def us_per_line(lines: int, runs: int) -> float:
    """The best of ``runs`` decodes of a ``lines``-line buffer, in microseconds per line."""
    buf = framed(lines)
    chunks = [buf[i : i + FEED_SIZE] for i in range(0, len(buf), FEED_SIZE)]
    best = float("inf")
    for _ in range(runs):
        log = ContainerLog(LogClassifier(), live_since_ns=0, window_ns=0)
        log.begin_stream(tty=False)
        gc.collect()
        started = time.process_time()
        counted = sum(log.feed(chunk).lines for chunk in chunks)
        best = min(best, time.process_time() - started)
        assert counted == lines, counted
    return best / lines * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    """Print the decoding speed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)
    print(f"decode: {us_per_line(args.lines, args.runs):.2f} us/line ({args.lines:,} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
