"""The log watcher through the LogSource seam, with no Docker: a list-backed source drives the
same counting rules as tests/test_exporter_docker.py (restarts, broken streams, an exporter
restarted after history, a source that goes away), and the lines of one failure counted as
one error (exporter.incidents) across all of that."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from exporter.classifier import LogClassifier
from exporter.config import ContainerSelection
from exporter.metrics import LogCollector, LogStore, SeriesSnapshot
from exporter.timestamps import parse_timestamp
from exporter.watcher import LogWatcher
from fleet_contract import metrics as m
from tests.support.exporter_env import wait_for
from tests.support.list_source import ListLogSource

OOM = "CUDA error: out of memory"
TIMEOUT = "gpu VRAM usage didn't recover within timeout"
NORMAL = 'level=INFO msg="llama runner started"'
SERVER = {"model-fleet.role": "ollama", "model-fleet.fleet": "f1"}
S = 1_000_000_000
ZERO = {"oom": 0, "system_memory": 0, "vram_recovery_timeout": 0}

Watch = Callable[..., tuple[LogWatcher, LogStore]]


@pytest.fixture
def source() -> ListLogSource:
    # Each operation 3 s after the last, longer than the incident window (2 s): every error
    # line is an error of its own, but the lines of one same_instant emit are one error.
    return ListLogSource(tick_ns=3 * S)


@pytest.fixture
def watch(source: ListLogSource) -> Iterator[Watch]:
    watchers: list[LogWatcher] = []

    def start(live_since_ns: int | None = None) -> tuple[LogWatcher, LogStore]:
        classifier = LogClassifier()
        store = LogStore(classifier.kinds)
        since = source.now_ns if live_since_ns is None else live_since_ns
        watcher = LogWatcher(ContainerSelection(), classifier, store, source, live_since_ns=since)
        watchers.append(watcher)
        watcher.start()
        return watcher, store

    yield start
    for w in watchers:
        w.stop()


def settled(store: LogStore, name: str, check: Callable[[SeriesSnapshot], bool]) -> SeriesSnapshot:
    def probe() -> SeriesSnapshot | None:
        s = next((s for s in store.snapshot() if s.container == name), None)
        return s if s is not None and check(s) else None

    wait_for(probe, f"{name} in {store.snapshot()}", timeout=10, interval=0.01)
    time.sleep(0.1)  # nothing more may arrive
    s = probe()
    assert s is not None, store.snapshot()
    return s


def test_counts_are_exact_across_restarts_and_broken_streams(
    source: ListLogSource, watch: Watch
) -> None:
    watcher, store = watch()
    source.create("c1", "srv", SERVER)
    started = source.start("c1")
    source.emit("c1", NORMAL, OOM, NORMAL, OOM)
    s = settled(store, "srv", lambda s: s.lines == 4)
    assert (s.fleet, s.errors["oom"], s.error_lines["oom"], s.since_start, s.up, s.started_at) == (
        "f1",
        2,
        2,
        2,
        True,
        started,
    )

    # Many lines share one instant; streams break in the middle: nothing counts twice. The
    # lines of one instant are one error, of the kind of the first.
    for _ in range(5):
        source.emit("c1", NORMAL, OOM, TIMEOUT, same_instant=True)
        assert watcher.interrupt("srv")
    s = settled(store, "srv", lambda s: s.lines == 19)
    assert s.errors == {"oom": 7, "system_memory": 0, "vram_recovery_timeout": 0}
    assert s.error_lines == {
        "oom": 7,
        "system_memory": 0,
        "vram_recovery_timeout": 5,
    }
    assert s.since_start == 7 and s.reconnects >= 1

    source.stop("c1")
    s = settled(store, "srv", lambda s: s.up is False)
    assert s.since_start == 7
    again = source.start("c1")
    source.emit("c1", OOM, NORMAL)
    s = settled(store, "srv", lambda s: s.lines == 21)
    assert (s.errors["oom"], s.error_lines["oom"], s.since_start, s.up, s.started_at) == (
        8,
        8,
        1,
        True,
        again,
    )

    source.remove("c1")
    s = settled(store, "srv", lambda s: s.since_start is None)
    assert s.lines == 21 and s.up is None  # counters stay, the gauges go


def test_a_restart_between_the_look_and_the_stream_starts_the_new_run(
    source: ListLogSource, watch: Watch
) -> None:
    """The follower looks at the container (the old run runs), the container restarts, then
    the stream opens: in the new run, reading the old run's tail and the new lines as one, and
    ending only with the new run. Found as a demo whose exporter kept counting the old run
    after a switch (errors since start never went back to 0)."""
    watcher, store = watch()
    source.create("c1", "srv", SERVER)
    first = source.start("c1")
    source.emit("c1", OOM, OOM)
    s = settled(store, "srv", lambda s: s.lines == 2)
    assert (s.since_start, s.started_at) == (2, first)

    restarted: list[str] = []

    def restart() -> None:
        source.emit("c1", OOM)  # the old run's last failure, read after its end
        source.stop("c1")
        restarted.append(source.start("c1"))

    source.before_next_follow = restart
    assert watcher.interrupt("srv")  # the stream breaks; the follower looks, then reopens
    wait_for(lambda: restarted, "the restart between the look and the stream", timeout=10)
    source.emit("c1", NORMAL, OOM)
    s = settled(store, "srv", lambda s: s.lines == 5)
    assert (s.since_start, s.started_at, s.up) == (1, restarted[0], True)
    assert s.errors["oom"] == 4  # the old run's last failure counts in the total, once


def test_a_restarted_exporter_recounts_the_current_run_only(
    source: ListLogSource, watch: Watch
) -> None:
    # Stopped after its second run: the first printed 2 oom, the second 1 oom and 1 timeout.
    source.create("c1", "stopped", SERVER)
    source.start("c1")
    source.emit("c1", OOM, OOM)
    source.stop("c1")
    source.start("c1")
    source.emit("c1", OOM, TIMEOUT, NORMAL)
    source.stop("c1")
    # Running its second run: the first printed 3 oom, the current one 1.
    source.create("c2", "running", SERVER)
    source.start("c2")
    source.emit("c2", OOM, OOM, OOM)
    source.stop("c2")
    source.start("c2")
    source.emit("c2", OOM)

    _, store = watch()  # the exporter (re)starts now: all of that is history
    stopped = settled(store, "stopped", lambda s: s.since_start == 2)
    running = settled(store, "running", lambda s: s.since_start == 1)
    for s in (stopped, running):
        assert s.lines == 0 and s.errors == s.error_lines == ZERO
    assert stopped.up is False and running.up is True

    source.emit("c2", TIMEOUT)  # live from now on
    s = settled(store, "running", lambda s: s.lines == 1)
    assert s.errors == s.error_lines == {"oom": 0, "system_memory": 0, "vram_recovery_timeout": 1}
    assert s.since_start == 2


def test_lines_of_one_failure_are_one_error_across_broken_streams_and_restarts(
    source: ListLogSource, watch: Watch
) -> None:
    source.tick_ns = 1000  # a microsecond between lines: within the window unless paused
    watcher, store = watch()
    source.create("c1", "srv", SERVER)
    source.start("c1")
    source.emit("c1", OOM, NORMAL)
    settled(store, "srv", lambda s: s.lines == 2)
    assert watcher.interrupt("srv")  # the stream breaks in the middle of the failure
    source.emit("c1", OOM)
    s = settled(store, "srv", lambda s: s.lines == 3)
    assert (s.errors["oom"], s.error_lines["oom"], s.since_start) == (1, 2, 1)

    source.pause(3 * S)  # a new failure, its first line of another kind
    source.emit("c1", TIMEOUT, OOM)
    s = settled(store, "srv", lambda s: s.lines == 5)
    assert s.errors == {"oom": 1, "system_memory": 0, "vram_recovery_timeout": 1}
    assert s.error_lines == {
        "oom": 3,
        "system_memory": 0,
        "vram_recovery_timeout": 1,
    }
    assert s.since_start == 2

    # Restarted within the window: the new run's first line begins a new error.
    source.stop("c1")
    settled(store, "srv", lambda s: s.up is False)
    source.start("c1")
    source.emit("c1", OOM)
    s = settled(store, "srv", lambda s: s.lines == 6)
    assert (s.errors["oom"], s.error_lines["oom"], s.since_start) == (2, 4, 1)

    # An exporter restarted in the middle of that failure recounts it, and counts none of it.
    _, again = watch()
    source.emit("c1", OOM)
    r = settled(again, "srv", lambda s: s.lines == 1)
    assert (r.errors, r.error_lines["oom"], r.since_start) == (ZERO, 1, 1)
    s = settled(store, "srv", lambda s: s.lines == 7)
    assert (s.errors["oom"], s.error_lines["oom"], s.since_start) == (2, 5, 1)


def test_a_source_that_goes_away_is_reported_once_and_followed_again(
    source: ListLogSource, watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="exporter.watcher")
    source.set_down(True)
    watcher, store = watch()
    wait_for(lambda: "not reachable" in caplog.text, "the warning")
    time.sleep(1.2)  # a retry happens meanwhile; the same cause is not logged again
    assert caplog.text.count("The list source is not reachable") == 1
    assert not watcher.source_up

    source.set_down(False)
    source.create("c1", "late", SERVER)
    source.start("c1")
    source.emit("c1", OOM)
    assert watcher.ready.wait(10)
    s = settled(store, "late", lambda s: s.lines == 1)
    assert s.errors["oom"] == 1 and watcher.source_up


def test_the_start_of_each_run_is_a_gauge_next_to_its_info(
    source: ListLogSource, watch: Watch
) -> None:
    """model_fleet_container_start_time_seconds: the run the info names, in seconds, on one
    series across runs (a restart moves its value; the info starts a new series)."""
    _, store = watch()
    registry = CollectorRegistry()
    registry.register(LogCollector(store))
    labels = {"fleet": "f1", "container": "srv"}
    source.create("c1", "srv", SERVER)
    for _ in range(2):
        started = source.start("c1")
        settled(store, "srv", lambda s, started=started: s.started_at == started and bool(s.up))
        info = registry.get_sample_value(m.CONTAINER_START_INFO, {**labels, "started_at": started})
        seconds = registry.get_sample_value(m.CONTAINER_START_TIME, labels)
        assert info == 1
        assert seconds == parse_timestamp(started) / S
        source.stop("c1")
        settled(store, "srv", lambda s: s.up is False)
    # A stopped container keeps its last run (since_start describes it) until it is removed.
    assert registry.get_sample_value(m.CONTAINER_START_TIME, labels) == parse_timestamp(started) / S
    source.remove("c1")
    settled(store, "srv", lambda s: s.started_at is None)
    assert registry.get_sample_value(m.CONTAINER_START_TIME, labels) is None
