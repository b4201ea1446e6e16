"""Deferred alerts: an alert refused for a reason that passes acts when it has passed.

Driven directly, on the remediator's own clock, with the project's ``Actions`` seam as a
recorder and a Prometheus stand-in at the ``Querier`` seam; ``judge_due`` is called at the
moments a test chooses (the service's clock thread calls it once a second). The HTTP answer
and the status are covered in test_service.py, the whole loop on the shipped configuration in
test_scenarios.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from remediator.adapters.prometheus import PrometheusError, Sample
from remediator.app.remediator import Remediator
from remediator.config import Config, FleetConfig, parse_config
from remediator.domain.alerts import WebhookAlert, parse_webhook
from remediator.domain.decisions import HOUR
from remediator.domain.records import DeferredAlert, SwitchRecord
from remediator.domain.state import MAX_DEFERRED, FleetState
from remediator.store.state import StateStore
from remediator.switch.deferrals import DeferralClock, Pass, judge_due, next_due
from remediator.switch.live import LiveReader
from remediator.switch.plan import NullObserver, SwitchPlan

T0 = 1_800_000_000.0  # the tests' clock starts here


class Clock:
    """The remediator's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Records the plans it carries out."""

    def __init__(self) -> None:
        self.plans: list[SwitchPlan] = []

    def for_fleet(self, fleet: FleetConfig) -> Recorder:
        return self

    def execute(self, plan: SwitchPlan, dry_run: bool, record: object = None) -> list[str]:
        self.plans.append(plan)
        return [f"switched to {plan.to_rung.name}"]


class Observer(NullObserver):
    """The observer: the deferrals counted."""

    def __init__(self) -> None:
        self.deferrals: list[tuple[str, str]] = []

    def deferred(self, fleet: str, reason: str) -> None:
        self.deferrals.append((fleet, reason))


class FakePrometheus:
    """ALERTS as a Prometheus would answer it: the series given, or an error."""

    url = "http://prometheus.test:9090"

    def __init__(self) -> None:
        self.firing: list[dict[str, str]] = []
        self.error: str | None = None
        self.queries: list[str] = []

    def query(self, expr: str) -> list[Sample]:
        self.queries.append(expr)
        if self.error is not None:
            raise PrometheusError(self.error)
        if not expr.startswith("ALERTS{"):
            return []  # live figures: no samples (the decisions then do without)
        return [
            Sample({"__name__": "ALERTS", "alertstate": "firing", **s}, 1.0) for s in self.firing
        ]


def make_config(tmp_path: Path, **fleet: object) -> Config:
    return parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "fleets": {"default": {"cooldown_seconds": 60, **fleet}},
        },
        "test",
    )


class Rig:
    """A remediator on a test clock, its recorder, observer and Prometheus stand-in."""

    def __init__(self, config: Config, prometheus: FakePrometheus | None = None) -> None:
        self.config = config
        self.clock = Clock()
        self.recorder = Recorder()
        self.observer = Observer()
        self.prometheus = prometheus
        self.remediator = self.new_remediator()

    def new_remediator(self) -> Remediator:
        """A remediator as a restarted service builds it: nothing but the state file carried."""
        return Remediator(
            self.config,
            StateStore(self.config, clock=self.clock),
            self.recorder.for_fleet,
            clock=self.clock,
            observer=self.observer,
            live=LiveReader(self.prometheus, self.clock, self.config.host),
        )

    def fleet(self) -> FleetState:
        return self.remediator.store.read().fleets["default"]

    def deliver(self, *alerts: WebhookAlert) -> Any:
        acceptance = self.remediator.accept_alerts(list(alerts))
        for work in acceptance.pending:
            work.run()
        return acceptance


def alert(
    fingerprint: str,
    starts: float,
    *,
    status: str = "firing",
    by_hand: bool = False,
    **labels: str,
) -> WebhookAlert:
    body = {
        "version": "4",
        "alerts": [
            {
                "status": status,
                "labels": {
                    "alertname": "ModelFleetVRAMErrors",
                    "fleet": "default",
                    "remediation": "downgrade",
                    "monitor": "model-fleet",  # an external label: ALERTS does not carry it
                    **labels,
                },
                "annotations": {"value": "3"},
                "startsAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(starts)),
                "fingerprint": fingerprint,
                # Prometheus' rules link their graph; an alert posted by hand has none.
                "generatorURL": "" if by_hand else "http://prometheus:9090/graph?g0.expr=x",
            }
        ],
    }
    return parse_webhook(body)[0]


def test_a_chain_whose_second_rung_fails_at_once_steps_again_when_the_cooldown_ends(
    tmp_path: Path,
) -> None:
    """The default ladder with the shipped 60 s cooldown: phi3:mini fails at once."""
    rig = Rig(make_config(tmp_path))
    assert rig.deliver(alert("first", T0 - 5)).outcome == "accepted"
    assert rig.fleet().current_model == "phi3:mini"
    # phi3:mini fails three times within 8 s of the switch: its alert is deferred.
    rig.clock.now = T0 + 8
    second = alert("second", T0 + 7)
    answer = rig.deliver(second)
    assert (answer.outcome, answer.pending, answer.ignored) == ("deferred", [], [])
    [waiting] = rig.fleet().deferred.values()
    assert (waiting.key, waiting.reason, waiting.acts_at) == (second.key, "cooldown", T0 + 60)
    assert waiting.labels["alertname"] == "ModelFleetVRAMErrors" and waiting.error_count == 3
    assert rig.observer.deferrals == [("default", "cooldown")]
    # Not due: nothing is judged, nothing switches.
    rig.clock.now = T0 + 59.9
    assert judge_due(rig.remediator) == Pass()
    # Due: judged again and switched, with no redelivery.
    rig.clock.now = T0 + 60.5
    assert judge_due(rig.remediator) == Pass(judged=1, switched=1)
    fs = rig.fleet()
    assert (fs.current_model, fs.deferred) == ("tinyllama:1.1b", {})
    assert fs.history[-1].alert_key == second.key and fs.last_switch_at == T0 + 60.5
    assert [p.to_rung.name for p in rig.recorder.plans] == ["phi3:mini", "tinyllama:1.1b"]
    # Alertmanager's repeat of it is a duplicate; nothing is left to judge.
    assert [i["reason"] for i in rig.deliver(second).ignored] == ["duplicate"]
    assert judge_due(rig.remediator) == Pass()


def test_over_the_hourly_cap_it_acts_when_the_oldest_switch_leaves_the_hour(
    tmp_path: Path,
) -> None:
    rig = Rig(make_config(tmp_path))
    with rig.remediator.store.transaction() as state:
        fs = state.fleets["default"]
        starts = [T0 - HOUR + 20, *(T0 - 1000 + 100 * i for i in range(5))]
        fs.history = [SwitchRecord(t, "default", "a", "b", "up", "manual", "") for t in starts]
        fs.last_switch_at = starts[-1]
    held = alert("capped", T0 - 2)
    assert rig.deliver(held).outcome == "deferred"
    [waiting] = rig.fleet().deferred.values()
    assert waiting.reason == "rate_limited"
    assert T0 + 20 < waiting.acts_at < T0 + 20.01
    rig.clock.now = T0 + 19
    assert judge_due(rig.remediator) == Pass()
    rig.clock.now = waiting.acts_at
    assert judge_due(rig.remediator) == Pass(judged=1, switched=1)
    assert rig.fleet().history[-1].alert_key == held.key


def test_a_cooldown_followed_by_the_cap_defers_again_and_counts_each_reason(
    tmp_path: Path,
) -> None:
    rig = Rig(make_config(tmp_path, max_switches_per_hour=2))
    rig.deliver(alert("one", T0 - 10))  # switch 1 at T0
    with rig.remediator.store.transaction() as state:  # and one more at T0 - 3000
        state.fleets["default"].history.insert(
            0, SwitchRecord(T0 - 3000, "default", "a", "b", "up", "manual", "")
        )
    rig.clock.now = T0 + 5
    held = alert("two", T0 + 4)
    rig.deliver(held)
    # The cooldown ends at T0 + 60 but the cap holds until T0 - 3000 + 1 h = T0 + 600: the
    # decision says so at once, so one judgement suffices.
    [waiting] = rig.fleet().deferred.values()
    assert (waiting.reason, round(waiting.acts_at)) == ("cooldown", T0 + 600)
    rig.clock.now = T0 + 61
    assert judge_due(rig.remediator) == Pass()
    # A third switch by hand inside the hour: when the alert falls due, the cap holds again.
    with rig.remediator.store.transaction() as state:
        state.fleets["default"].history.append(
            SwitchRecord(T0 + 100, "default", "a", "b", "reset", "manual", "")
        )
    rig.clock.now = T0 + 600.5
    assert judge_due(rig.remediator) == Pass(judged=1)
    [again] = rig.fleet().deferred.values()
    assert (again.key, again.reason) == (held.key, "rate_limited")
    assert again.deferred_at == T0 + 5  # first deferred then
    assert rig.observer.deferrals == [("default", "cooldown"), ("default", "rate_limited")]


def test_a_resolution_or_prometheus_ends_the_deferral_and_an_unknown_answer_keeps_it(
    tmp_path: Path,
) -> None:
    prometheus = FakePrometheus()
    rig = Rig(make_config(tmp_path), prometheus)
    rig.deliver(alert("one", T0 - 10))
    rig.clock.now = T0 + 5
    # Two alerts deferred (two containers of the fleet).
    a, b = alert("aaaa", T0 + 1, container="c1"), alert("bbbb", T0 + 2, container="c2")
    rig.deliver(a)
    rig.deliver(b)
    assert set(rig.fleet().deferred) == {a.key, b.key}
    # Alertmanager resolves a: its deferral ends at once.
    rig.deliver(alert("aaaa", T0 + 1, status="resolved", container="c1"))
    assert set(rig.fleet().deferred) == {b.key}
    # Prometheus does not answer when b falls due: the deferral is trusted, b acts.
    prometheus.error = "connection refused"
    rig.clock.now = T0 + 61
    assert judge_due(rig.remediator) == Pass(judged=1, switched=1)
    assert rig.fleet().history[-1].alert_key == b.key
    # Next: one that Prometheus no longer shows firing is dropped without a switch, and one
    # that it shows (its labels a subset of the alert's) acts.
    prometheus.error = None
    rig.clock.now = T0 + 70
    gone, firing = alert("cccc", T0 + 69, container="c1"), alert("dddd", T0 + 69.5, container="c2")
    rig.deliver(gone, firing)
    assert set(rig.fleet().deferred) == {gone.key, firing.key}
    prometheus.firing = [
        {"alertname": "ModelFleetVRAMErrors", "fleet": "default", "container": "c2",
         "remediation": "downgrade"},
    ]  # fmt: skip
    rig.clock.now = T0 + 122
    assert judge_due(rig.remediator) == Pass(judged=1, switched=1, dropped=1)
    fs = rig.fleet()
    assert fs.deferred == {} and fs.history[-1].alert_key == firing.key
    assert 'ALERTS{alertname="ModelFleetVRAMErrors",alertstate="firing"}' in prometheus.queries
    # An alert posted to Alertmanager by hand is no rule's: Prometheus is not asked, it is
    # judged (the fleet is at its smallest rung by now: nothing left to switch to).
    rig.clock.now = T0 + 130
    manual = alert("eeee", T0 + 129, by_hand=True, alertname="ManualTest")
    rig.deliver(manual)
    assert rig.fleet().deferred[manual.key].from_prometheus is False
    asked = len(prometheus.queries)
    rig.clock.now = T0 + 183
    assert judge_due(rig.remediator) == Pass(judged=1)
    assert rig.fleet().deferred == {} and rig.fleet().current_model == "qwen2.5:0.5b"
    assert not any(q.startswith("ALERTS") for q in prometheus.queries[asked:])


def test_a_deferred_alert_survives_a_restart_and_acts_when_the_remediator_is_back(
    tmp_path: Path,
) -> None:
    rig = Rig(make_config(tmp_path))
    rig.deliver(alert("one", T0 - 10))
    rig.clock.now = T0 + 3
    held = alert("two", T0 + 2)
    rig.deliver(held)
    # The service is down from T0 + 4 to T0 + 300; the state file is all that is left.
    rig.clock.now = T0 + 300
    rig.remediator = rig.new_remediator()
    clock = DeferralClock(rig.remediator)
    assert clock.tick() == Pass(judged=1, switched=1)  # its first look
    assert rig.fleet().history[-1].alert_key == held.key
    # Nothing changed since and nothing is due: the next look does not even parse the file.
    assert clock.tick() is None


def test_a_fleet_that_is_switching_is_left_for_the_next_look(tmp_path: Path) -> None:
    rig = Rig(make_config(tmp_path))
    rig.deliver(alert("one", T0 - 10))
    rig.clock.now = T0 + 3
    rig.deliver(alert("two", T0 + 2))
    rig.clock.now = T0 + 61
    store = rig.remediator.store
    with store.switch_lock("default", 0):
        assert judge_due(rig.remediator) == Pass(busy=1)
    assert len(rig.fleet().deferred) == 1
    assert judge_due(rig.remediator) == Pass(judged=1, switched=1)


def test_a_deferred_alert_about_the_previous_model_is_dropped_as_stale(tmp_path: Path) -> None:
    rig = Rig(make_config(tmp_path))
    rig.deliver(alert("one", T0 - 10))
    rig.clock.now = T0 + 3
    held = alert("two", T0 + 2)
    rig.deliver(held)
    # A person steps the fleet down meanwhile: the deferred alert was about phi3:mini.
    rig.clock.now = T0 + 30
    assert rig.remediator.request("default", "down").switched
    rig.clock.now = T0 + 61
    assert judge_due(rig.remediator) == Pass(judged=1)
    fs = rig.fleet()
    assert fs.deferred == {} and fs.current_model == "tinyllama:1.1b" and len(fs.history) == 2


def test_deferred_alerts_are_bounded_and_round_trip_through_the_state_file(
    tmp_path: Path,
) -> None:
    rig = Rig(make_config(tmp_path))
    rig.deliver(alert("one", T0 - 10))
    rig.clock.now = T0 + 30
    for i in range(MAX_DEFERRED + 5):
        rig.deliver(alert(f"f{i:03d}", T0 + i * 0.01))
    deferred = rig.fleet().deferred
    assert len(deferred) == MAX_DEFERRED
    assert min(a.started_at for a in deferred.values()) == pytest.approx(T0 + 0.05)  # oldest gone
    raw = json.loads(Path(rig.config.state_file).read_text())
    entries = raw["fleets"]["default"]["deferred"]
    assert [DeferredAlert.from_dict(e) for e in entries] == sorted(
        deferred.values(), key=lambda a: (a.acts_at, a.key)
    )
    assert next_due(rig.remediator.store.read()) == T0 + 60


@pytest.mark.parametrize(
    "entry",
    [
        {"key": 1},
        {"key": "k", "direction": "down", "trigger": "alert", "reason": "cooldown",
         "started_at": "yesterday", "deferred_at": 1, "acts_at": 2},
        {"key": "k", "direction": "down", "trigger": "alert", "reason": "cooldown",
         "started_at": 1, "deferred_at": 1, "acts_at": 2, "labels": ["x"]},
    ],
)  # fmt: skip
def test_a_malformed_deferred_entry_keeps_the_file_aside(
    tmp_path: Path, entry: dict[str, Any]
) -> None:
    config = make_config(tmp_path)
    store = StateStore(config)
    with store.transaction() as state:
        state.fleets["default"].vram_error_count = 1  # a file to spoil
    raw = json.loads(Path(config.state_file).read_text())
    raw["fleets"]["default"]["deferred"] = [entry]
    Path(config.state_file).write_text(json.dumps(raw))
    state = store.read()
    assert state.fleets["default"].deferred == {}
    assert state.notices and state.notices[0].kept_as is not None
