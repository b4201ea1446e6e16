"""Docker's log stream (HTTP chunks of log frames) decoded and counted exactly across splits,
reconnects and runs.

These tests count with an incident window of 0, where every matching line is an error of its
own, so that each line's count shows; tests/test_exporter_incidents.py groups them."""

from __future__ import annotations

import calendar
import random
import struct
import time

import pytest

from exporter.classifier import LogClassifier
from exporter.containerlog import ContainerLog
from exporter.runs import RUN_START_SLACK_NS, RunState, RunTracker, boundary_from_history
from exporter.timestamps import TimestampError, format_since, is_zero_time, parse_timestamp

OOM = b"ggml_backend_cuda_buffer_type_alloc_buffer: allocating 3257.82 MiB on device 0: cudaMalloc failed: out of memory\n"  # noqa: E501
TIMEOUT = b'level=WARN source=sched.go:646 msg="gpu VRAM usage didn\'t recover within timeout"\n'
NORMAL = b'level=INFO source=server.go:622 msg="llama runner started in 3.83 seconds"\n'
BASE_NS = calendar.timegm((2026, 3, 2, 14, 20, 0)) * 1_000_000_000


def stamp(ns: int) -> bytes:
    """Docker's RFC3339NanoFixed, as the logs API writes it."""
    date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
    return f"{date}.{ns % 1_000_000_000:09d}Z".encode()


def frame(ns: int, msg: bytes, stream: int = 1) -> bytes:
    payload = stamp(ns) + b" " + msg
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def make_log(live_since_ns: int = 0) -> ContainerLog:
    log = ContainerLog(LogClassifier(), live_since_ns, window_ns=0)
    log.start_run(None)
    log.begin_stream(tty=False)
    return log


def feed_all(log: ContainerLog, data: bytes, splits: list[int]) -> tuple[int, dict[str, int]]:
    """Lines and errors the pieces added; with a window of 0, errors and error lines agree."""
    lines = 0
    errors = {"oom": 0, "system_memory": 0, "vram_recovery_timeout": 0}
    error_lines = dict(errors)
    pos = 0
    for cut in [*splits, len(data)]:
        tally = log.feed(data[pos:cut])
        lines += tally.lines
        for k, v in tally.errors.items():
            errors[k] += v
        for k, v in tally.error_lines.items():
            error_lines[k] += v
        pos = cut
    assert error_lines == errors
    return lines, errors


def test_any_split_of_the_stream_gives_the_same_counts() -> None:
    rng = random.Random(7)
    messages = [rng.choice([OOM, TIMEOUT, NORMAL, NORMAL, NORMAL]) for _ in range(400)]
    data = b"".join(frame(BASE_NS + i * 1000, m, stream=1 + i % 2) for i, m in enumerate(messages))
    expected = {
        "oom": messages.count(OOM),
        "system_memory": 0,
        "vram_recovery_timeout": messages.count(TIMEOUT),
    }
    for _ in range(5):
        splits = sorted(rng.sample(range(1, len(data)), 60))
        log = make_log()
        assert feed_all(log, data, splits) == (400, expected)
        assert log.since_start == expected["oom"] + expected["vram_recovery_timeout"]
        assert log.cursor is not None and log.cursor.timestamp == stamp(BASE_NS + 399 * 1000)


def test_a_resumed_stream_skips_exactly_what_was_counted() -> None:
    # Three frames share one nanosecond: the resume point is inside that group. Docker answers
    # since=<that instant> with every frame from the instant on (since is inclusive).
    times = [BASE_NS, BASE_NS + 5, BASE_NS + 5, BASE_NS + 5, BASE_NS + 9, BASE_NS + 9]
    msgs = [OOM, NORMAL, OOM, TIMEOUT, OOM, NORMAL]
    frames = [frame(t, m) for t, m in zip(times, msgs, strict=True)]
    log = make_log()
    first = log.feed(b"".join(frames[:3]))  # up to the second frame at BASE_NS + 5
    assert (first.lines, first.errors["oom"], first.error_lines["oom"]) == (3, 2, 2)
    assert log.since_param() == format_since(BASE_NS + 5)

    log.begin_stream(tty=False)  # the reconnect
    replay = b"".join(f for f, t in zip(frames, times, strict=True) if t >= BASE_NS + 5)
    second = log.feed(replay)
    assert (second.lines, second.errors) == (
        3,
        {"oom": 1, "system_memory": 0, "vram_recovery_timeout": 1},
    )
    assert second.error_lines == second.errors
    assert log.since_start == 4
    assert log.cursor is not None and log.cursor.count == 2  # both frames at BASE_NS + 9

    log.begin_stream(tty=False)  # reconnect again, nothing new: nothing counted
    again = log.feed(b"".join(frames[4:]))
    assert again.lines == 0 and log.since_start == 4


def test_a_long_line_split_into_partial_frames_is_one_line() -> None:
    # Docker cuts messages at 16 KiB; only the last part ends with a newline.
    head = b"x" * 16384
    log = make_log()
    data = (
        frame(BASE_NS, head)
        + frame(BASE_NS + 1, b"y" * 16381 + b"cudaMalloc fa")
        + frame(BASE_NS + 2, b"iled: out of memory\n")
        + frame(BASE_NS + 3, NORMAL)
    )
    lines, errors = feed_all(log, data, [100, 16500, 33000])
    assert (lines, errors["oom"]) == (2, 1)


def test_a_new_run_counts_only_its_own_lines() -> None:
    log = make_log()
    log.feed(frame(BASE_NS, OOM) + frame(BASE_NS + 10, OOM))
    assert log.since_start == 2
    # the container restarted: its previous run ended at BASE_NS + 20
    log.start_run(BASE_NS + 20)
    assert log.since_start == 0
    tally = log.feed(frame(BASE_NS + 30, TIMEOUT) + frame(BASE_NS + 40, NORMAL))
    assert log.since_start == 1
    assert tally.errors == {"oom": 0, "system_memory": 0, "vram_recovery_timeout": 1}


def test_lines_from_before_the_exporter_started_count_for_since_start_only() -> None:
    log = make_log(live_since_ns=BASE_NS + 25)
    data = b"".join(frame(BASE_NS + i * 10, OOM) for i in range(6))  # 0, 10, ..., 50
    lines, errors = feed_all(log, data, [])
    assert (lines, errors["oom"]) == (3, 3)  # stamped 30, 40, 50
    assert log.since_start == 6


def test_a_last_line_without_newline_counts_once_when_the_run_ends() -> None:
    log = make_log()
    log.feed(frame(BASE_NS, NORMAL) + frame(BASE_NS + 1, b"CUDA error: out of memory"))
    # the stream broke while the container kept running: the partial line is dropped...
    assert log.end_stream(run_over=False).errors["oom"] == 0
    log.begin_stream(tty=False)
    # ...and read again from the cursor, then completed when the container stops
    log.feed(frame(BASE_NS + 1, b"CUDA error: out of memory"))
    tally = log.end_stream(run_over=True)
    assert (tally.lines, tally.errors["oom"], tally.error_lines["oom"]) == (1, 1, 1)
    assert log.since_start == 1


def test_tty_streams_have_no_frame_headers() -> None:
    log = ContainerLog(LogClassifier(), 0, window_ns=0)
    log.start_run(None)
    log.begin_stream(tty=True)
    text = b"".join(stamp(BASE_NS + i) + b" " + m for i, m in enumerate([NORMAL, OOM, TIMEOUT]))
    lines, errors = feed_all(log, text, [10, 50, 130])
    assert (lines, errors) == (
        3,
        {"oom": 1, "system_memory": 0, "vram_recovery_timeout": 1},
    )
    log.begin_stream(tty=True)
    assert log.feed(text).lines == 0  # a resumed stream repeats nothing


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-03-02T14:20:00.000000001Z", BASE_NS + 1),
        ("2026-03-02T14:20:00.5Z", BASE_NS + 500_000_000),  # Go trims trailing zeros
        ("2026-03-02T14:20:00Z", BASE_NS),
        ("2026-03-02T16:20:00.25+02:00", BASE_NS + 250_000_000),
    ],
)
def test_parse_timestamp(text: str, ns: int) -> None:
    assert parse_timestamp(text) == ns
    assert parse_timestamp(text.encode()) == ns


def test_timestamp_helpers() -> None:
    assert format_since(BASE_NS + 42) == f"{BASE_NS // 1_000_000_000}.000000042"
    assert is_zero_time("0001-01-01T00:00:00Z") and not is_zero_time("2026-03-02T14:20:00Z")
    with pytest.raises(TimestampError):
        parse_timestamp("yesterday")


def test_runs_begin_after_the_previous_run_ended() -> None:
    log = make_log()
    runs = RunTracker(log)
    never = RunState(running=False, started_at="0001-01-01T00:00:00Z")
    assert runs.idle(never) and not runs.observe(never, lambda: None)
    first = RunState(True, stamp(BASE_NS + 100).decode(), "0001-01-01T00:00:00Z")
    assert runs.observe(first, lambda: None) and log.boundary_ns is None  # its only run
    assert runs.same_run(first) and not runs.idle(first)
    log.feed(frame(BASE_NS + 200, OOM))
    stopped = RunState(False, first.started_at, stamp(BASE_NS + 300).decode())
    assert runs.stream_ended(stopped) is True and runs.idle(stopped)  # read to its end
    assert runs.stream_ended(first) is False  # same run still up: a broken stream
    second = RunState(True, stamp(BASE_NS + 400).decode(), stopped.finished_at)
    assert runs.observe(second, lambda: None)
    assert log.boundary_ns == BASE_NS + 300 and log.since_start == 0
    assert runs.started_ns == BASE_NS + 400


@pytest.mark.parametrize(
    ("history", "boundary"),
    [
        ([("create", BASE_NS), ("die", BASE_NS + 10), ("die", BASE_NS + 50)], BASE_NS + 10),
        ([("create", BASE_NS)], None),  # the whole history: it ran once
        ([], BASE_NS + 20 - RUN_START_SLACK_NS),  # history lost: just before StartedAt
        (None, BASE_NS + 20 - RUN_START_SLACK_NS),  # no history at all
    ],
)
def test_a_stopped_containers_last_run_from_its_history(
    history: list[tuple[str, int]] | None, boundary: int | None
) -> None:
    # the last run started at BASE_NS + 20 and ended at BASE_NS + 50
    assert boundary_from_history(lambda: history, BASE_NS + 20, BASE_NS + 50) == boundary
