"""Ollama's real line shapes (tests/data/ollama/<version>/<case>.log), each counted as the one
table tests/data/ollama/cases.yml says: through ``scan --json``, through the exporter's live
path (watcher, follower, store, /metrics) on the lines' own times, after an exporter restart,
and through a real Docker engine and ``model-fleet-exporter serve``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.classifier import LogClassifier
from exporter.cli import EXIT_OK, main
from exporter.config import ContainerSelection
from exporter.metrics import LogStore, SeriesSnapshot
from exporter.watcher import LogWatcher
from simulator import ollama_corpus
from tests.support import docker_env
from tests.support.exporter_env import ExporterProcess, sample, wait_for
from tests.support.list_source import ListLogSource

CASES: dict[str, dict[str, Any]] = yaml.safe_load(
    (ollama_corpus.CORPUS / "cases.yml").read_text(encoding="utf-8")
)
SERVER = {"model-fleet.role": "ollama", "model-fleet.fleet": "f1"}
S = 1_000_000_000
TEST_KEY = "model-fleet.test"


def test_the_table_names_every_case_of_the_corpus_and_three_releases() -> None:
    files = {
        f"{p.parent.name}/{p.stem}" for p in ollama_corpus.CORPUS.glob("*/*.log") if p.is_file()
    }
    assert files == set(CASES)
    assert {"0.12.5", "0.12.6"} <= set(ollama_corpus.versions())
    assert any(v.startswith("0.13.") for v in ollama_corpus.versions())
    for case in CASES.values():
        assert case["what"] and case["since_start"] == sum(case["incidents"].values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_scan_json_counts_each_case_as_the_table_says(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    version, case = name.split("/")
    assert main(["scan", str(ollama_corpus.case_path(version, case)), "--json"]) == EXIT_OK
    got = json.loads(capsys.readouterr().out)
    want = CASES[name]
    assert (got["incidents"], got["error_lines"], got["consecutive"], got["successes"]) == (
        want["incidents"],
        want["error_lines"],
        want["consecutive"],
        want["successes"],
    )


# --- the live path, on the lines' own times -----------------------------------------------------


def _watch(source: ListLogSource, live_since_ns: int) -> tuple[LogWatcher, LogStore]:
    classifier = LogClassifier()
    store = LogStore(classifier.kinds)
    watcher = LogWatcher(
        ContainerSelection(), classifier, store, source, live_since_ns=live_since_ns
    )
    watcher.start()
    return watcher, store


def _settled(store: LogStore, lines: int) -> SeriesSnapshot:
    def probe() -> SeriesSnapshot | None:
        s = next((s for s in store.snapshot() if s.container == "srv"), None)
        return s if s is not None and s.lines == lines else None

    wait_for(probe, f"every line in {store.snapshot()}", timeout=10, interval=0.01)
    time.sleep(0.05)  # nothing more may arrive
    s = probe()
    assert s is not None
    return s


def _print_case(source: ListLogSource, name: str) -> int:
    version, case = name.split("/")
    lines = ollama_corpus.read_case(version, case)
    last = lines[0].at
    for line in lines:
        source.pause(round((line.at - last) * S))
        source.emit("c1", line.text)
        last = line.at
    return len(lines)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_live_exporter_counts_each_case_as_the_table_says(name: str) -> None:
    source = ListLogSource()
    watcher, store = _watch(source, source.now_ns)
    try:
        source.create("c1", "srv", SERVER)
        source.start("c1")
        count = _print_case(source, name)
        s = _settled(store, count)
    finally:
        watcher.stop()
    want = CASES[name]
    assert (s.errors, s.error_lines, s.since_start, s.consecutive) == (
        want["incidents"],
        want["error_lines"],
        want["since_start"],
        want["consecutive"],
    )
    # A restarted exporter reads the run again: the same gauges, no counter raised again.
    again, store = _watch(source, source.now_ns)
    gauges = (want["since_start"], want["consecutive"], 0)

    def recounted() -> bool:
        s = next((s for s in store.snapshot() if s.container == "srv"), None)
        return s is not None and (s.since_start, s.consecutive, sum(s.errors.values())) == gauges

    try:
        wait_for(recounted, f"the recount {gauges} in {store.snapshot()}", timeout=10)
    finally:
        again.stop()


# --- a real Docker engine and model-fleet-exporter serve ------------------------------------------


@pytest.fixture
def replayed(docker_client: Any, busybox_image: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """One container per case of two releases, each printing its case with its pauses (at most
    2.5 s, past the incident window) once /go exists."""
    tag = uuid.uuid4().hex[:10]
    names = [n for n in sorted(CASES) if n.startswith(("0.12.6/", "0.12.5/unload"))]
    containers = {}
    for name in names:
        version, case = name.split("/")
        script = ollama_corpus.replay_script(ollama_corpus.read_case(version, case))
        labels = {"model-fleet.role": "ollama", TEST_KEY: tag, "model-fleet.fleet": "corpus"}
        containers[name] = docker_env.run_busybox(
            docker_client,
            f"while [ ! -e /go ]; do sleep 0.05; done\n{script}\nexec sleep 3600",
            labels=labels,
        )
    yield tag, containers
    for c in containers.values():
        c.remove(force=True)


def test_a_real_engine_and_exporter_count_each_case_as_the_table_says(
    replayed: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    tag, containers = replayed
    args = ["--no-nvml", "--label", f"{TEST_KEY}={tag}"]
    with ExporterProcess(args, log_path=tmp_path / "exporter.log") as exporter:
        exporter.wait_ready()

        def value(metric: str, name: str, **labels: str) -> float | None:
            c = containers[name]
            return sample(exporter.metrics(), metric, fleet="corpus", container=c.name, **labels)

        for name in containers:
            wait_for(lambda n=name: value("model_fleet_log_lines_total", n) == 0, "series at 0")
        for c in containers.values():
            c.exec_run(["touch", "/go"])
        for name in containers:
            version, case = name.split("/")
            total = len(ollama_corpus.read_case(version, case))
            wait_for(
                lambda n=name, t=total: value("model_fleet_log_lines_total", n) == t,
                f"{name}: every line",
                timeout=60,
            )
        time.sleep(0.5)  # nothing more may arrive
        for name, c in containers.items():
            want = CASES[name]
            got = {
                "incidents": {
                    k: value("model_fleet_vram_errors_total", name, kind=k)
                    for k in want["incidents"]
                },
                "since_start": value("model_fleet_vram_errors_since_start", name),
                "consecutive": value("model_fleet_vram_errors_consecutive", name),
            }
            assert got == {
                "incidents": want["incidents"],
                "since_start": want["since_start"],
                "consecutive": want["consecutive"],
            }, (name, c.logs().decode()[-2000:])
