"""The journald log source's pure parts: systemctl's timestamps and states, journalctl's JSON as
timestamped lines, the end of a run, and the exporter's ``logs`` settings.

The source against a real journald and systemd is tested in tests/test_systemd_loop.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from exporter.adapters.journalctl import JournalStream, message_bytes
from exporter.adapters.journald import run_state, since_arg
from exporter.classifier import LogClassifier
from exporter.config import ConfigError, parse_config
from exporter.containerlog import ContainerLog
from exporter.runs import RunTracker
from exporter.timestamps import parse_timestamp
from fleet_contract.systemd import parse_show, rfc3339, timestamp_ns, unit_problem
from tests.support.list_source import START_NS

US = 1000


def test_systemctl_show_timestamps_to_the_microsecond() -> None:
    shown = parse_show(
        "ActiveState=active\nExecMainStartTimestamp=Sat 2026-12-05 09:00:00.123456 UTC\n"
        "ExecMainExitTimestamp=\nEnvironment=A=1 B=2\n"
    )
    assert shown["Environment"] == "A=1 B=2"  # a value may hold '='
    start = timestamp_ns(shown["ExecMainStartTimestamp"])
    assert start == parse_timestamp("2026-12-05T09:00:00.123456Z")
    assert rfc3339(start) == "2026-12-05T09:00:00.123456000Z"
    assert timestamp_ns(shown["ExecMainExitTimestamp"]) is None
    assert timestamp_ns("n/a") is None
    with pytest.raises(ValueError, match="UTC timestamp"):
        timestamp_ns("Sat 2026-12-05 10:00:00 CET")  # not asked for with --timestamp=us+utc


def test_unit_names() -> None:
    assert unit_problem("ollama.service") is None
    assert unit_problem("ollama@gpu1.service") is None
    for bad in ("ollama", "../x.service", "a b.service", ""):
        assert unit_problem(bad) is not None


def test_a_units_run_state_and_where_its_lines_begin() -> None:
    running = run_state(
        {
            "ActiveState": "active",
            "ExecMainStartTimestamp": "Sat 2026-12-05 09:00:00.000002 UTC",
            "ExecMainExitTimestamp": "Sat 2026-12-05 08:59:59.000000 UTC",
        }
    )
    start = parse_timestamp("2026-12-05T09:00:00.000002Z")
    assert running.running and running.started_at == rfc3339(start)
    assert running.finished_at == ""  # systemd's exit time is the last run's only once stopped
    assert running.boundary_ns == start - 1  # a line stamped in the start microsecond counts
    stopped = run_state(
        {
            "ActiveState": "failed",
            "ExecMainStartTimestamp": "Sat 2026-12-05 09:00:00.000002 UTC",
            "ExecMainExitTimestamp": "Sat 2026-12-05 09:00:03.5 UTC",
        }
    )
    assert not stopped.running and stopped.finished_at == "2026-12-05T09:00:03.500000000Z"
    never = run_state({"ActiveState": "inactive", "ExecMainStartTimestamp": ""})
    assert not never.ever_started and never.boundary_ns is None


def test_the_run_tracker_takes_the_units_boundary() -> None:
    log = ContainerLog(_classifier(), START_NS)
    tracker = RunTracker(log)
    first = run_state({"ActiveState": "active", "ExecMainStartTimestamp": _shown(START_NS)})
    assert tracker.observe(first, lambda: None)
    assert log.boundary_ns == START_NS - 1
    later = START_NS + 5_000_000_000
    second = run_state({"ActiveState": "active", "ExecMainStartTimestamp": _shown(later)})
    assert tracker.observe(second, lambda: pytest.fail("no history needed"))
    assert log.boundary_ns == later - 1


def test_journal_json_becomes_timestamped_lines() -> None:
    assert since_arg(START_NS + 123_456_789) == f"--since=@{START_NS // 10**9}.123456"
    assert message_bytes("ollama: hi") == b"ollama: hi"
    assert message_bytes([0xFF, 0x41]) == b"\xffA"  # not UTF-8: journalctl gives the bytes
    assert message_bytes(None) == b""
    entries = [
        _entry(START_NS, "first"),
        _entry(START_NS + US, "two\nlines"),  # a native-API message may hold newlines
        _entry(START_NS + 2 * US, [0x62, 0x69, 0x6E]),
    ]
    stream = _stream(entries, run_start=None, run_over=None)
    data = b""
    while piece := stream.read():
        data += piece
    stream.close()
    t0, t1, t2 = (rfc3339(START_NS + i * US).encode() for i in range(3))
    assert data == (
        t0 + b" first\n" + t1 + b" two\n" + t1 + b" lines\n" + t2 + b" bin\n"
    )  # every line carries its entry's time: the ledger and the counts read lines


def test_the_stream_ends_at_the_managers_message_after_its_run_began() -> None:
    asked: list[int] = []

    def over() -> bool:
        asked.append(1)
        return True

    run = START_NS + 10 * US
    entries = [
        _entry(START_NS, "old run"),
        _manager(START_NS + US, "Stopped ollama.service"),  # before the run: not its end
        _entry(run, "new run"),
        _manager(run + US, "Stopping ollama.service"),
        _entry(run + 2 * US, "after the end: the next stream reads it"),
    ]
    stream = _stream(entries, run_start=run, run_over=over)
    data = b""
    while piece := stream.read():
        data += piece
    stream.close()
    assert data.count(b"\n") == 2 and data.endswith(b" new run\n")
    assert len(asked) == 1  # asked once, at the message after the run began


def test_logs_settings() -> None:
    config = parse_config(
        {
            "fleets": {"gpu1": {"server": {"unit": "ollama@1.service"}}},
            "exporter": {"logs": {"source": "journald", "unit": ["ollama.service"]}},
        }
    )
    assert config.log_source == "journald" and not config.selection.use_labels
    assert dict(config.selection.names) == {"ollama@1.service": "gpu1", "ollama.service": "default"}
    assert dict(parse_config({"exporter": {"logs": {"source": "journald"}}}).selection.names) == {
        "ollama.service": "default"
    }
    assert parse_config({}).log_source == "docker"
    for bad, message in (
        ({"source": "syslog"}, "must be one of docker, journald"),
        ({"unit": "ollama.service"}, "only with logs.source: journald"),
        ({"source": "journald", "unit": "ollama"}, "not a systemd unit name"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({"exporter": {"logs": bad}})


# --- helpers -----------------------------------------------------------------------------------


def _classifier() -> LogClassifier:
    return parse_config({}).classifier()


def _shown(ns: int) -> str:
    text = rfc3339(ns)  # 2026-03-02T14:20:00.000000000Z -> systemctl's us+utc form
    return f"Mon {text[:10]} {text[11:26]} UTC"


def _entry(ns: int, message: object) -> dict[str, object]:
    return {"__REALTIME_TIMESTAMP": str(ns // US), "_PID": "4242", "MESSAGE": message}


def _manager(ns: int, message: str) -> dict[str, object]:
    return {
        "__REALTIME_TIMESTAMP": str(ns // US),
        "_PID": "1",
        "UNIT": "ollama.service",
        "MESSAGE": message,
    }


def _stream(
    entries: list[dict[str, object]],
    *,
    run_start: int | None,
    run_over: Callable[[], bool] | None,
) -> JournalStream:
    """A stream over a child that prints ``entries`` as journalctl -o json does."""
    text = "".join(json.dumps(e) + "\n" for e in entries)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdout.write(sys.argv[1])", text],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    return JournalStream(proc, "ollama.service", run_start, run_over, lost=False)
