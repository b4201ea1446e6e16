"""The state file: atomic writes, one lock across processes, recovery from bad files, bounds."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

from remediator.config import Config, parse_config
from remediator.domain.state import SCHEMA_VERSION
from remediator.report.status import build_status
from remediator.store.locks import LockTimeout, file_lock
from remediator.store.state import StateStore

# Figures quoted in the closing note: keep them in sync with the tests below.
CONCURRENT_PROCESSES = 8
UPDATES_PER_PROCESS = 60
SIGKILL_ITERATIONS = 300


def make_config(tmp_path: Path, **top: object) -> Config:
    data: dict[str, object] = {"state_file": str(tmp_path / "model_fleet_state.json"), **top}
    data.setdefault(
        "fleets",
        {
            "default": {},
            "gpu1": {"ladder": [{"name": "a", "size_mb": 2}, {"name": "b", "size_mb": 1}]},
        },
    )
    return parse_config(data, "test")


def test_a_missing_file_starts_every_fleet_at_the_top(tmp_path: Path) -> None:
    store = StateStore(make_config(tmp_path))
    state = store.read()
    assert state.fleets["default"].current_model == "llama3.2:3b"
    assert state.fleets["gpu1"].current_model == "a"
    assert not store.path.exists()  # a read of nothing writes nothing


def test_changes_are_written_atomically_with_a_schema_version(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = StateStore(config, clock=lambda: 1000.0)
    with store.transaction() as state:
        state.fleets["default"].apply_switch(
            config.fleets["default"], 2, direction="down", trigger="manual", reason="r", now=1000.0
        )
    data = json.loads(store.path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["fleets"]["default"]["current_model"] == "tinyllama:1.1b"
    assert data["fleets"]["default"]["history"][0]["from"] == "llama3.2:3b"
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind
    again = StateStore(config).read()
    assert again.fleets["default"].index == 2


def test_an_exception_inside_a_transaction_writes_nothing(tmp_path: Path) -> None:
    store = StateStore(make_config(tmp_path))
    with store.transaction() as state:
        state.fleets["default"].vram_error_count = 1
    before = store.path.read_bytes()
    with pytest.raises(RuntimeError), store.transaction() as state:
        state.fleets["default"].vram_error_count = 2
        raise RuntimeError("boom")
    assert store.path.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "tag", "problem"),
    [
        (b'{"schema_version": 1, "fleets": {"default": {"current_', "corrupt", "not valid JSON"),
        (b"\xff\xfe garbage", "corrupt", "not valid JSON"),
        (b"[]", "corrupt", "not an object"),
        (b'{"schema_version": 99, "fleets": {}}', "unknown-version", "unknown schema_version 99"),
        (b'{"fleets": {}}', "unknown-version", "unknown schema_version None"),
        (
            b'{"schema_version": 1, "fleets": {"default": {"index": "x", "current_model": "m"}}}',
            "corrupt",
            "malformed entry",
        ),
    ],
)
def test_a_bad_file_is_kept_aside_reported_and_never_overwritten(
    tmp_path: Path, content: bytes, tag: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    store = StateStore(config)
    store.path.write_bytes(content)
    state = store.read()
    kept = list(tmp_path.glob(f"model_fleet_state.json.{tag}-*"))
    assert len(kept) == 1
    assert kept[0].read_bytes() == content  # the bad bytes survive, untouched
    assert state.fleets["default"].index == 0
    assert problem in caplog.text and kept[0].name in caplog.text
    status = build_status(config, StateStore(config).read(), "default")
    assert len(status["notices"]) == 1
    assert kept[0].name == status["notices"][0]["kept_as"]
    assert problem in status["notices"][0]["message"]
    # The fresh file is valid, and reading it again keeps nothing else aside.
    assert json.loads(store.path.read_text())["schema_version"] == SCHEMA_VERSION
    StateStore(config).read()
    assert len(list(tmp_path.glob("model_fleet_state.json.*-*"))) == 1


def test_a_model_not_on_the_ladder_resets_that_fleet_only(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = StateStore(config)
    with store.transaction() as state:
        state.fleets["gpu1"].apply_switch(
            config.fleets["gpu1"], 1, direction="down", trigger="manual", reason="", now=5.0
        )
        state.fleets["default"].current_model = "gone:7b"
    original = store.path.read_bytes()
    state = store.read()
    assert state.fleets["default"].current_model == "llama3.2:3b"
    assert state.fleets["gpu1"].current_model == "b"  # the other fleet keeps its place
    kept = list(tmp_path.glob("model_fleet_state.json.invalid-model-*"))
    assert [k.read_bytes() for k in kept] == [original]
    assert "gone:7b" in state.notices[0].message


def test_fleets_missing_from_the_config_are_kept_verbatim(tmp_path: Path) -> None:
    store = StateStore(make_config(tmp_path))
    with store.transaction() as state:
        state.fleets["gpu1"].vram_error_count = 2
    narrow = make_config(tmp_path, fleets={"default": {}})
    with StateStore(narrow).transaction() as state:
        state.fleets["default"].vram_error_count = 1
    data = json.loads(store.path.read_text())
    assert data["fleets"]["gpu1"]["vram_error_count"] == 2


def test_history_and_alert_keys_are_bounded(tmp_path: Path) -> None:
    now = [10_000.0]
    config = make_config(tmp_path, history_limit=5, alert_keys={"max": 3, "ttl_seconds": 100})
    store = StateStore(config, clock=lambda: now[0])
    fc = config.fleets["gpu1"]
    with store.transaction() as state:
        fs = state.fleets["gpu1"]
        for i in range(12):
            fs.apply_switch(
                fc,
                (i + 1) % 2,
                direction="down",
                trigger="alert",
                reason=str(i),
                now=9_000.0 + i,
                alert_key=f"k{i}",
            )
        fs.processed_alerts["fresh"] = now[0]
    state = store.read()
    assert [r.reason for r in state.fleets["gpu1"].history] == ["7", "8", "9", "10", "11"]
    # TTL 100 s: only keys recorded after 9 900 survive; then at most 3.
    assert set(state.fleets["gpu1"].processed_alerts) == {"fresh"}
    with store.transaction() as state:
        for i in range(5):
            state.fleets["gpu1"].processed_alerts[f"n{i}"] = now[0] - i
    assert set(store.read().fleets["gpu1"].processed_alerts) == {"fresh", "n0", "n1"}


def test_lock_timeout_is_reported(tmp_path: Path) -> None:
    config = make_config(tmp_path, lock_timeout_seconds=0.2)
    store = StateStore(config)
    with file_lock(store.lock_path, 1.0):
        started = time.monotonic()
        with pytest.raises(LockTimeout, match="another model-fleet process holds it"):
            store.read()
        assert time.monotonic() - started >= 0.2


def _increment(config: Config, n: int) -> None:
    store = StateStore(config)
    for _ in range(n):
        with store.transaction() as state:
            fs = state.fleets["default"]
            fs.vram_error_count += 1
            fs.processed_alerts[f"{os.getpid()}-{fs.vram_error_count}"] = time.time()


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    config = make_config(tmp_path, lock_timeout_seconds=60, alert_keys={"max": 100_000})
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_increment, args=(config, UPDATES_PER_PROCESS))
        for _ in range(CONCURRENT_PROCESSES)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    state = StateStore(config).read()
    total = CONCURRENT_PROCESSES * UPDATES_PER_PROCESS
    assert state.fleets["default"].vram_error_count == total
    assert len(state.fleets["default"].processed_alerts) == total
    assert state.notices == []


def _write_forever(config: Config) -> None:
    store = StateStore(config)
    fc = config.fleets["default"]
    i = 0
    while True:
        with store.transaction() as state:
            fs = state.fleets["default"]
            fs.apply_switch(
                fc,
                (fs.index + 1) % 4,
                direction="down",
                trigger="alert",
                reason="x" * 200,
                now=time.time(),
                alert_key=f"key-{os.getpid()}-{i}",
            )
        i += 1


def test_a_writer_killed_at_random_moments_never_leaves_a_partial_file(tmp_path: Path) -> None:
    # A large history makes each write long enough that many kills land mid-write.
    config = make_config(tmp_path, history_limit=2000, alert_keys={"max": 2000})
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(1234)
    mid_write = 0
    seen_indexes: set[int] = set()
    for _ in range(SIGKILL_ITERATIONS):
        p = ctx.Process(target=_write_forever, args=(config,))
        p.start()
        time.sleep(rng.uniform(0.0, 0.02))
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        if list(tmp_path.glob(".model_fleet_state.json.tmp-*")):
            mid_write += 1
        if config.state_file.exists():
            data = json.loads(config.state_file.read_text())  # never partial
            assert data["schema_version"] == SCHEMA_VERSION
            seen_indexes.add(data["fleets"]["default"]["index"])
    state = StateStore(config).read()
    assert state.notices == [], "a killed writer left a file that needed recovery"
    assert not list(tmp_path.glob("model_fleet_state.json.corrupt-*"))
    assert mid_write > 0, "no kill landed during a write: the test did not exercise the risk"
    assert len(state.fleets["default"].history) > 10
    assert len(seen_indexes) > 1
    print(f"SIGKILL iterations: {SIGKILL_ITERATIONS}, killed mid-write: {mid_write}")
