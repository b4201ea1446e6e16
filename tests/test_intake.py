"""The webhook's entry point, ``Remediator.accept_alerts``: one decision per fleet, under its lock.

Driven directly (no HTTP) with the project's ``Actions`` seam as a recorder; the HTTP answer
is checked once at the end. test_service.py covers the answers per reason and the 50
concurrent deliveries through Flask.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediator.app.remediator import Remediator
from remediator.app.service import create_app
from remediator.config import Config, FleetConfig, parse_config
from remediator.domain.alerts import WebhookAlert, parse_time, parse_webhook, triage
from remediator.domain.decisions import AlertRef, Decision
from remediator.domain.moves import Neighbour
from remediator.domain.records import SwitchJournal
from remediator.domain.state import FleetState
from remediator.store.locks import LockTimeout, file_lock
from remediator.store.state import StateStore
from remediator.switch.background import Background
from remediator.switch.live import LiveFigures
from remediator.switch.plan import SwitchPlan
from remediator.switch.redelivery import handled_redelivery
from simulator.prom_env import RULES_FILE


def iso(t: float) -> str:
    """Alertmanager's startsAt for epoch seconds ``t``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime(t))


# Alerts that started a minute ago, a second apart: before any switch the tests make.
STARTS, LATER, LATEST = iso(time.time() - 60), iso(time.time() - 59), iso(time.time() - 58)
TOKEN = "intake-token"


class Recorder:
    """Records the plans it carries out, optionally taking a while or failing."""

    def __init__(self) -> None:
        self.plans: list[SwitchPlan] = []
        self.delay = 0.0
        self.lock = threading.Lock()

    def for_fleet(self, fleet: FleetConfig) -> Recorder:
        return self

    def execute(self, plan: SwitchPlan, dry_run: bool, record: object = None) -> list[str]:
        time.sleep(self.delay)
        with self.lock:
            self.plans.append(plan)
        return [f"switched to {plan.to_rung.name}"]


class LockCheckingRemediator(Remediator):
    """Fails the test when a decision is taken without the fleet's switch lock held."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decided: list[str | None] = []

    def decide(
        self,
        fleet: FleetConfig,
        fs: FleetState,
        direction: str,
        trigger: str,
        alert: AlertRef | None = None,
        live: LiveFigures | None = None,
        neighbours: Sequence[Neighbour] = (),
    ) -> Decision:
        with pytest.raises(LockTimeout), self.store.switch_lock(fleet.name, 0):
            pass  # pragma: no cover - reached only when nobody holds the lock
        self.decided.append(alert.key if alert else None)
        return super().decide(fleet, fs, direction, trigger, alert, live, neighbours)


def make_config(tmp_path: Path, fleets: dict[str, dict[str, Any]] | None = None) -> Config:
    return parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "fleets": fleets or {"default": {"cooldown_seconds": 0}},
        },
        "test",
    )


def alert(
    fingerprint: str,
    starts_at: str = STARTS,
    *,
    fleet: str = "default",
    remediation: str = "downgrade",
    value: str | None = None,
) -> WebhookAlert:
    annotations = {} if value is None else {"value": value}
    labels = {"alertname": "A", "fleet": fleet, "remediation": remediation}
    body = {
        "version": "4",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": starts_at,
                "fingerprint": fingerprint,
            }
        ],
    }
    return parse_webhook(body)[0]


def remediator_for(config: Config, recorder: Recorder) -> LockCheckingRemediator:
    return LockCheckingRemediator(config, StateStore(config), recorder.for_fleet)


def run_all(pending: list[Any]) -> None:
    for work in pending:
        work.run()


def lock_is_free(store: StateStore, fleet: str) -> bool:
    try:
        with store.switch_lock(fleet, 0):
            return True
    except LockTimeout:
        return False


def test_several_alerts_for_one_fleet_make_one_decision_and_one_switch(tmp_path: Path) -> None:
    config, recorder = make_config(tmp_path), Recorder()
    remediator = remediator_for(config, recorder)
    first, second = alert("aaaa", value="4"), alert("bbbb", LATER, value="5")
    acceptance = remediator.accept_alerts([first, second])
    assert [a["fingerprint"] for a in acceptance.accepted] == ["aaaa"]
    assert [(i["fingerprint"], i["reason"]) for i in acceptance.ignored] == [("bbbb", "superseded")]
    assert acceptance.outcome == "accepted"
    assert remediator.decided == [first.key]  # the second alert was never judged on its own
    assert not lock_is_free(remediator.store, "default")  # held from decision to commit
    run_all(acceptance.pending)
    assert lock_is_free(remediator.store, "default")
    assert [p.alert_key for p in recorder.plans] == [first.key]
    fs = remediator.store.read().fleets["default"]
    assert (fs.index, fs.vram_error_count, fs.history[-1].alert_key) == (1, 0, first.key)
    # The superseded alert, delivered again, is about the model the switch replaced.
    again = remediator.accept_alerts([second])
    assert [i["reason"] for i in again.ignored] == ["stale_alert"]
    assert again.pending == [] and len(recorder.plans) == 1


def test_a_step_down_wins_over_a_step_up_in_one_delivery(tmp_path: Path) -> None:
    auto = {"enabled": True, "quiet_seconds": 1, "failed_quiet_seconds": 1}
    config = make_config(tmp_path, {"default": {"cooldown_seconds": 0, "auto_upgrade": auto}})
    recorder = Recorder()
    remediator = remediator_for(config, recorder)
    with remediator.store.transaction() as state:
        state.fleets["default"].apply_switch(
            config.fleets["default"], 1, direction="down", trigger="manual", reason="", now=1.0
        )
    up, down = alert("up00", remediation="upgrade"), alert("down", remediation="downgrade")
    acceptance = remediator.accept_alerts([up, down])
    assert [a["fingerprint"] for a in acceptance.accepted] == ["down"]
    assert [(i["fingerprint"], i["reason"]) for i in acceptance.ignored] == [("up00", "superseded")]
    run_all(acceptance.pending)
    assert [(p.direction, p.to_rung.name) for p in recorder.plans] == [("down", "tinyllama:1.1b")]


def test_each_fleet_of_a_delivery_is_judged_under_its_own_lock(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"gpu0": {"cooldown_seconds": 0}, "gpu1": {}})
    recorder = Recorder()
    remediator = remediator_for(config, recorder)
    acceptance = remediator.accept_alerts(
        [alert("a0", fleet="gpu0"), alert("a1", fleet="gpu1"), alert("a2", fleet="gpu9")]
    )
    assert sorted(a["fleet"] for a in acceptance.accepted) == ["gpu0", "gpu1"]
    assert [(i["fleet"], i["reason"]) for i in acceptance.ignored] == [("gpu9", "unknown_fleet")]
    background = Background(len(config.fleets))
    background.start(acceptance.pending)
    background.shutdown(wait=True)
    assert sorted(p.fleet.name for p in recorder.plans) == ["gpu0", "gpu1"]
    assert all(lock_is_free(remediator.store, f) for f in ("gpu0", "gpu1"))


def test_a_switching_fleet_answers_duplicates_and_queues_other_alerts(tmp_path: Path) -> None:
    config, recorder = make_config(tmp_path), Recorder()
    remediator = remediator_for(config, recorder)
    running, other = alert("run0"), alert("late", LATER, value="7")
    # Another worker (or the CLI) is switching the fleet for alert run0.
    with remediator.store.switch_lock("default", handling=[running.key]):
        redelivered = remediator.accept_alerts([running])
        assert redelivered.outcome == "duplicate" and redelivered.pending == []
        assert redelivered.ignored[0]["detail"] == "being handled"
        queued = remediator.accept_alerts([other])
        assert queued.outcome == "accepted" and "queued" in queued.accepted[0]["detail"]
        assert remediator.decided == []  # nothing is judged without the lock ...
        assert not config.state_file.exists()  # ... and nothing is written
        waiter = threading.Thread(target=run_all, args=(queued.pending,))
        waiter.start()
        time.sleep(0.3)
        assert recorder.plans == []  # it waits for the running switch
    # That switch ended without switching (it failed, say): the queued alert acts now.
    waiter.join(timeout=10)
    assert remediator.decided == [other.key]
    assert [p.alert_key for p in recorder.plans] == [other.key]


def test_a_queued_alert_about_the_replaced_model_is_stale(tmp_path: Path) -> None:
    config, recorder = make_config(tmp_path), Recorder()
    remediator = remediator_for(config, recorder)
    recorder.delay = 0.5
    first = remediator.accept_alerts([alert("aaaa")])
    background = Background(1)
    background.start(first.pending)
    late = remediator.accept_alerts([alert("bbbb", LATEST)])
    assert "queued" in late.accepted[0]["detail"]
    background.start(late.pending)
    background.shutdown(wait=True)
    assert len(recorder.plans) == 1
    assert remediator.decided == [alert("aaaa").key, alert("bbbb", LATEST).key]
    assert len(remediator.store.read().fleets["default"].history) == 1


def test_concurrent_deliveries_decide_only_under_the_lock_and_switch_once(tmp_path: Path) -> None:
    config, recorder = make_config(tmp_path), Recorder()
    remediator = remediator_for(config, recorder)
    recorder.delay = 0.2
    background = Background(1)
    outcomes: list[str] = []

    def deliver() -> None:
        acceptance = remediator.accept_alerts([alert("same")])
        background.start(acceptance.pending)
        outcomes.append(acceptance.outcome)

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    background.shutdown(wait=True)
    assert len(outcomes) == 20 and outcomes.count("accepted") >= 1
    assert len(recorder.plans) == 1
    assert 1 <= len(remediator.decided) <= 20  # each under the lock (LockCheckingRemediator)


def test_a_redelivery_of_a_handled_alert_is_answered_without_locks_or_a_write(
    tmp_path: Path,
) -> None:
    config, recorder = make_config(tmp_path), Recorder()
    remediator = remediator_for(config, recorder)
    handled = alert("aaaa", value="4")
    run_all(remediator.accept_alerts([handled]).pending)
    # The first redelivery records the alert's count again (the switch reset it to 0) ...
    assert remediator.accept_alerts([handled]).outcome == "duplicate"
    assert remediator.store.read().fleets["default"].vram_error_count == 4
    decided, before = len(remediator.decided), config.state_file.stat()
    # ... then nothing is left to change: the snapshot answers while another process holds
    # both locks, and the file is not written.
    with remediator.store.switch_lock("default"), file_lock(remediator.store.lock_path, 1):
        again = remediator.accept_alerts([handled])
    assert again.outcome == "duplicate" and again.pending == []
    assert again.ignored[0]["detail"] == f"alert {handled.key} was already handled"
    assert len(remediator.decided) == decided  # answered from the snapshot, not judged
    after = config.state_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # Anything the locked judgement would change is judged there: a new count, a new alert.
    changed = remediator.accept_alerts([alert("aaaa", value="5")])
    assert changed.outcome == "duplicate" and len(remediator.decided) == decided + 1
    assert remediator.store.read().fleets["default"].vram_error_count == 5
    mixed = remediator.accept_alerts([alert("aaaa", value="5"), alert("bbbb", LATER)])
    assert [i["reason"] for i in mixed.ignored] == ["duplicate", "stale_alert"]
    assert len(recorder.plans) == 1


def test_a_duplicate_is_logged_at_debug_and_other_refusals_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, recorder = make_config(tmp_path), Recorder()
    remediator = remediator_for(config, recorder)
    handled = alert("aaaa", value="4")
    run_all(remediator.accept_alerts([handled]).pending)
    caplog.set_level(logging.DEBUG, logger="remediator")
    remediator.accept_alerts([handled])  # judged under the locks (it records the count)
    remediator.accept_alerts([handled])  # answered from the snapshot
    remediator.accept_alerts([alert("bbbb", LATER)])  # stale: not a duplicate
    refusals = [
        (r.levelno, r.getMessage().split("not acted on (")[1].split(")")[0])
        for r in caplog.records
        if "not acted on (" in r.getMessage()
    ]
    assert refusals == [
        (logging.DEBUG, "duplicate"),
        (logging.DEBUG, "duplicate"),
        (logging.INFO, "stale_alert"),
    ]


def test_a_redelivery_is_left_to_the_locked_judgement_when_it_could_change_something() -> None:
    config = make_config(Path("/nonexistent"))
    handled, other = alert("aaaa", value="2"), alert("bbbb", LATER)
    requests, _ = triage(config, [handled, other])
    ask, new = requests["default"]
    fs = FleetState.initial(config.fleets["default"])
    fs.processed_alerts[handled.key], fs.vram_error_count = 1.0, 2
    judged = handled_redelivery(fs, [ask], reads_live=False)
    assert judged is not None and [d.reason for _, d in judged] == ["duplicate"]
    assert handled_redelivery(fs, [ask, new], reads_live=False) is None  # a new alert
    assert handled_redelivery(fs, [ask], reads_live=True) is None  # Prometheus' count to keep
    assert handled_redelivery(None, [ask], reads_live=False) is None  # no state file
    fs.vram_error_count = 3
    assert handled_redelivery(fs, [ask], reads_live=False) is None  # the alert's count to keep
    fs.vram_error_count = 2
    fs.journal = SwitchJournal(1.0, "llama3.2:3b", "phi3:mini", 1, "down", "alert", "")
    assert handled_redelivery(fs, [ask], reads_live=False) is None  # a switch to resolve


def test_the_state_snapshot_is_parsed_again_only_when_a_commit_replaced_the_file(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    store = StateStore(config)
    assert store.peek() is None  # no file yet
    with store.transaction() as state:
        state.fleets["default"].vram_error_count = 1
    first = store.peek()
    assert first is not None and first.fleets["default"].vram_error_count == 1
    assert store.peek() is first  # unchanged file: the same parsed state
    with store.transaction() as state:
        state.fleets["default"].processed_alerts["k@t"] = time.time()
    second = store.peek()
    assert second is not first and second is not None
    assert "k@t" in second.fleets["default"].processed_alerts
    config.state_file.write_text("{not json")
    assert store.peek() is None  # a file to recover: the locked read does it


def test_a_state_error_lets_go_of_the_fleet_lock(tmp_path: Path) -> None:
    config = parse_config(
        {"state_file": str(tmp_path / "state.json"), "lock_timeout_seconds": 0.1}, "test"
    )
    remediator = remediator_for(config, Recorder())
    with file_lock(remediator.store.lock_path, 5), pytest.raises(LockTimeout):
        remediator.accept_alerts([alert("aaaa")])
    assert lock_is_free(remediator.store, "default")


def test_the_webhook_answers_what_the_entry_point_decided(tmp_path: Path) -> None:
    config, recorder = make_config(tmp_path), Recorder()
    app = create_app(config, token=TOKEN, actions_for=recorder.for_fleet)
    body = {
        "version": "4",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "A", "fleet": "default", "remediation": "downgrade"},
                "annotations": {"value": "6"},
                "startsAt": starts,
                "fingerprint": fingerprint,
            }
            for fingerprint, starts in (("aaaa", STARTS), ("bbbb", LATER))
        ],
    }
    resp = app.test_client().post(
        "/webhook/alertmanager", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status_code == 202
    answer = resp.get_json()
    assert answer["outcome"] == "accepted"
    assert [a["fingerprint"] for a in answer["accepted"]] == ["aaaa"]
    assert [(i["fingerprint"], i["reason"]) for i in answer["ignored"]] == [("bbbb", "superseded")]
    app.extensions["model_fleet"].background.shutdown(wait=True)
    history = StateStore(config).read().fleets["default"].history
    assert [r.alert_key for r in history] == [f"aaaa@{STARTS}"]
    assert history[0].time >= parse_time(STARTS)


def offload_alert(fingerprint: str, starts_at: str, fleet: str = "default") -> WebhookAlert:
    """A ModelFleetCPUOffload alert as Alertmanager delivers it: the rule's own labels."""
    [rule] = [
        r
        for g in yaml.safe_load(RULES_FILE.read_text())["groups"]
        for r in g["rules"]
        if r.get("alert") == "ModelFleetCPUOffload"
    ]
    labels = {"alertname": "ModelFleetCPUOffload", **rule["labels"]}
    labels |= {"fleet": fleet, "model": "llama3.2:3b"}
    annotations = {"summary": f"Fleet {fleet}: 40% of llama3.2:3b runs from system memory"}
    body = {
        "version": "4",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": starts_at,
                "fingerprint": fingerprint,
            }
        ],
    }
    return parse_webhook(body)[0]


def test_an_offload_alert_steps_down_under_the_same_rules_as_vram_errors(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"default": {"cooldown_seconds": 600}})
    recorder = Recorder()
    remediator = remediator_for(config, recorder)
    first = offload_alert("off1", STARTS)
    acceptance = remediator.accept_alerts([first])
    assert [a["fingerprint"] for a in acceptance.accepted] == ["off1"]
    run_all(acceptance.pending)
    assert [(p.direction, p.to_rung.name) for p in recorder.plans] == [("down", "phi3:mini")]
    fs = remediator.store.read().fleets["default"]
    # One rung down, trigger alert; no `value`: the VRAM error count is left alone.
    assert (fs.index, fs.history[-1].trigger, fs.history[-1].alert_key) == (1, "alert", first.key)
    assert fs.vram_error_count == 0
    # Alertmanager repeats it: a duplicate. Another one that started before the switch: stale.
    for again, reason in ((first, "duplicate"), (offload_alert("off2", LATER), "stale_alert")):
        answer = remediator.accept_alerts([again])
        assert [i["reason"] for i in answer.ignored] == [reason]
        assert answer.pending == []
    # One that started after it, within the fleet's cooldown: deferred until the cooldown ends.
    third = offload_alert("off3", iso(time.time() + 1))
    answer = remediator.accept_alerts([third])
    assert (answer.outcome, answer.ignored, answer.pending) == ("deferred", [], [])
    assert [(i["fingerprint"], i["reason"]) for i in answer.deferred] == [("off3", "cooldown")]
    deferred = remediator.store.read().fleets["default"].deferred[third.key]
    assert deferred.acts_at == pytest.approx(fs.last_switch_at + 600)
    assert len(recorder.plans) == 1


def test_the_offload_tolerance_is_exported_per_fleet(tmp_path: Path) -> None:
    """ModelFleetCPUOffload compares with model_fleet_offload_tolerance_ratio (alert_rules/)."""
    config = make_config(tmp_path, {"tolerant": {"offload_tolerance": 0.1}, "strict": {}})
    app = create_app(config, token=TOKEN, actions_for=Recorder().for_fleet)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    host = f'host="{config.host}"'
    assert f'model_fleet_offload_tolerance_ratio{{fleet="tolerant",{host}}} 0.1' in text
    assert f'model_fleet_offload_tolerance_ratio{{fleet="strict",{host}}} 0.0' in text
