"""The webhook's path to a committed switch, traced through the remediator's modules (issue 22).

An Alertmanager delivery goes through the real Flask app, the engine, the journal, the app
configs on disk and the commit; the model server and the runtime are tests/support's in-memory
ones (the adapters are the outside, not the path). Every call into a module of ``remediator``
is traced on the path it was made on (tests/support/call_paths.py), the switch run after the
HTTP answer included: no path enters a module it has left (nothing calls back up), none goes
through more than 8 modules, and the commit is reached the way docs/architecture.md draws it.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from remediator.app.service import create_app
from remediator.config import MIB, Config, parse_config
from remediator.ports.runtime import ROLE_APP, ROLE_SERVER
from remediator.store.state import StateStore
from remediator.switch.actions import FleetActions
from tests.support.call_paths import CallPaths
from tests.support.live_env import FREE_MIB, HOST, live_prometheus
from tests.support.memory_runtime import MemoryRuntime
from tests.support.memory_server import MemoryServer

REPO = Path(__file__).resolve().parent.parent
MAX_MODULES = 8  # the target: the path to a committed switch, at most 8 modules
TOKEN = "path-token"


def deliver(app: Flask, fleet: str) -> Any:
    """POST Alertmanager's firing example for ``fleet``, started now, as Alertmanager does."""
    body = json.loads((REPO / "tests" / "data" / "alertmanager_firing.json").read_text())
    alert = body["alerts"][0]
    alert["labels"].update(fleet=fleet, host=HOST)
    alert["startsAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return app.test_client().post("/webhook/alertmanager", json=body, headers=headers)


def service(tmp_path: Path, fleet: dict[str, Any], **top: Any) -> tuple[Flask, Config]:
    """The service for one fleet ``f`` on the in-memory seams, with two app-config files."""
    env, yml = tmp_path / "app.env", tmp_path / "app.yaml"
    env.write_text("OLLAMA_MODEL=llama3.2:3b\n")
    yml.write_text("llm:\n  model: llama3.2:3b\n")
    settings = {
        "app_config": [
            {"path": str(env), "format": "env"},
            {"path": str(yml), "format": "yaml", "key": "llm.model"},
        ],
        **fleet,
    }
    config = parse_config(
        {
            "host": HOST,
            "state_file": str(tmp_path / "state.json"),
            "fleets": {"f": settings},
            **top,
        },
        "test",
    )
    server = MemoryServer({"llama3.2:3b": 2048 * MIB}, registry={"phi3:mini": 2200 * MIB})
    server.load("llama3.2:3b")
    runtime = MemoryRuntime()
    runtime.add("f", ROLE_SERVER, "f-ollama", lambda: None)
    runtime.add("f", ROLE_APP, "f-app", lambda: None)
    actions = FleetActions(config.fleets["f"], server, runtime, app_probe=None)
    app = create_app(config, token=TOKEN, actions_for=lambda fc: actions)
    app.test_client().get("/healthz")  # the first request's set-up, outside the trace
    return app, config


def traced_delivery(
    app: Flask, held: contextlib.AbstractContextManager[Any] | None = None
) -> CallPaths:
    """Trace one delivery to fleet ``f``, through to the end of the switch it leaves; with
    ``held``, the fleet's lock is held (outside the trace) until the answer has come."""
    paths = CallPaths("remediator")
    with contextlib.ExitStack() as stack:
        if held is not None:
            stack.enter_context(held)
        with paths.tracing():
            answer = deliver(app, "f")
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["outcome"] == "accepted"
    paths.wait_for_handed(60)
    return paths


def documented_path() -> tuple[str, ...]:
    """The path to the commit as docs/architecture.md writes it: ``a > b > ...``."""
    text = (REPO / "docs" / "architecture.md").read_text()
    found = re.search(r"The path to the commit, traced: `([^`]+)`", text)
    assert found, "docs/architecture.md no longer draws the path to the commit"
    return tuple(m.strip() for m in found.group(1).split(">"))


def assert_one_way_and_short(paths: CallPaths) -> None:
    assert paths.reentered() == [], "a module entered again on one path: a call back up"
    longest = paths.longest()
    assert len(longest) <= MAX_MODULES, " > ".join(longest)


def handed_to(paths: CallPaths) -> set[str]:
    """The modules where the work handed over by the route starts."""
    start = ("http.webhooks", "switch.background")
    return {p[2] for p in paths.paths if p[:2] == start and len(p) > 2}


def committed(config: Config) -> Any:
    fs = StateStore(config).read().fleets["f"]
    assert fs.journal is None, "the switch's journal entry is still open"
    return fs


@pytest.fixture
def step_down(tmp_path: Path) -> tuple[Flask, Config]:
    return service(tmp_path, {})


def test_a_step_down_reaches_its_commit_one_way_through_at_most_8_modules(
    step_down: tuple[Flask, Config], tmp_path: Path
) -> None:
    app, config = step_down
    paths = traced_delivery(app)
    fs = committed(config)
    assert fs.current_model == "phi3:mini" and len(fs.history) == 1
    assert "OLLAMA_MODEL=phi3:mini" in (tmp_path / "app.env").read_text()
    assert_one_way_and_short(paths)
    # The drawn path is traced, and it is the one way to the commit from the route.
    drawn = documented_path()
    assert any(p[: len(drawn)] == drawn for p in paths.paths), sorted(paths.paths)
    to_commit = {p[: p.index("switch.recovery") + 2] for p in paths.paths if "switch.recovery" in p}
    assert drawn in to_commit
    # What the route hands to the background pools starts in the transaction.
    assert handed_to(paths) == {"switch.transaction"}


def test_alerts_queued_behind_a_running_switch_reach_theirs_the_same_way(
    step_down: tuple[Flask, Config],
) -> None:
    app, config = step_down
    store = StateStore(config)
    paths = traced_delivery(app, held=store.switch_lock("f", 0, handling=["another-alert"]))
    fs = committed(config)
    assert fs.current_model == "phi3:mini"
    assert_one_way_and_short(paths)
    assert handed_to(paths) == {"switch.transaction"}
    judged = ("http.webhooks", "switch.background", "switch.transaction", "switch.intake")
    assert any(p[:4] == judged for p in paths.paths), "the queued alerts were judged"


@pytest.fixture
def prometheus() -> Iterator[str]:
    with live_prometheus() as prom:
        yield prom.url


def test_a_move_reaches_its_commit_one_way_through_at_most_8_modules(
    tmp_path: Path, prometheus: str
) -> None:
    # GPU 0 has too little room (FREE_MIB), GPU 2 plenty: the fleet moves there.
    assert FREE_MIB["0"] < 2048 + 512 < FREE_MIB["2"]
    app, config = service(
        tmp_path,
        {"gpu": 0, "gpus": [0, 2], "placement": "move_first"},
        prometheus={"url": prometheus, "timeout_seconds": 5},
    )
    paths = traced_delivery(app)
    fs = committed(config)
    assert (fs.current_model, fs.gpu) == ("llama3.2:3b", "2")
    assert fs.history[-1].action == "move"
    assert_one_way_and_short(paths)
    assert handed_to(paths) == {"switch.transaction"}
    assert any("switch.moving" in p for p in paths.paths)


def test_the_tracer_finds_a_call_back_up_and_follows_work_handed_to_a_pool() -> None:
    # Two modules of a package "pkg": a.run hands b.work to a pool; b.work calls a.helper.
    a, b = {"__name__": "pkg.a"}, {"__name__": "pkg.b"}
    exec("def helper():\n    return 1\n", a)
    exec("def work(helper):\n    return helper()\n", b)
    exec("def run(pool, work):\n    return pool.submit(work, helper).result()\n", a)
    paths = CallPaths("pkg")
    with futures.ThreadPoolExecutor(1) as pool, paths.tracing():
        assert a["run"](pool, b["work"]) == 1
    assert ("a", "b", "a") in paths.paths
    assert paths.reentered() == [("a", "b", "a")]
    assert paths.longest() == ("a", "b", "a")
