"""The log watcher on a real Docker engine: containers printing Ollama's real error lines,
restarted, recreated and appearing late while watched; counts checked exactly, the lines of
one failure counted as one error on Docker's own timestamps (exporter.incidents)."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from exporter.adapters.chunked import Endpoint, SocketStream
from exporter.adapters.docker_logs import DockerLogSource, engine_endpoint
from exporter.classifier import LogClassifier
from exporter.config import ContainerSelection
from exporter.incidents import window_ns
from exporter.logsource import ContainerGone, SourceError
from exporter.metrics import LogStore, SeriesSnapshot
from exporter.timestamps import NS, parse_timestamp
from exporter.watcher import LogWatcher
from tests.support import docker_env
from tests.support.exporter_env import DATA, ExporterProcess, sample, wait_for
from tests.test_exporter_incidents import reference

pytestmark = pytest.mark.docker

TEST_KEY = "model-fleet.exporter-test"
# Most tests count with a window of 0.5 s and print the failures 1.5 s apart: on a busy
# machine Docker may stamp a line late, never by a second.
WINDOW = 0.5
# ollama_load_oom.log: 24 lines, two failed loads of two oom lines each (13 lines, then 11);
# ollama_vram_timeout.log: 9 lines, 4 timeouts within a moment here: 3 errors of 8 lines.
PRINT_ERRORS = (
    "head -n 13 /data/ollama_load_oom.log; sleep 1.5; tail -n +14 /data/ollama_load_oom.log; "
    "sleep 1.5; cat /data/ollama_vram_timeout.log"
)
RUN_LINES = 24 + 9
RUN_ERRORS = {"oom": 2, "system_memory": 0, "vram_recovery_timeout": 1}
RUN_ERROR_LINES = {"oom": 5, "system_memory": 0, "vram_recovery_timeout": 4}
ZERO = {"oom": 0, "system_memory": 0, "vram_recovery_timeout": 0}
# Wait for /go (the test creates it), print, then idle. PID 1 ignores SIGTERM: tests stop
# containers with timeout 0.
GATED = f"while [ ! -e /go ]; do sleep 0.05; done; {PRINT_ERRORS}; exec sleep 3600"

StartWatcher = Callable[..., tuple[LogWatcher, LogStore]]


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def watch(docker_client: Any, busybox_image: str, tag: str) -> Iterator[StartWatcher]:
    """Start LogWatchers that see only this test's containers; stopped at the end."""
    watchers: list[LogWatcher] = []

    def start(names: dict[str, str] | None = None, **kwargs: Any) -> tuple[LogWatcher, LogStore]:
        kwargs.setdefault("incident_window_seconds", WINDOW)
        selection = ContainerSelection(
            labels={"model-fleet.role": "ollama", TEST_KEY: tag}, names=names or {}
        )
        classifier = LogClassifier()
        store = LogStore(classifier.kinds)
        factory = kwargs.pop("client_factory", None)
        source = DockerLogSource(factory) if factory is not None else DockerLogSource()
        watcher = LogWatcher(selection, classifier, store, source, **kwargs)
        watchers.append(watcher)
        watcher.start()
        if factory is None:
            assert watcher.ready.wait(20), "the watcher did not connect to Docker"
        return watcher, store

    yield start
    for w in watchers:
        w.stop()


def model_server(
    client: Any, tag: str, script: str, *, name: str | None = None, labelled: bool = True
) -> Any:
    """A busybox 'model server' with tests/data mounted at /data."""
    labels = {"model-fleet.role": "ollama", TEST_KEY: tag, "model-fleet.fleet": "f1"}
    return docker_env.run_busybox(
        client,
        script,
        name=name,
        labels=labels if labelled else {},
        volumes={str(DATA): {"bind": "/data", "mode": "ro"}},
    )


def series(store: LogStore, name: str) -> SeriesSnapshot | None:
    return next((s for s in store.snapshot() if s.container == name), None)


def wait_series(
    store: LogStore, name: str, check: Callable[[SeriesSnapshot], bool], what: str
) -> SeriesSnapshot:
    def probe() -> SeriesSnapshot | None:
        s = series(store, name)
        return s if s is not None and check(s) else None

    try:
        return wait_for(probe, f"{name}: {what}", timeout=20)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; store: {store.snapshot()}") from None


def test_series_start_at_zero_then_count_real_lines_exactly(
    docker_client: Any, watch: StartWatcher, tag: str
) -> None:
    _, store = watch()
    c = model_server(docker_client, tag, GATED)  # appears after the watcher started
    s = wait_series(store, c.name, lambda s: bool(s.up), "stream attached")
    assert (s.fleet, s.errors, s.error_lines, s.lines, s.since_start) == ("f1", ZERO, ZERO, 0, 0)

    c.exec_run(["touch", "/go"])
    s = wait_series(store, c.name, lambda s: s.lines >= RUN_LINES, "all lines")
    time.sleep(0.3)  # nothing more may arrive
    s = series(store, c.name)
    assert s is not None
    assert (s.lines, s.errors, s.error_lines, s.since_start) == (
        RUN_LINES,
        RUN_ERRORS,
        RUN_ERROR_LINES,
        3,
    )


def test_restarts_reset_since_start_and_nothing_counts_twice(
    docker_client: Any, watch: StartWatcher, tag: str
) -> None:
    c = model_server(docker_client, tag, GATED)
    c.exec_run(["touch", "/go"])
    wait_for(lambda: c.logs().count(b"\n") == RUN_LINES, "first run printed")
    _, store = watch()  # the first run is history for this exporter
    wait_series(store, c.name, lambda s: s.since_start == 3, "first run counted")
    for run in (2, 3):
        c.restart(timeout=0)
        want = (run - 1) * RUN_LINES
        s = wait_series(store, c.name, lambda s, want=want: s.lines >= want, f"run {run}")
        time.sleep(0.3)
        s = series(store, c.name)
        assert s is not None
        # counters count what this exporter saw live: every run after the first
        assert s.lines == (run - 1) * RUN_LINES
        assert s.errors == {k: (run - 1) * v for k, v in RUN_ERRORS.items()}
        assert s.error_lines == {k: (run - 1) * v for k, v in RUN_ERROR_LINES.items()}
        assert s.since_start == 3 and s.up
        c.reload()
        assert s.started_at == c.attrs["State"]["StartedAt"]  # names the run being counted


def test_a_recreated_container_continues_the_counters_of_its_name(
    docker_client: Any, watch: StartWatcher, tag: str
) -> None:
    _, store = watch()
    name = f"mf-test-recreate-{tag}"
    first = model_server(docker_client, tag, GATED, name=name)
    first.exec_run(["touch", "/go"])
    wait_series(store, name, lambda s: s.lines == RUN_LINES, "first container")
    first.remove(force=True)
    gone = wait_series(store, name, lambda s: s.since_start is None, "gauges gone with it")
    assert gone.up is None and gone.started_at is None and gone.lines == RUN_LINES

    second = model_server(docker_client, tag, GATED, name=name)  # same name, new ID
    wait_series(store, name, lambda s: s.up is True and s.since_start == 0, "new container")
    second.exec_run(["touch", "/go"])
    s = wait_series(store, name, lambda s: s.lines == 2 * RUN_LINES, "second container")
    assert s.errors == {k: 2 * v for k, v in RUN_ERRORS.items()}
    assert s.error_lines == {k: 2 * v for k, v in RUN_ERROR_LINES.items()}
    assert s.since_start == 3


def test_a_restarted_exporter_recounts_since_start_and_replays_no_counter(
    docker_client: Any, watch: StartWatcher, tag: str
) -> None:
    # Running, second run: the first run printed 4 oom lines at once (one error here), the
    # second (current) one 1 oom line, then 2 more 1.5 s later: 2 errors.
    twice = model_server(
        docker_client,
        tag,
        "if [ -e /ran ]; then head -n 15 /data/ollama_cuda_error.log; sleep 1.5; "
        "tail -n +16 /data/ollama_cuda_error.log; "
        "else touch /ran; cat /data/ollama_load_oom.log; fi; exec sleep 3600",
    )
    # Exited after its second run; each run printed 1 oom line, then 4 timeouts 1.5 s later.
    exited = model_server(
        docker_client,
        tag,
        "cat /data/ollama_runtime_oom.log; sleep 1.5; cat /data/ollama_vram_timeout.log",
    )
    wait_for(lambda: twice.logs().count(b"\n") == 24, "first run printed")
    twice.restart(timeout=0)
    wait_for(lambda: twice.logs().count(b"CUDA error: out of memory") >= 3, "second run printed")
    exited.wait(timeout=20)
    exited.start()
    exited.wait(timeout=20)

    _, store = watch()  # the exporter (re)starts now
    s = wait_series(store, twice.name, lambda s: s.since_start == 2, "current run recounted")
    e = wait_series(store, exited.name, lambda s: s.since_start == 2, "last run recounted")
    time.sleep(0.3)
    for snap in (series(store, twice.name), series(store, exited.name)):
        assert snap is not None
        assert snap.errors == snap.error_lines == ZERO  # present, at 0
        assert snap.lines == 0 and snap.since_start == 2
    assert s.up is True and e.up is False


def test_broken_streams_reconnect_without_counting_a_line_twice(
    docker_client: Any, watch: StartWatcher, tag: str
) -> None:
    # 30 batches of 200 lines, two of them oom, with pauses: many lines share a second, which
    # is what a reconnect with a whole-second `since` would count twice.
    script = (
        "for b in $(seq 1 30); do awk 'BEGIN{for(i=0;i<200;i++){"
        'print "time=2026-03-02T14:20:00Z level=INFO msg=\\"line " i "\\""; '
        'if (i % 100 == 0) print "CUDA error: out of memory"}}\'; sleep 0.05; done; '
        "exec sleep 3600"
    )
    window = 0.2  # a few batches per error
    watcher, store = watch(incident_window_seconds=window)
    c = model_server(docker_client, tag, script)
    wait_series(store, c.name, lambda s: s.lines > 0, "first lines")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        s = series(store, c.name)
        if s is not None and s.lines >= 30 * 202:
            break
        watcher.interrupt(c.name)
        time.sleep(0.15)
    time.sleep(0.5)
    s = series(store, c.name)
    assert s is not None
    assert s.reconnects >= 1
    assert (s.lines, s.error_lines["oom"]) == (30 * 202, 60)
    # the errors as Docker's own timestamps group the lines, read in one go
    logged = c.logs(timestamps=True).decode().splitlines()
    oom = [(parse_timestamp(line.split(" ", 1)[0]), "oom") for line in logged if "CUDA" in line]
    expected = reference(oom, window_ns(window))["oom"]
    assert 1 < expected < 60
    assert s.errors["oom"] == s.since_start == expected


def test_a_tty_container_is_counted_too(docker_client: Any, watch: StartWatcher, tag: str) -> None:
    # With a TTY, Docker's log stream has no frame headers and lines end in CRLF.
    _, store = watch()
    c = docker_env.run_busybox(
        docker_client,
        GATED,
        labels={"model-fleet.role": "ollama", TEST_KEY: tag},
        volumes={str(DATA): {"bind": "/data", "mode": "ro"}},
        tty=True,
    )
    c.exec_run(["touch", "/go"])
    s = wait_series(store, c.name, lambda s: s.lines == RUN_LINES, "all lines")
    assert (s.errors, s.error_lines, s.since_start) == (RUN_ERRORS, RUN_ERROR_LINES, 3)


def test_containers_named_in_the_config_are_watched_without_labels(
    docker_client: Any, watch: StartWatcher, tag: str
) -> None:
    name = f"mf-test-named-{tag}"
    _, store = watch(names={name: "named"})
    s = series(store, name)
    # expected before it exists: counters at 0, stream down, no since_start yet
    assert s is not None and (s.fleet, s.lines, s.up, s.since_start) == ("named", 0, False, None)
    c = model_server(docker_client, tag, GATED, name=name, labelled=False)
    c.exec_run(["touch", "/go"])
    s = wait_series(store, name, lambda s: s.lines == RUN_LINES, "named container counted")
    assert s.fleet == "named" and s.errors == RUN_ERRORS and s.error_lines == RUN_ERROR_LINES


def test_without_docker_the_watcher_waits_and_says_so_once(
    watch: StartWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="exporter.watcher")

    def unreachable() -> Any:
        return docker.DockerClient(base_url="unix:///nonexistent/model-fleet/docker.sock")

    watcher, store = watch(names={"absent": "f9"}, client_factory=unreachable)
    wait_for(lambda: "not reachable" in caplog.text, "the warning")
    time.sleep(1.5)  # a retry happens meanwhile; the same cause is not logged again
    assert caplog.text.count("Docker is not reachable") == 1
    assert not watcher.source_up
    assert series(store, "absent") is not None  # the log series still exist


def test_stop_ends_every_thread_promptly(docker_client: Any, watch: StartWatcher, tag: str) -> None:
    watcher, store = watch()
    containers = [model_server(docker_client, tag, "exec sleep 3600") for _ in range(3)]
    for c in containers:
        wait_series(store, c.name, lambda s: bool(s.up), "attached")
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < 3
    names = {c.name for c in containers}
    alive = [t.name for t in threading.enumerate() if t.name.split("-", 1)[-1] in names]
    assert alive == []
    assert watcher.watched() == {}


def test_serve_exports_log_metrics_and_stops_on_sigterm(
    docker_client: Any, busybox_image: str, tag: str, tmp_path: Any
) -> None:
    c = model_server(docker_client, tag, "cat /data/ollama_runtime_oom.log; exec sleep 3600")
    args = ["--no-nvml", "--label", f"{TEST_KEY}={tag}"]
    with ExporterProcess(args, log_path=tmp_path / "exporter.log") as exporter:
        exporter.wait_ready()
        labels = {"fleet": "f1", "container": c.name}

        def counted() -> bool:
            m = exporter.metrics()
            return sample(m, "model_fleet_vram_errors_since_start", **labels) == 1

        wait_for(counted, "since_start 1 on /metrics")
        m = exporter.metrics()
        c.reload()
        started_at = c.attrs["State"]["StartedAt"]
        assert sample(m, "model_fleet_container_start_info", **labels, started_at=started_at) == 1
        start_time = sample(m, "model_fleet_container_start_time_seconds", **labels)
        # Docker's nanoseconds, as the float nearest to them (an int / int division: / 1e9
        # would round the nanoseconds to a float first, and can miss by one unit in the last place).
        assert start_time == parse_timestamp(started_at) / NS
        assert sample(m, "model_fleet_log_stream_up", **labels) == 1
        assert sample(m, "model_fleet_vram_errors_total", **labels, kind="oom") == 0  # history
        assert sample(m, "model_fleet_vram_error_lines_total", **labels, kind="oom") == 0
        assert sample(m, "model_fleet_exporter_docker_up") == 1
        assert sample(m, "model_fleet_nvml_up") is None  # --no-nvml
        started = time.monotonic()
        assert exporter.stop() == 0
        assert time.monotonic() - started < 5
        assert "effective configuration" in exporter.log()


def test_two_failed_loads_are_two_errors_of_five_lines_on_metrics(
    docker_client: Any, busybox_image: str, tag: str, tmp_path: Any
) -> None:
    # The default window (2 s). The two loads of ollama_load_oom.log 3 s apart: two errors.
    # The second load's oom lines, then 1 s later the timeouts of the VRAM it left behind:
    # one error, of the kind of its first line.
    c = model_server(
        docker_client,
        tag,
        "while [ ! -e /go ]; do sleep 0.05; done; head -n 13 /data/ollama_load_oom.log; "
        "sleep 3; tail -n +14 /data/ollama_load_oom.log; sleep 1; "
        "cat /data/ollama_vram_timeout.log; exec sleep 3600",
    )
    args = ["--no-nvml", "--label", f"{TEST_KEY}={tag}"]
    with ExporterProcess(args, log_path=tmp_path / "exporter.log") as exporter:
        exporter.wait_ready()
        labels = {"fleet": "f1", "container": c.name}

        def lines(kind: str) -> float | None:
            return sample(
                exporter.metrics(), "model_fleet_vram_error_lines_total", **labels, kind=kind
            )

        wait_for(lambda: lines("oom") == 0, "the series at 0")
        c.exec_run(["touch", "/go"])
        wait_for(lambda: lines("vram_recovery_timeout") == 4, "every line counted")
        time.sleep(0.5)  # nothing more may arrive
        m = exporter.metrics()
        assert sample(m, "model_fleet_vram_errors_since_start", **labels) == 2
        assert sample(m, "model_fleet_vram_errors_total", **labels, kind="oom") == 2
        assert (
            sample(m, "model_fleet_vram_errors_total", **labels, kind="vram_recovery_timeout") == 0
        )
        assert sample(m, "model_fleet_vram_error_lines_total", **labels, kind="oom") == 5
        assert sample(m, "model_fleet_log_lines_total", **labels) == RUN_LINES


# --- the log stream's own socket ----------------------------------------------------------------


def read_in_thread(stream: Any) -> queue.Queue[bytes | BaseException]:
    """Read the stream to its end on a thread; every piece (b'' last) lands in the queue."""
    pieces: queue.Queue[bytes | BaseException] = queue.Queue()

    def reader() -> None:
        try:
            while piece := stream.read():
                pieces.put(piece)
            pieces.put(b"")
        except Exception as exc:
            pieces.put(exc)

    threading.Thread(target=reader, daemon=True).start()
    return pieces


def test_a_quiet_containers_line_arrives_at_once_on_a_socket_of_its_own(
    docker_client: Any, busybox_image: str
) -> None:
    c = docker_env.run_busybox(
        docker_client, "echo first; while [ ! -e /go ]; do sleep 0.05; done; echo second"
    )
    source = DockerLogSource()
    stream = source.follow(c.id, None)
    try:
        assert isinstance(stream, SocketStream)  # not the SDK's session: a plain socket
        pieces = read_in_thread(stream)
        first = pieces.get(timeout=1)  # before the container prints anything more
        assert isinstance(first, bytes) and first.endswith(b" first\n")
        c.exec_run(["touch", "/go"])
        second = pieces.get(timeout=5)
        assert isinstance(second, bytes) and second.endswith(b" second\n")
        assert pieces.get(timeout=10) == b""  # the container exited: the stream ends
    finally:
        stream.close()
        source.close()


def test_an_unknown_container_is_gone_with_the_engines_message(docker_client: Any) -> None:
    source = DockerLogSource()
    with pytest.raises(ContainerGone, match="No such container: mf-test-absent"):
        source.follow("mf-test-absent-" + uuid.uuid4().hex, None)
    source.close()


def test_interrupting_ends_a_blocked_read_within_a_second(
    docker_client: Any, busybox_image: str
) -> None:
    c = docker_env.run_busybox(docker_client, "echo one; exec sleep 3600")
    source = DockerLogSource()
    stream = source.follow(c.id, None)
    pieces = read_in_thread(stream)
    assert isinstance(pieces.get(timeout=5), bytes)
    time.sleep(0.2)  # the reader now waits for a line that never comes
    started = time.monotonic()
    stream.interrupt()
    assert pieces.get(timeout=1) == b""
    assert time.monotonic() - started < 1
    stream.close()
    source.close()
    c.remove(force=True)


def test_a_tls_engine_keeps_the_sdks_session_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="exporter.adapters.docker_logs")

    def tls_client() -> Any:  # nothing listens there: only the path taken matters
        return docker.DockerClient(base_url="tcp://127.0.0.1:9", tls=True, version="1.44")

    source = DockerLogSource(tls_client)
    for _ in range(2):
        with pytest.raises(SourceError):
            source.follow("any", None)
    assert caplog.text.count("is not a plain socket") == 1
    source.close()


def test_the_engines_socket_is_found_from_the_clients_address() -> None:
    def endpoint(base_url: str, **kwargs: Any) -> Endpoint | None:
        return engine_endpoint(docker.DockerClient(base_url=base_url, version="1.44", **kwargs).api)

    assert endpoint("unix:///run/x/docker.sock") == Endpoint(unix_path="/run/x/docker.sock")
    assert endpoint("tcp://127.0.0.1:2375") == Endpoint(host="127.0.0.1", port=2375)
    assert endpoint("tcp://127.0.0.1:2376", tls=True) is None
