"""Fuzzing that reaches the switch (issue 13, item 4): hypothesis drives the real Flask service.

Each example builds the service (``create_app``) on a fresh state file with three fleets, a
fake clock and a recording stand-in for the actions, then plays a sequence of steps:
Alertmanager v4 deliveries (fresh, duplicate, stale, future and re-fired alerts, firing and
resolved, several fleets, unknown fleets) and the CLI's manual calls (``POST /downgrade``,
``/upgrade``, ``/reset`` with the token and the body ``--url`` sends). After every step it
waits for the background switches and checks: never a 5xx; every switch matches a reference
model of the rules (one switch per fleet per delivery, one rung per alert under policy
``next``, no switch from a resolved, stale, duplicate or cooled-down alert); no alert key
switches twice; the state file parses and agrees with the recorded switches (current model,
history, processed keys). Most generated alerts are valid and fresh so that most examples
reach the switch; the test asserts that fraction and prints the counts (``pytest -s``).
A second property sends deliveries and a manual call at once from threads and checks the
invariants that do not depend on their order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediator.app.service import create_app
from remediator.config import Config, parse_config
from remediator.http.common import EXTENSION
from remediator.store.state import StateStore
from tests.support.fuzz_model import (
    FakeClock,
    FleetModel,
    RecordingActions,
    TrackingBackground,
    body_of,
    parse,
    stamp,
)

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL_LADDER = [
    {"name": "big:8b", "size_mb": 4800},
    {"name": "mid:3b", "size_mb": 2000},
    {"name": "small:1b", "size_mb": 700},
]
FLEETS: dict[str, dict[str, Any]] = {
    "alpha": {"cooldown_seconds": 0, "max_switches_per_hour": 1000},
    "beta": {"cooldown_seconds": 45, "max_switches_per_hour": 1000, "ladder": SMALL_LADDER},
    "gamma": {
        "cooldown_seconds": 0,
        "max_switches_per_hour": 1000,
        "auto_upgrade": {"enabled": True, "quiet_seconds": 20, "failed_quiet_seconds": 20},
    },
}
# Known fleets weigh most, so that most alerts can reach the switch; None: no fleet label.
FLEET_LABELS = [*FLEETS, *FLEETS, *FLEETS, "ghost", "", None]
REMEDIATIONS = ["downgrade"] * 5 + ["upgrade", "upgrade", None, "page"]
ALERT_KINDS = ["fresh"] * 6 + ["duplicate", "stale", "future", "refire"]
STATS: Counter[str] = Counter()


@dataclass
class Run:
    """One example: the service, its state, the reference model and what was sent."""

    config: Config
    app: Flask
    clock: FakeClock
    actions: RecordingActions
    background: TrackingBackground
    models: dict[str, FleetModel]
    sent: list[dict[str, Any]] = field(default_factory=list)  # every alert sent, in order
    fingerprints: int = 0

    def new_fingerprint(self) -> str:
        self.fingerprints += 1
        return f"{self.fingerprints * 0x9E3779B1 % 2**64:016x}"


@contextmanager
def service(root: Path) -> Iterator[Run]:
    """The real service on a fresh state file, torn down (its pools stopped) afterwards."""
    config = parse_config({"state_file": str(root / "state.json"), "fleets": FLEETS}, "fuzz")
    clock, actions = FakeClock(), RecordingActions()
    app = create_app(config, token=TOKEN, actions_for=actions.for_fleet, clock=clock)
    svc = app.extensions[EXTENSION]
    background = TrackingBackground(svc.background)
    app.extensions[EXTENSION] = dataclasses.replace(svc, background=background)
    models = {name: FleetModel(fleet) for name, fleet in config.fleets.items()}
    try:
        yield Run(config, app, clock, actions, background, models)
    finally:
        background.inner.shutdown(wait=True)


def draw_alert(run: Run, data: st.DataObject) -> dict[str, Any]:
    """One alert: mostly fresh and firing for a known fleet; else a duplicate, a stale, a
    future or a re-fired one, resolved now and then, for unknown fleets now and then."""
    kind = data.draw(st.sampled_from(ALERT_KINDS), label="kind")
    if kind in ("duplicate", "refire") and run.sent:
        earlier = data.draw(st.sampled_from(run.sent), label="earlier")
        alert: dict[str, Any] = json.loads(json.dumps(earlier))
        if kind == "refire":  # the same alert firing again later: a new key
            alert["startsAt"] = stamp(int(run.clock.now), 0, 0)
            alert["status"] = "firing"
        elif data.draw(st.booleans(), label="flip"):  # resolved/firing interleaving
            alert["status"] = "resolved" if alert["status"] == "firing" else "firing"
        alert["endsAt"] = (
            stamp(int(run.clock.now), 0, 0)
            if alert["status"] == "resolved"
            else "0001-01-01T00:00:00Z"
        )
        return alert
    fleet = data.draw(st.sampled_from(FLEET_LABELS), label="fleet")
    remediation = data.draw(st.sampled_from(REMEDIATIONS), label="remediation")
    now = int(run.clock.now)
    if kind == "stale":
        model = run.models.get(fleet or "")
        base = model.last_switch_at if model and model.last_switch_at is not None else now
        whole = int(base) - data.draw(st.integers(1, 3600), label="age")
    elif kind == "future":
        whole = now + data.draw(st.integers(60, 7 * 86400), label="ahead")
    else:
        whole = now
    ns = data.draw(st.integers(0, 999_999_999), label="ns")
    resolved = data.draw(st.integers(0, 9), label="resolved") == 0
    labels = {"alertname": "ModelFleetVRAMErrors", "severity": "warning"}
    if fleet is not None:
        labels["fleet"] = fleet
    if remediation is not None:
        labels["remediation"] = remediation
    value = data.draw(st.sampled_from(["3", "4", "0.97", "NaN", "x", None]), label="value")
    return {
        "status": "resolved" if resolved else "firing",
        "labels": labels,
        "annotations": {} if value is None else {"value": value, "summary": "VRAM errors"},
        "startsAt": stamp(whole, ns, data.draw(st.integers(0, 2), label="style")),
        "endsAt": stamp(now, 0, 0) if resolved else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": run.new_fingerprint(),
    }


def expected_for_delivery(run: Run, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per fleet, the switch the rules ask for: (target, direction, trigger, key)."""
    asks: dict[str, list[tuple[str, str, str, float]]] = {}
    for a in alerts:
        fleet, rem = a["labels"].get("fleet"), a["labels"].get("remediation")
        if (
            a["status"] != "firing"
            or fleet not in run.models
            or rem not in ("downgrade", "upgrade")
        ):
            continue
        direction, trigger = ("down", "alert") if rem == "downgrade" else ("up", "auto")
        key = f"{a['fingerprint']}@{a['startsAt']}"
        asks.setdefault(fleet, []).append((direction, trigger, key, parse(a["startsAt"])))
    expected = {}
    for fleet, fleet_asks in asks.items():
        model = run.models[fleet]
        for direction, trigger, key, started in sorted(fleet_asks, key=lambda a: a[0] != "down"):
            target = model.judge_alert(direction, key, started, run.clock.now)
            if target is not None:
                expected[fleet] = (target, direction, trigger, key)
                break
    return expected


def deliver(run: Run, data: st.DataObject) -> None:
    """POST one delivery, wait for its switches, check them against the reference model."""
    alerts = [draw_alert(run, data) for _ in range(data.draw(st.integers(1, 5), label="n"))]
    expected = expected_for_delivery(run, alerts)
    before = len(run.actions.plans)
    resp = run.app.test_client().post("/webhook/alertmanager", json=body_of(alerts), headers=AUTH)
    STATS[f"http_{resp.status_code // 100}xx"] += 1
    assert resp.status_code == 202, resp.get_data(as_text=True)
    run.background.settle()
    run.sent += alerts
    STATS["deliveries"] += 1
    STATS["alerts"] += len(alerts)
    firing = {
        (a["labels"].get("fleet"), f"{a['fingerprint']}@{a['startsAt']}")
        for a in alerts
        if a["status"] == "firing"
    }
    got: dict[str, Any] = {}
    for plan in run.actions.plans[before:]:
        name, key = plan.fleet.name, plan.alert_key
        model = run.models[name]
        assert name not in got, f"two switches of fleet {name} from one delivery"
        assert key is not None and (name, key) in firing, f"switch from a non-firing alert {key}"
        assert all(key not in m.keys for m in run.models.values()), f"alert {key} switched twice"
        last = model.last_switch_at
        assert last is None or parse(key.split("@", 1)[1]) >= last, f"stale alert {key} switched"
        names = plan.fleet.ladder.names
        step = names.index(plan.to_rung.name) - names.index(plan.from_rung.name)
        assert step == (1 if plan.direction == "down" else -1), f"{key} moved {step} rungs"
        assert plan.from_rung.name == names[model.index]
        got[name] = (names.index(plan.to_rung.name), plan.direction, plan.trigger, key)
    assert got == expected
    for name, (target, direction, trigger, key) in got.items():
        run.models[name].apply(target, direction, trigger, key, run.clock.now)
    STATS["alert_switches"] += len(got)


def manual(run: Run, data: st.DataObject) -> None:
    """The CLI's ``--url`` call: POST /downgrade, /upgrade or /reset with its body."""
    command = data.draw(st.sampled_from(["downgrade", "upgrade", "reset"]), label="command")
    fleet = data.draw(st.sampled_from([*FLEETS, "ghost", None]), label="manual_fleet")
    dry_run = data.draw(st.integers(0, 4), label="dry_run") == 0
    body: dict[str, Any] = {"reason": "fuzz", "dry_run": dry_run}
    if fleet:
        body["fleet"] = fleet
    before = len(run.actions.plans)
    resp = run.app.test_client().post(f"/{command}", json=body, headers=AUTH)
    STATS[f"http_{resp.status_code // 100}xx"] += 1
    STATS["manual_calls"] += 1
    assert resp.status_code < 500, resp.get_data(as_text=True)
    direction = {"downgrade": "down", "upgrade": "up", "reset": "reset"}[command]
    model = run.models.get(fleet or "")
    target = model.judge_manual(direction) if model else None
    answer = resp.get_json()
    if model is None:
        assert resp.status_code == 404, answer
    else:
        assert resp.status_code == (200 if target is not None else 409), answer
        assert answer["switched"] is (target is not None and not dry_run)
    plans = run.actions.plans[before:]
    if target is None or dry_run:
        assert plans == []
        return
    assert model is not None
    names = model.config.ladder.names
    assert [(p.to_rung.name, p.trigger, p.alert_key) for p in plans] == [
        (names[target], "manual", None)
    ]
    model.apply(target, direction, "manual", None, run.clock.now)
    STATS["manual_switches"] += 1


def check_state(run: Run) -> None:
    """The state file parses and says what the recorded switches say."""
    path = Path(run.config.state_file)
    if not path.exists():
        return
    json.loads(path.read_text())
    state = StateStore(run.config, clock=run.clock).read()
    for name, model in run.models.items():
        fs = state.fleets[name]
        assert (fs.index, fs.current_model) == (model.index, model.config.ladder[model.index].name)
        assert fs.last_switch_at == model.last_switch_at
        history = [
            (r.from_model, r.to_model, r.direction, r.trigger, r.alert_key) for r in fs.history
        ]
        assert history == model.switches
        assert model.keys <= set(fs.processed_alerts)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def fuzz_service(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as root, service(Path(root)) as run:
        STATS["examples"] += 1
        switched = 0
        for _ in range(data.draw(st.integers(1, 10), label="steps")):
            run.clock.now += data.draw(st.sampled_from([0, 1, 5, 30, 90]), label="advance")
            if data.draw(st.integers(0, 3), label="manual") == 0:
                manual(run, data)
            else:
                before = STATS["alert_switches"]
                deliver(run, data)
                switched += STATS["alert_switches"] - before
            check_state(run)
        STATS["examples_switched"] += switched > 0


def burst(run: Run, data: st.DataObject) -> None:
    """Deliveries and a manual call at once, from threads: order-free invariants only."""
    bodies = []
    for _ in range(data.draw(st.integers(2, 4), label="deliveries")):
        alerts = [draw_alert(run, data) for _ in range(data.draw(st.integers(1, 4), label="n"))]
        run.sent += alerts
        bodies.append(("/webhook/alertmanager", body_of(alerts)))
    if data.draw(st.booleans(), label="with_manual"):
        command = data.draw(st.sampled_from(["downgrade", "upgrade", "reset"]), label="command")
        bodies.append((f"/{command}", {"fleet": data.draw(st.sampled_from(list(FLEETS)))}))
    before, now = len(run.actions.plans), run.clock.now
    with ThreadPoolExecutor(len(bodies)) as pool:
        codes = list(
            pool.map(
                lambda pb: run.app.test_client().post(pb[0], json=pb[1], headers=AUTH).status_code,
                bodies,
            )
        )
    run.background.settle()
    STATS["deliveries"] += sum(1 for path, _ in bodies if path.startswith("/webhook"))
    for code in codes:
        STATS[f"http_{code // 100}xx"] += 1
    assert all(code < 500 for code in codes), codes
    firing = {
        (a["labels"].get("fleet"), f"{a['fingerprint']}@{a['startsAt']}")
        for _, body in bodies
        for a in body.get("alerts", [])
        if a["status"] == "firing"
    }
    for plan in run.actions.plans[before:]:
        model, key = run.models[plan.fleet.name], plan.alert_key
        names = model.config.ladder.names
        assert plan.from_rung.name == names[model.index], "switches of a fleet overlapped"
        target = names.index(plan.to_rung.name)
        if key is not None:
            last = model.last_switch_at
            assert (plan.fleet.name, key) in firing, f"switch from a non-firing alert {key}"
            assert all(key not in m.keys for m in run.models.values()), f"{key} switched twice"
            assert last is None or parse(key.split("@", 1)[1]) >= last, f"stale {key} switched"
            assert last is None or now - last >= model.config.cooldown_seconds
            assert target - model.index == (1 if plan.direction == "down" else -1)
            STATS["alert_switches"] += 1
        model.apply(target, plan.direction, plan.trigger, key, now)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def fuzz_concurrent(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as root, service(Path(root)) as run:
        STATS["examples"] += 1
        before = STATS["alert_switches"]
        for _ in range(data.draw(st.integers(1, 4), label="bursts")):
            run.clock.now += data.draw(st.sampled_from([0, 1, 30, 90]), label="advance")
            burst(run, data)
            check_state(run)
        STATS["examples_switched"] += STATS["alert_switches"] > before


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    logger = logging.getLogger("remediator")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def test_fuzzed_deliveries_and_manual_calls_keep_the_rules(quiet_logs: None) -> None:
    STATS.clear()
    fuzz_service()
    print(f"\nfuzz: {dict(sorted(STATS.items()))}")
    assert STATS["http_5xx"] == 0
    # The generators must reach the switch: most examples switch on an alert.
    assert STATS["examples_switched"] >= 0.6 * STATS["examples"], dict(STATS)


def test_concurrent_deliveries_and_manual_calls_keep_the_rules(quiet_logs: None) -> None:
    STATS.clear()
    fuzz_concurrent()
    print(f"\nfuzz (concurrent): {dict(sorted(STATS.items()))}")
    assert STATS["http_5xx"] == 0
    assert STATS["examples_switched"] >= 0.6 * STATS["examples"], dict(STATS)
