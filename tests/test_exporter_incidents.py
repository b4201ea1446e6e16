"""Incidents: the matching lines of one failure count as one error (exporter.incidents), on the
lines' own timestamps, the same across splits, reconnects, runs, exporter restarts and scans."""

from __future__ import annotations

import io
import random

import pytest

from exporter.classifier import LogClassifier
from exporter.containerlog import ContainerLog, Tally
from exporter.filescan import scan
from exporter.incidents import DEFAULT_WINDOW_NS, Grouper, RunIncidents, window_ns
from tests.support.exporter_env import DATA
from tests.test_exporter_logstream import BASE_NS, NORMAL, OOM, TIMEOUT, frame, stamp

S = 1_000_000_000
MS = 1_000_000
LOAD_OOM = (DATA / "ollama_load_oom.log").read_bytes().splitlines(keepends=True)
FIRST_LOAD = LOAD_OOM[:13]  # up to the first failed load's "[GIN] ... 500" line
SECOND_LOAD = LOAD_OOM[13:]


def make_log(live_since_ns: int = 0, window: int = DEFAULT_WINDOW_NS) -> ContainerLog:
    log = ContainerLog(LogClassifier(), live_since_ns, window)
    log.start_run(None)
    log.begin_stream(tty=False)
    return log


def frames(lines: list[tuple[int, bytes]]) -> bytes:
    return b"".join(frame(ns, msg) for ns, msg in lines)


def printed(start_ns: int, lines: list[bytes], step_ns: int = 3 * MS) -> list[tuple[int, bytes]]:
    """``lines`` as a container prints them, a few milliseconds apart."""
    return [(start_ns + i * step_ns, line) for i, line in enumerate(lines)]


def total(*tallies: Tally) -> tuple[int, dict[str, int], dict[str, int]]:
    errors = {"oom": 0, "system_memory": 0, "vram_recovery_timeout": 0}
    lines = dict(errors)
    for t in tallies:
        for k, v in t.errors.items():
            errors[k] += v
        for k, v in t.error_lines.items():
            lines[k] += v
    return sum(t.lines for t in tallies), errors, lines


def reference(times_kinds: list[tuple[int, str]], window: int) -> dict[str, int]:
    """The rule, written out plainly: an incident per first line, the window from that line."""
    out = {"oom": 0, "system_memory": 0, "vram_recovery_timeout": 0}
    first: int | None = None
    for ts, kind in times_kinds:
        if first is None or ts - first >= window:
            first = ts
            out[kind] += 1
    return out


def test_two_failed_loads_are_two_errors_of_five_lines() -> None:
    # tests/data/ollama_load_oom.log: two failed loads, printing two and three matching lines.
    log = make_log()
    data = frames(printed(BASE_NS, FIRST_LOAD) + printed(BASE_NS + 30 * S, SECOND_LOAD))
    lines, errors, error_lines = total(log.feed(data))
    assert lines == 24
    assert errors == {"oom": 2, "system_memory": 0, "vram_recovery_timeout": 0}
    assert error_lines == {"oom": 5, "system_memory": 0, "vram_recovery_timeout": 0}
    assert log.since_start == 2


def test_the_window_runs_from_the_first_line_not_from_line_to_line() -> None:
    # An oom every 0.5 s for 5 s: errors that keep coming keep counting, one per window.
    log = make_log()
    lines, errors, error_lines = total(log.feed(frames(printed(BASE_NS, [OOM] * 10, S // 2))))
    assert lines == 10
    assert (errors["oom"], error_lines["oom"], log.since_start) == (3, 10, 3)  # 0 s, 2 s, 4 s


@pytest.mark.parametrize(
    ("gap_ns", "errors"),
    [(DEFAULT_WINDOW_NS - 1, 1), (DEFAULT_WINDOW_NS, 2), (DEFAULT_WINDOW_NS + S, 2)],
)
def test_a_line_at_the_window_or_later_is_a_new_error(gap_ns: int, errors: int) -> None:
    log = make_log()
    tally = log.feed(frames([(BASE_NS, OOM), (BASE_NS + gap_ns, OOM)]))
    assert (tally.errors["oom"], tally.error_lines["oom"], log.since_start) == (errors, 2, errors)


@pytest.mark.parametrize(
    ("first", "second", "kind"), [(OOM, TIMEOUT, "oom"), (TIMEOUT, OOM, "vram_recovery_timeout")]
)
def test_kinds_within_the_window_are_one_error_of_the_first_lines_kind(
    first: bytes, second: bytes, kind: str
) -> None:
    log = make_log()
    tally = log.feed(frames([(BASE_NS, first), (BASE_NS + S, NORMAL), (BASE_NS + S, second)]))
    assert sum(tally.errors.values()) == tally.errors[kind] == 1
    assert tally.error_lines == {
        "oom": 1,
        "system_memory": 0,
        "vram_recovery_timeout": 1,
    }
    assert log.since_start == 1


def test_a_window_of_zero_counts_every_line() -> None:
    # Two lines at one instant (Docker stamps every message to the nanosecond, so two at one
    # instant differ in content: the same timestamp and content is the same line, sent again).
    log = make_log(window=0)
    other_oom = b"CUDA error: out of memory\n"
    tally = log.feed(frames([(BASE_NS, OOM), (BASE_NS, other_oom), (BASE_NS + 1, TIMEOUT)]))
    assert (
        tally.errors
        == tally.error_lines
        == {"oom": 2, "system_memory": 0, "vram_recovery_timeout": 1}
    )
    assert log.since_start == 3


def test_any_split_and_any_reconnect_give_the_same_errors() -> None:
    rng = random.Random(12)
    stream: list[tuple[int, bytes]] = []
    ts = BASE_NS
    at_ts: set[bytes] = set()
    for _ in range(300):
        step = rng.choice([0, 0, 1, 50 * MS, 400 * MS, S, 3 * S])  # runs of equal timestamps too
        msg = rng.choice([OOM, TIMEOUT, NORMAL, NORMAL])
        # Docker stamps each message to the nanosecond: frames at one instant differ in content
        # (the same timestamp and content is one line sent again, exporter.logseen).
        if step == 0 and (msg in at_ts or len(at_ts) == 3):
            others = [m for m in (OOM, TIMEOUT, NORMAL) if m not in at_ts]
            msg, step = (others[0], 0) if others else (msg, 1)
        if step:
            at_ts = set()
        ts += step
        at_ts.add(msg)
        stream.append((ts, msg))
    kinds = {OOM: "oom", TIMEOUT: "vram_recovery_timeout"}
    matching = [(t, kinds[m]) for t, m in stream if m in kinds]
    expected = reference(matching, DEFAULT_WINDOW_NS)
    data = frames(stream)
    for _ in range(8):
        log = make_log()
        tallies = []
        pos = 0
        for cut in [*sorted(rng.sample(range(1, len(data)), 25)), len(data)]:
            tallies.append(log.feed(data[pos:cut]))
            pos = cut
            if rng.random() < 0.3 and log.cursor is not None:
                # the stream breaks; the new one repeats everything from the cursor's instant
                log.end_stream(run_over=False)
                log.begin_stream(tty=False)
                since = int(log.since_param().replace(".", ""))  # type: ignore[union-attr]
                pos = len(frames([(t, m) for t, m in stream if t < since]))
        lines, errors, error_lines = total(*tallies)
        assert lines == len(stream)
        assert errors == expected
        assert error_lines == {k: sum(1 for _, x in matching if x == k) for k in expected}
        assert log.since_start == sum(expected.values())


def test_a_restart_faster_than_the_window_begins_a_new_error() -> None:
    log = make_log()
    log.feed(frames([(BASE_NS, OOM)]))
    log.start_run(BASE_NS + 200 * MS)  # stopped and started again within the window
    tally = log.feed(frames([(BASE_NS + 500 * MS, OOM), (BASE_NS + 600 * MS, OOM)]))
    assert (tally.errors["oom"], tally.error_lines["oom"], log.since_start) == (1, 2, 1)


def test_a_boundary_learned_late_groups_the_run_again() -> None:
    # Read as one run, then the runtime tells that a run ended at +0.2 s.
    run = RunIncidents(DEFAULT_WINDOW_NS)
    for ts in (BASE_NS, BASE_NS + 500 * MS, BASE_NS + 2100 * MS, BASE_NS + 2700 * MS):
        run.add(ts)
    assert run.count == 2  # 0 s (with 0.5 s) and 2.1 s (with 2.7 s)
    run.cut(BASE_NS + 200 * MS)
    assert run.count == 2  # 0.5 s (with 2.1 s) and 2.7 s
    run.cut(BASE_NS + 3 * S)
    assert run.count == 0


def test_a_restarted_exporter_recounts_the_same_errors_and_counts_none_twice() -> None:
    # Two failed loads 1.5 s apart (one incident) then a third 10 s later; the exporter
    # restarts between the first load's two lines.
    stream = (
        printed(BASE_NS, FIRST_LOAD, 100 * MS)
        + printed(BASE_NS + 1500 * MS, SECOND_LOAD)
        + printed(BASE_NS + 10 * S, FIRST_LOAD)
    )
    data = frames(stream)
    restart = next(t for t, m in stream if b"error loading llama server" in m)
    before = make_log()  # the first exporter, until the restart
    _, errors_before, lines_before = total(
        before.feed(frames([x for x in stream if x[0] < restart]))
    )
    after = make_log(live_since_ns=restart)  # the restarted one reads the whole run again
    _, errors_after, lines_after = total(after.feed(data))
    whole = make_log()
    _, errors, error_lines = total(whole.feed(data))
    assert errors == {"oom": 2, "system_memory": 0, "vram_recovery_timeout": 0}
    assert error_lines == {"oom": 7, "system_memory": 0, "vram_recovery_timeout": 0}
    assert after.since_start == whole.since_start == 2
    # The incident open at the restart was counted by the first exporter only.
    assert (errors_before["oom"], errors_after["oom"]) == (1, 1)
    assert (lines_before["oom"], lines_after["oom"]) == (1, 6)


def test_the_counters_group_by_run_when_lines_of_an_old_run_arrive_late() -> None:
    group = Grouper(DEFAULT_WINDOW_NS)
    boundary = BASE_NS + 100 * MS
    assert group.opens(BASE_NS + 50 * MS, boundary)  # the old run's line, read after the restart
    assert group.opens(BASE_NS + 150 * MS, boundary)  # the new run's first line
    assert not group.opens(BASE_NS + 900 * MS, boundary)
    assert window_ns(0.25) == 250 * MS


# --- model-fleet-exporter scan ------------------------------------------------------------------


def scan_bytes(data: bytes, window: float = 2.0, chunk_size: int = 4096) -> tuple[int, ...]:
    result = scan(LogClassifier(), io.BytesIO(data).read, window, chunk_size)
    return (
        result.lines,
        result.incidents["oom"],
        result.error_lines["oom"],
        result.incidents["vram_recovery_timeout"],
        result.error_lines["vram_recovery_timeout"],
    )


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_scan_counts_the_failed_loads_of_ollamas_log_for_any_chunk_size(chunk_size: int) -> None:
    # llama.cpp's line has no time of its own: it takes the time of the server's next line.
    data = b"".join(LOAD_OOM) + (DATA / "ollama_vram_timeout.log").read_bytes()
    # 3 timeouts within 0.5 s, then one on another day
    assert scan_bytes(data, chunk_size=chunk_size) == (33, 2, 5, 2, 4)
    assert scan_bytes(data, window=0, chunk_size=chunk_size) == (33, 5, 5, 4, 4)


def test_scan_reads_dockers_timestamps_and_counts_untimed_lines_alone() -> None:
    docker = (
        stamp(BASE_NS) + b" " + OOM + stamp(BASE_NS + S) + b" " + TIMEOUT
        # nothing on or after these two tells their time
        + stamp(BASE_NS + 9 * S) + b" " + NORMAL + b"CUDA error: out of memory\n" + OOM.rstrip()
    )  # fmt: skip
    assert scan_bytes(docker) == (5, 3, 3, 0, 1)


def test_a_served_request_ends_the_run_of_errors_but_not_its_own_failure() -> None:
    """consecutive: the incidents after the last served request; a served line within the
    window after an error line is that failed request's own (a streamed 200) and ends nothing;
    a later boundary forgets a served request before it."""
    run = RunIncidents(DEFAULT_WINDOW_NS)
    for t in (0, 5):
        run.add(BASE_NS + t * S)
    assert (run.count, run.consecutive) == (2, 2)
    assert not run.served(BASE_NS + 5 * S + S)  # 1 s after the error line: its own 200
    assert run.consecutive == 2
    assert run.served(BASE_NS + 10 * S)
    assert (run.count, run.consecutive) == (2, 0)
    run.add(BASE_NS + 20 * S)
    assert (run.count, run.consecutive) == (3, 1)
    run.cut(BASE_NS + 15 * S)  # the run began after the served request
    assert (run.count, run.consecutive) == (1, 1)
    run.cut(BASE_NS + 30 * S)
    assert (run.count, run.consecutive) == (0, 0)
