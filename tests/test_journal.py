"""The switch journal and its recovery rules, on the in-memory model server and runtime.

A "crash" is a BaseException thrown from the journal's step hook: nothing of the switch
catches it, so the entry stays open exactly as a SIGKILL leaves it (the locks go with the
stack, as they go with a dead process). A fresh Remediator then plays the next process.
The app-config file is real; the in-memory "app" reads it at each start.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from remediator.app.remediator import Remediator
from remediator.config import Config, FleetConfig, parse_config
from remediator.domain.alerts import parse_webhook
from remediator.domain.state import State
from remediator.ports.runtime import ROLE_APP, ROLE_SERVER
from remediator.store.locks import StateError
from remediator.store.state import StateStore
from remediator.switch import recovery
from remediator.switch.actions import FleetActions
from remediator.switch.journal import PLANNED
from remediator.switch.resolution import RecoveryFailed
from tests.support.memory_runtime import MemoryRuntime
from tests.support.memory_server import MemoryServer

MIB = 1024 * 1024
FLEET = "mem"
OLD, NEW = "llama3.2:3b", "phi3:mini"
DATA = Path(__file__).parent / "data"


class Died(BaseException):
    """The process died here (a SIGKILL: no handler of the switch runs)."""


@dataclass
class App:
    env_file: Path
    model: str | None = None
    starts: list[str] = field(default_factory=list)

    def start(self) -> int | None:
        self.model = self.env_file.read_text().split("OLLAMA_MODEL=", 1)[1].splitlines()[0]
        self.starts.append(self.model)
        return None

    def probe(self, url: str, model: str) -> str | None:
        return None if self.model == model else f"app health reports {self.model!r}"


@dataclass
class Observer:
    events: list[tuple[str, ...]] = field(default_factory=list)

    def switched(self, fleet: str, direction: str, trigger: str) -> None:
        self.events.append(("switched", fleet, direction))

    def failed(self, fleet: str, step: str) -> None:
        self.events.append(("failed", fleet, step))

    def recovered(self, fleet: str, outcome: str) -> None:
        self.events.append(("recovered", fleet, outcome))

    def deferred(self, fleet: str, reason: str) -> None:
        self.events.append(("deferred", fleet, reason))


class FlakyStore(StateStore):
    """A store whose writes fail (ENOSPC) while ``failing`` > 0 (each failure counts down;
    a negative count fails for ever)."""

    failing = 0

    def _write_locked(self, state: State) -> None:
        if self.failing:
            self.failing -= 1
            raise StateError(f"cannot write {self.path}: No space left on device")
        super()._write_locked(state)


@dataclass
class Rig:
    config: Config
    fleet: FleetConfig
    server: MemoryServer
    runtime: MemoryRuntime
    app: App
    observer: Observer = field(default_factory=Observer)

    def remediator(
        self, on_step: Callable[[str], None] | None = None, store: StateStore | None = None
    ) -> Remediator:
        actions = FleetActions(self.fleet, self.server, self.runtime, app_probe=self.app.probe)
        return Remediator(
            self.config,
            store or StateStore(self.config),
            lambda fc: actions,
            observer=self.observer,
            on_step=on_step,
        )

    def crash_at(self, point: str) -> None:
        """Run a switch down that dies right after ``point`` is recorded."""

        def hook(step: str) -> None:
            if step == point:
                raise Died(point)

        with pytest.raises(Died):
            self.remediator(hook).request(FLEET, "down", reason="test")

    def resolve(self, remediator: Remediator | None = None) -> str | None:
        r = remediator or self.remediator()
        with r.store.switch_lock(FLEET):
            return r.resolve_open(self.fleet)

    def state(self) -> Any:
        return StateStore(self.config).read().fleets[FLEET]

    def notices(self) -> list[str]:
        return [n.message for n in StateStore(self.config).read().notices]

    def config_model(self) -> str:
        return self.app.env_file.read_text().split("OLLAMA_MODEL=", 1)[1].splitlines()[0]

    def assert_agrees(self) -> None:
        fs = self.state()
        assert fs.journal is None
        assert self.config_model() == fs.current_model
        assert self.app.model == fs.current_model
        assert {m.name for m in self.server.loaded()} <= {fs.current_model}


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    env_file = tmp_path / "app.env"
    env_file.write_text(f"OLLAMA_MODEL={OLD}\n")
    config = parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "fleets": {
                FLEET: {
                    "cooldown_seconds": 0,
                    "server": {"kind": "ollama", "url": "http://model-server.invalid:11434"},
                    "containers": {
                        "ready_timeout_seconds": 1,
                        "app_health_url": "http://app.invalid/healthz",
                    },
                    "app_config": [{"path": str(env_file), "format": "env"}],
                }
            },
        },
        "test",
    )
    server = MemoryServer({OLD: 2048 * MIB})
    server.load(OLD)
    runtime = MemoryRuntime()
    app = App(env_file)
    runtime.add(FLEET, ROLE_SERVER, "mem-server", lambda: None)
    runtime.add(FLEET, ROLE_APP, "mem-app", app.start)
    return Rig(config, config.fleets[FLEET], server, runtime, app)


def test_the_intent_comes_first_each_step_is_recorded_and_the_commit_closes_it(rig: Rig) -> None:
    seen: list[tuple[str, Any]] = []
    calls_at_intent: list[int] = []

    def hook(step: str) -> None:
        seen.append((step, StateStore(rig.config).read().fleets[FLEET].journal))
        if step == "intent":
            calls_at_intent.append(len(rig.server.calls) + len(rig.runtime.restarts))

    outcome = rig.remediator(hook).request(FLEET, "down", reason="test")
    assert outcome.switched
    assert [s for s, _ in seen] == ["intent", *PLANNED]
    intent = seen[0][1]
    assert (intent.from_model, intent.to_model, intent.target) == (OLD, NEW, 1)
    assert (intent.direction, intent.trigger, intent.reason) == ("down", "manual", "test")
    assert intent.planned == list(PLANNED) and intent.done == []
    assert calls_at_intent == [0]  # nothing was done before the intent was written
    assert seen[-1][1].done == [
        f"pulled {NEW}",
        "found mem-server mem-app",
        f"unloaded {OLD}",
        f"config_written {NEW}",
        "restarted_ollama mem-server",
        f"verified_ollama {NEW}",
        "restarted_app mem-app",
        f"verified_app {NEW}",
        "settled",
    ]
    assert rig.state().journal is None and rig.state().current_model == NEW
    assert rig.resolve() is None  # nothing open


@pytest.mark.parametrize("point", ["intent", *PLANNED])
def test_an_interrupted_switch_is_rolled_forward_only_when_verified_and_running(
    rig: Rig, point: str
) -> None:
    rig.crash_at(point)
    assert rig.state().journal is not None
    restarts_before = len(rig.runtime.restarts)
    forward = point in ("verified_app", "settled")
    outcome = rig.resolve()
    assert outcome == ("rolled_forward" if forward else "rolled_back")
    rig.assert_agrees()
    fs = rig.state()
    last = fs.history[-1]
    assert (last.from_model, last.to_model, last.recovery) == (OLD, NEW, outcome)
    if forward:
        assert fs.current_model == NEW and fs.index == 1
        assert last.reason == "recovery: rolled forward (test)"
        assert fs.last_switch_at == last.time
        assert rig.runtime.restarts[restarts_before:] == []
        assert rig.observer.events[-2:] == [
            ("switched", FLEET, "down"),
            ("recovered", FLEET, "rolled_forward"),
        ]
    else:
        assert fs.current_model == OLD and fs.index == 0
        assert last.reason == "recovery: rolled back (test)"
        assert fs.last_failure is not None and fs.last_failure["step"] == "recovery"
        assert fs.last_switch_at is None and fs.switches_since(0) == 0
        touched = (
            PLANNED.index(point) >= PLANNED.index("config_written") if point in PLANNED else False
        )
        restarted = rig.runtime.restarts[restarts_before:]
        assert restarted == (["mem-server", "mem-app"] if touched else [])
        assert rig.observer.events[-1] == ("recovered", FLEET, "rolled_back")
    assert f"{OLD} -> {NEW} was interrupted" in rig.notices()[-1]
    assert outcome.replace("_", " ") in rig.notices()[-1]
    assert rig.resolve() is None  # resolved once; the next finds nothing open
    # The next request steps exactly one rung from where the fleet now stands.
    after = rig.remediator().request(FLEET, "down")
    assert after.switched and rig.state().index == fs.index + 1
    rig.assert_agrees()


def test_a_verified_switch_whose_app_no_longer_runs_the_new_model_is_rolled_back(
    rig: Rig,
) -> None:
    rig.crash_at("settled")
    rig.app.model = OLD  # e.g. the app was restarted on an old copy of its config
    assert rig.resolve() == "rolled_back"
    rig.assert_agrees()
    assert rig.state().current_model == OLD


def test_a_failed_recovery_keeps_the_entry_open_and_the_next_switch_resolves_it(rig: Rig) -> None:
    rig.crash_at("restarted_app")
    rig.runtime.fail("restart", "engine gone")
    with pytest.raises(RecoveryFailed, match="engine gone"):
        rig.resolve()
    fs = rig.state()
    assert fs.journal is not None and fs.journal.recovery_attempts == 1
    assert "could not resolve the interrupted switch" in rig.notices()[-1]
    assert rig.observer.events[-1] == ("recovered", FLEET, "failed")
    with pytest.raises(RecoveryFailed):  # a switch of the fleet is refused meanwhile
        rig.remediator().request(FLEET, "down")
    rig.runtime.failures.clear()
    outcome = rig.remediator().request(FLEET, "down")
    assert outcome.switched, outcome.to_dict()
    fs = rig.state()
    assert [(h.recovery, h.to_model) for h in fs.history] == [("rolled_back", NEW), (None, NEW)]
    assert fs.current_model == NEW
    rig.assert_agrees()


def test_a_recovery_that_dies_half_way_is_resolved_again(rig: Rig) -> None:
    rig.crash_at("restarted_app")
    real = rig.runtime.restart

    def dies_once(ref: Any, stop_timeout: int = 10) -> Any:
        rig.runtime.restart = real  # type: ignore[method-assign]
        real(ref, stop_timeout)
        raise Died("during the recovery's restarts")

    rig.runtime.restart = dies_once  # type: ignore[method-assign]
    with pytest.raises(Died):
        rig.resolve()
    assert rig.state().journal is not None
    assert rig.resolve() == "rolled_back"
    assert rig.state().journal is None
    rig.assert_agrees()
    assert len(rig.state().history) == 1


def test_a_failed_intent_write_does_nothing_at_all(rig: Rig) -> None:
    store = FlakyStore(rig.config)
    store.failing = -1
    with pytest.raises(StateError, match="No space left"):
        rig.remediator(store=store).request(FLEET, "down")
    assert rig.server.calls == [] and rig.runtime.restarts == []
    assert rig.config_model() == OLD


def test_a_commit_that_fails_once_is_retried(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "COMMIT_RETRY_PAUSES", (0.01, 0.01, 0.01))
    store = FlakyStore(rig.config)

    def fill(step: str) -> None:
        if step == "settled":
            store.failing = 2

    outcome = rig.remediator(fill, store).request(FLEET, "down")
    assert outcome.switched, outcome.to_dict()
    rig.assert_agrees()
    assert rig.state().current_model == NEW


@pytest.mark.parametrize("closing_fails", [False, True])
def test_a_commit_that_keeps_failing_rolls_the_switch_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, closing_fails: bool
) -> None:
    monkeypatch.setattr(recovery, "COMMIT_RETRY_PAUSES", (0.01, 0.01))
    store = FlakyStore(rig.config)

    def fill(step: str) -> None:
        if step == "settled":
            store.failing = -1 if closing_fails else 3  # the commit and its two retries

    outcome = rig.remediator(fill, store).request(FLEET, "down")
    assert outcome.failure is not None and outcome.failure.step == "state"
    assert "could not be saved" in str(outcome.failure)
    assert rig.observer.events[-1] == ("failed", FLEET, "state")
    # The world is back on the old model, as the state says.
    assert rig.config_model() == OLD and rig.app.model == OLD
    fs = rig.state()
    assert fs.current_model == OLD
    if closing_fails:
        # The entry could not be closed: the next resolution rolls back once more.
        assert fs.journal is not None
        store.failing = 0
        assert rig.resolve() == "rolled_back"
    else:
        assert fs.journal is None and fs.last_failure is not None
        assert fs.last_failure["step"] == "state"
    rig.assert_agrees()


def test_the_webhook_path_resolves_before_it_decides(rig: Rig) -> None:
    rig.crash_at("config_written")
    body = json.loads((DATA / "alertmanager_firing.json").read_text())
    alert = body["alerts"][0]
    alert["labels"]["fleet"] = FLEET
    alert["startsAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 1))
    remediator = rig.remediator()
    acceptance = remediator.accept_alerts(parse_webhook(body))
    # Resolved (rolled back) under the fleet's lock before the alert was judged.
    assert rig.state().history[-1].recovery == "rolled_back"
    assert [a["fingerprint"] for a in acceptance.accepted] == [alert["fingerprint"]]
    for work in acceptance.pending:
        work.run()
    fs = rig.state()
    assert fs.current_model == NEW and fs.history[-1].recovery is None
    rig.assert_agrees()


def test_the_journal_survives_its_json_form(rig: Rig) -> None:
    rig.crash_at("unloaded")
    raw = json.loads(Path(rig.config.state_file).read_text())
    entry = raw["fleets"][FLEET]["journal"]
    assert entry["done"] == [f"pulled {NEW}", "found mem-server mem-app", f"unloaded {OLD}"]
    assert set(entry) == {
        "started_at", "from", "to", "target", "direction", "trigger", "reason",
        "alert_key", "planned", "done", "recovery_attempts",
    }  # fmt: skip
