"""Scripted incidents on the whole loop with the shipped files, each with a timeline and a bound.

Every scenario runs the real exporter, the remediator under gunicorn, Prometheus and
Alertmanager on copies of config/model-fleet.yaml, monitoring/prometheus.yml,
monitoring/alertmanager.yml and alert_rules/model_fleet.rules.yml in which only addresses,
paths, the token and the fleet's name change (simulator/scenario.py says what and why). A
scenario that shortens a timing says so in its docstring and asserts the change
(``Scenario.timing_changes``); the chain and the cooldown scenarios run with the shipped
60 s cooldown. Bounds are asserted from the remediator's own records (``/history`` times,
``/status``) and the errors' times (Docker's log timestamps or the moment they were printed).
Scenarios run one after the other, each on its own fleet, containers, services and directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediator.domain.records import SwitchRecord
from remediator.domain.state import FleetState
from simulator.local_http import http_get, wait_until
from simulator.loop import sample_values
from simulator.loop_setup import LOAD_FAILED_LINE, LOOP_LABEL, OOM_LINE
from simulator.scenario import (
    CHAIN_OTHER_USED_MIB,
    LADDER,
    SHIPPED_CONFIG,
    SHIPPED_FLEET,
    Part,
    Scenario,
    ScenarioOptions,
    chain_options,
    run_chain,
    shipped_config,
)

pytestmark = [pytest.mark.scenario, pytest.mark.docker, pytest.mark.slow]

# How late an action may come after the moment it became allowed (the bound).
SLACK = 10.0
# Shipped: the cooldown of config/model-fleet.yaml, the hourly cap's default.
COOLDOWN = 60.0
MAX_SWITCHES_PER_HOUR = 6
# Shipped intervals (2 s scrape, 2 s evaluation, 1 s group_wait) plus a switch, loaded machine.
ALERT_TIMEOUT = 45.0
# Prometheus' --rules.alert.resend-delay (its default; the tests do not change it): how long
# it waits before sending a firing alert again, e.g. to an Alertmanager that was down.
RESEND_DELAY = 60.0


def report(name: str, started: float, **figures: float) -> None:
    """One line per scenario: its runtime and its figures (run pytest with -s to see it)."""
    shown = ", ".join(f"{k} {v:.1f} s" for k, v in figures.items())
    print(f"\nscenario {name}: runtime {time.monotonic() - started:.1f} s; {shown}")


def deferred(
    scenario: Scenario,
    reason: str,
    timeout: float = ALERT_TIMEOUT,
    alertname: str = "ModelFleetVRAMErrors",
    direction: str = "down",
) -> dict[str, Any]:
    """Wait until the remediator keeps an alert for later for ``reason``; the entry."""
    found = wait_until(
        lambda: [d for d in scenario.deferred_alerts() if d["reason"] == reason],
        timeout,
        f"an alert deferred for {reason} in /status deferred_alerts",
        interval=0.5,
        diagnose=scenario.diagnostics,
    )
    entry = dict(found[0])
    assert (entry["direction"], entry["alertname"]) == (direction, alertname), entry
    return entry


def acts_at(entry: dict[str, Any]) -> float:
    """When a deferred alert is judged again (epoch seconds), checked against its ISO form."""
    epoch = float(entry["acts_at_epoch"])
    iso = datetime.fromisoformat(str(entry["acts_at"]).replace("Z", "+00:00")).timestamp()
    assert iso == pytest.approx(epoch, abs=1), entry
    return epoch


def firing_since(scenario: Scenario, alertname: str) -> float:
    """Wait until Prometheus fires ``alertname`` for the fleet; its activeAt."""
    alert = wait_until(
        lambda: scenario.firing(alertname),
        ALERT_TIMEOUT,
        f"{alertname} firing",
        interval=0.2,
        diagnose=scenario.diagnostics,
    )
    return datetime.fromisoformat(alert[0]["activeAt"][:26].rstrip("Z") + "+00:00").timestamp()


def in_alertmanager(scenario: Scenario, alertname: str) -> None:
    """Wait until Alertmanager holds ``alertname`` for the fleet."""
    am = scenario.alertmanagers[0]
    wait_until(
        lambda: am.alerts(f'alertname="{alertname}"', f'fleet="{scenario.fleet}"'),
        ALERT_TIMEOUT,
        f"Alertmanager to hold {alertname}",
        interval=0.1,
        diagnose=scenario.diagnostics,
    )


def down_and_up(fleet: str, times: list[float]) -> list[SwitchRecord]:
    """Switches between phi3:mini and tinyllama:1.1b at ``times``: down first, ending on phi3."""
    records = []
    for i, at in enumerate(times):
        down = i % 2 == 0
        records.append(
            SwitchRecord(
                time=at,
                fleet=fleet,
                from_model=LADDER[1] if down else LADDER[2],
                to_model=LADDER[2] if down else LADDER[1],
                direction="down" if down else "up",
                trigger="alert" if down else "manual",
                reason="earlier incident (scenario's past)",
            )
        )
    return records


def past(fleet: str, records: Callable[[float], list[SwitchRecord]]) -> Callable[[float], Any]:
    """A state file entry on phi3:mini whose history is ``records(now)``."""

    def build(now: float) -> FleetState:
        history = records(now)
        ups = [r.time for r in history if r.direction == "up"]
        return FleetState(
            current_model=LADDER[1],
            index=1,
            last_switch_at=history[-1].time,
            last_upgrade_at=ups[-1] if ups else None,
            history=history,
        )

    return build


def test_the_config_copy_changes_only_addresses_paths_and_the_fleet_name(tmp_path: Path) -> None:
    """What every scenario runs on: the shipped model-fleet.yaml, addresses and names aside."""
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
    copy = shipped_config(
        "scn-x",
        state_file=tmp_path / "state.json",
        server_url="http://127.0.0.1:1",
        app_config=tmp_path / "app.env",
        app_health_url="http://127.0.0.1:2/healthz",
    )
    # The exporter's selector: which containers, not how fast (simulator/scenario.py).
    assert copy.pop("exporter") == {"labels": {"model-fleet.role": "ollama", LOOP_LABEL: "scn-x"}}
    assert copy.pop("state_file") == str(tmp_path / "state.json")
    shipped.pop("state_file")
    entry, default = copy.pop("fleets")["scn-x"], shipped.pop("fleets")[SHIPPED_FLEET]
    assert copy == shipped
    assert entry.pop("server") == {**default.pop("server"), "url": "http://127.0.0.1:1"}
    ((target,), (shipped_target,)) = entry.pop("app_config"), default.pop("app_config")
    assert target == {**shipped_target, "path": str(tmp_path / "app.env")}
    containers, shipped_containers = entry.pop("containers"), default.pop("containers")
    assert containers == {**shipped_containers, "app_health_url": "http://127.0.0.1:2/healthz"}
    assert entry == default  # the cooldown, the policy, the GPU: as shipped


# -- the chain and the cooldown ------------------------------------------------------------


def test_chain_the_second_rung_fails_at_once_and_steps_on_when_the_cooldown_ends(
    tmp_path: Path,
) -> None:
    """Other work leaves room for tinyllama:1.1b only: llama3.2:3b fails, the fleet steps to
    phi3:mini, which fails at once (it is larger), and the fleet steps on to tinyllama:1.1b at
    most cooldown + 10 s after the first step. Shipped timings throughout."""
    started = time.monotonic()
    with Scenario(tmp_path, chain_options()) as s:
        assert s.timing_changes() == {}
        assert s.fleet_config().cooldown_seconds == COOLDOWN

        def during_cooldown(first_switch: float) -> None:
            entry = deferred(s, "cooldown")
            assert acts_at(entry) == pytest.approx(first_switch + COOLDOWN, abs=1)

        times = run_chain(s, during_cooldown=during_cooldown)
        second_run = s.server_errors()[1]
        # phi3:mini failed at once: its third error came well inside the cooldown.
        assert len(second_run) >= 3 and second_run[2] < times.first_switch + COOLDOWN - 10
        assert times.second_switch >= times.first_switch + COOLDOWN
        assert times.margin >= 0, f"the second step came {-times.margin:.1f} s late"
        s.observe(10, switches=2)  # settled: tinyllama:1.1b fits, no third step
        assert s.deferred_alerts() == []
        report(
            "chain",
            started,
            time_to_settle=times.time_to_settle,
            between_steps=times.second_switch - times.first_switch,
            margin=times.margin,
        )


def test_errors_that_begin_inside_the_cooldown_are_acted_on_when_it_ends(tmp_path: Path) -> None:
    """Three errors step llama3.2:3b down to phi3:mini; 15 s later other work takes the VRAM
    phi3:mini needs and its errors go on; the step down comes at most 10 s after the cooldown
    ends. Shipped timings throughout."""
    started = time.monotonic()
    with Scenario(tmp_path, ScenarioOptions(simulate_vram=True)) as s:
        assert s.timing_changes() == {}
        assert s.fleet_config().cooldown_seconds == COOLDOWN
        s.emit_errors(3)
        first = float(s.wait_switches(1, ALERT_TIMEOUT)[0]["time"])
        s.follow_vram()
        time.sleep(max(0.0, first + 15 - time.time()))
        s.fill_vram(CHAIN_OTHER_USED_MIB)
        assert not s.fits(LADDER[1]) and s.fits(LADDER[2])
        entry = deferred(s, "cooldown")
        assert acts_at(entry) == pytest.approx(first + COOLDOWN, abs=1)
        history = s.wait_switches(2, COOLDOWN + 2 * SLACK)
        second = float(history[1]["time"])
        errors = s.server_errors()[1]
        assert first < errors[0] and errors[2] < first + COOLDOWN, "not inside the cooldown"
        assert (history[1]["from"], history[1]["to"]) == (LADDER[1], LADDER[2])
        margin = first + COOLDOWN + SLACK - second
        assert second >= first + COOLDOWN
        assert margin >= 0, f"acted on {-margin:.1f} s too late"
        report(
            "cooldown",
            started,
            after_cooldown_end=second - first - COOLDOWN,
            margin=margin,
        )


# -- the hourly cap --------------------------------------------------------------------------

# The oldest of the earlier switches leaves the hour this long after the remediator starts:
# long enough for the alert to be refused first (it fires about 15 s after the start).
CAP_EDGE = 45.0


def test_the_hourly_cap_acts_on_errors_that_go_on_as_soon_as_it_allows(tmp_path: Path) -> None:
    """The state file holds 6 switches of the last hour (the shipped cap), the oldest 45 s from
    leaving it, the last 10 min ago; phi3:mini does not fit and fails on and on. The step down
    comes at most 10 s after the oldest switch leaves the hour. Shipped timings throughout."""
    started = time.monotonic()
    fleet = ScenarioOptions().fleet

    def history(now: float) -> list[SwitchRecord]:
        oldest = now - 3600 + CAP_EDGE
        times = [oldest + i * 600 for i in range(MAX_SWITCHES_PER_HOUR - 1)] + [now - 600]
        return down_and_up(fleet, times)

    options = ScenarioOptions(
        fleet=fleet, simulate_vram=True, other_used_mib=1900, state=past(fleet, history)
    )
    with Scenario(tmp_path, options) as s:
        assert s.timing_changes() == {}
        assert s.fleet_config().max_switches_per_hour == MAX_SWITCHES_PER_HOUR
        assert not s.fits(LADDER[1]) and s.fits(LADDER[2])
        past_switches = s.switch_times()
        assert len(past_switches) == MAX_SWITCHES_PER_HOUR
        allowed = past_switches[0] + 3600
        entry = deferred(s, "rate_limited")
        assert acts_at(entry) == pytest.approx(allowed, abs=1)
        fired = firing_since(s, "ModelFleetVRAMErrors")
        assert fired < allowed, "the alert came after the cap had passed: nothing was tested"
        history_now = s.wait_switches(MAX_SWITCHES_PER_HOUR + 1, CAP_EDGE + 2 * SLACK)
        switched = float(history_now[-1]["time"])
        assert (history_now[-1]["from"], history_now[-1]["to"]) == (LADDER[1], LADDER[2])
        margin = allowed + SLACK - switched
        assert switched >= allowed
        assert margin >= 0, f"acted on {-margin:.1f} s after the cap allowed it"
        report("hourly cap", started, after_cap_allows=switched - allowed, margin=margin)


# -- below the threshold -------------------------------------------------------------------


def test_a_burst_of_errors_that_stops_below_the_threshold_switches_nothing(tmp_path: Path) -> None:
    """Two errors (the second a burst of six matching lines within one failure), then calm:
    no alert, no switch. Shipped timings throughout."""
    started = time.monotonic()
    with Scenario(tmp_path) as s:
        assert s.timing_changes() == {}
        s.emit_errors(1)
        time.sleep(3)  # further apart than the exporter's incident window
        s.emit([OOM_LINE, LOAD_FAILED_LINE] * 3)
        wait_until(lambda: s.errors_since_start() == 2, 15, "the exporter to count 2 errors")
        lines = sum(
            sample_values(s.exporter_metrics(), "model_fleet_vram_error_lines_total", fleet=s.fleet)
        )
        assert lines == 8
        assert s.prometheus is not None
        prom = s.prometheus
        query = f'model_fleet_vram_errors_since_start{{fleet="{s.fleet}"}} == 2'
        wait_until(lambda: prom.query(query), 15, "Prometheus to see 2 errors")
        # Several scrapes, evaluations and Alertmanager flushes: still nothing.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert not s.firing("ModelFleetVRAMErrors")
            assert s.history() == []
            time.sleep(0.5)
        assert s.status()["current_model"]["name"] == LADDER[0]
        report("burst below the threshold", started, observed=20)


# -- the step up that fails ------------------------------------------------------------------

# This scenario's cooldown (shipped: 60 s), for its runtime: the chain and the cooldown
# scenarios hold the shipped value; here the step up's model fails inside it all the same.
STEP_UP_COOLDOWN = 30
# This scenario's `for` of ModelFleetCanStepUp (shipped: 5m), for its runtime: the rule's
# condition (an hour without switch or error, the headroom, the window) is left as shipped.
STEP_UP_FOR = "10s"


def test_a_step_up_whose_model_fails_steps_back_down_once_and_not_up_again(
    tmp_path: Path,
) -> None:
    """The fleet has run phi3:mini for 2 h with room for llama3.2:3b; inside an off-peak window
    (auto_upgrade with windows covering the whole day) ModelFleetCanStepUp fires and the fleet
    steps up; llama3.2:3b then fails three times at once, and the fleet steps back down once,
    at most 10 s after the cooldown ends. Then the step-up alert comes again (the same alert,
    posted to Alertmanager, as the rule would send it) once the cooldown has passed: the
    remediator defers it to the end of the failed step up's quiet period
    (auto_upgrade.failed_quiet_seconds, 4 h), and nothing switches for a while. At most 2
    switches in the hour.

    Changed in the copies, for the runtime: `cooldown_seconds` 30 (shipped 60; the step up's
    model still fails inside it), ModelFleetCanStepUp's `for` 10s (shipped 5m). auto_upgrade
    is enabled with windows (shipped: off), which is what the scenario is about."""
    started = time.monotonic()
    fleet = ScenarioOptions().fleet

    def history(now: float) -> list[SwitchRecord]:
        return [SwitchRecord(now - 7200, fleet, LADDER[0], LADDER[1], "down", "alert", "earlier")]

    auto_upgrade = {"enabled": True, "windows": ["00:00-24:00"], "timezone": "UTC"}
    options = ScenarioOptions(
        fleet=fleet,
        state=past(fleet, history),
        fleet_settings={"cooldown_seconds": STEP_UP_COOLDOWN, "auto_upgrade": auto_upgrade},
        alert_for={"ModelFleetCanStepUp": STEP_UP_FOR},
    )
    with Scenario(tmp_path, options) as s:
        assert s.timing_changes() == {
            "fleets.cooldown_seconds": STEP_UP_COOLDOWN,
            "fleets.auto_upgrade": auto_upgrade,
            "rules.ModelFleetCanStepUp.for": STEP_UP_FOR,
        }
        fc = s.fleet_config()
        assert s.status()["auto_upgrade"]["allowed_now"] is True
        step_up = wait_until(
            lambda: s.firing("ModelFleetCanStepUp"), 60, "the step-up alert", interval=0.5
        )[0]
        history_now = s.wait_switches(2, ALERT_TIMEOUT)
        up = history_now[1]
        assert (up["from"], up["to"], up["direction"], up["trigger"]) == (
            LADDER[1],
            LADDER[0],
            "up",
            "auto",
        ), up
        up_at = float(up["time"])
        s.follow_vram()
        wait_until(lambda: s.runs_model(LADDER[0]), 30, f"the app on {LADDER[0]}")
        s.emit_errors(3)  # the larger model fails at once
        assert s.emitted[-1] < up_at + STEP_UP_COOLDOWN, "not inside the cooldown"
        assert acts_at(deferred(s, "cooldown")) == pytest.approx(up_at + STEP_UP_COOLDOWN, abs=1)
        history_now = s.wait_switches(3, STEP_UP_COOLDOWN + 2 * SLACK)
        down = history_now[2]
        down_at = float(down["time"])
        s.follow_vram()
        assert (down["from"], down["to"], down["direction"]) == (LADDER[0], LADDER[1], "down")
        margin = up_at + STEP_UP_COOLDOWN + SLACK - down_at
        assert margin >= 0, f"stepped back down {-margin:.1f} s after the cooldown ended"
        # The step up counts as failed: the next one waits failed_quiet_seconds.
        fs = FleetState.from_dict(json.loads(s.state_file.read_text())["fleets"][s.fleet])
        assert fs.last_upgrade_failed_at == pytest.approx(down_at, abs=0.01)
        # The step-up alert again, as soon as the cooldown allows a switch.
        time.sleep(max(0.0, down_at + STEP_UP_COOLDOWN + 1 - time.time()))
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        s.alertmanagers[0].post_alerts(
            [{"labels": step_up["labels"], "annotations": step_up["annotations"], "startsAt": now}]
        )
        entry = deferred(s, "quiet_period", alertname="ModelFleetCanStepUp", direction="up")
        assert acts_at(entry) == pytest.approx(
            down_at + fc.auto_upgrade.failed_quiet_seconds, abs=1
        )
        s.observe(SLACK, switches=3)
        in_hour = [t for t in s.switch_times() if t > time.time() - 3600]
        assert len(in_hour) == 2
        assert fc.auto_upgrade.failed_quiet_seconds > time.time() - down_at
        report(
            "failed step up",
            started,
            down_after_cooldown_end=down_at - up_at - STEP_UP_COOLDOWN,
            margin=margin,
        )


# -- restarts mid-incident -----------------------------------------------------------------


def test_prometheus_restarted_mid_incident_the_fleet_steps_once(tmp_path: Path) -> None:
    """Three errors; Prometheus is stopped as soon as Alertmanager holds the alert, the fleet
    switches while it is down (the model server restarts, its start label changes unseen),
    and Prometheus starts again on the same data: its first evaluations see the samples from
    before the restart. The fleet steps exactly once. Shipped timings throughout."""
    started = time.monotonic()
    with Scenario(tmp_path) as s:
        assert s.timing_changes() == {}
        s.emit_errors(3)
        in_alertmanager(s, "ModelFleetVRAMErrors")
        stopped = s.stop_service(Part.PROMETHEUS)
        history = s.wait_switches(1, ALERT_TIMEOUT)
        wait_until(lambda: s.runs_model(LADDER[1]), 30, f"the app on {LADDER[1]}")
        back = s.start_service(Part.PROMETHEUS)
        assert s.prometheus is not None
        s.prometheus.wait_targets_up(30)
        s.observe(20, switches=1)
        assert not s.firing("ModelFleetVRAMErrors")
        assert (history[0]["from"], history[0]["to"]) == (LADDER[0], LADDER[1])
        report(
            "Prometheus restart",
            started,
            switch_after_third_error=float(history[0]["time"]) - s.emitted[2],
            prometheus_down=back - stopped,
        )


def test_alertmanager_restarted_mid_incident_the_fleet_steps_once(tmp_path: Path) -> None:
    """Two errors; Alertmanager stops; the third error fires the alert while it is down (the
    send fails); Alertmanager starts again on the same data. Prometheus sends the firing
    alert again after its resend delay (1 min, its default), and the fleet steps exactly once,
    at most 10 s after that. Shipped timings throughout."""
    started = time.monotonic()
    with Scenario(tmp_path) as s:
        assert s.timing_changes() == {}
        s.emit_errors(2)
        wait_until(lambda: s.errors_since_start() == 2, 15, "the exporter to count 2 errors")
        s.stop_service(Part.ALERTMANAGER)
        s.emit_errors(1)
        fired = firing_since(s, "ModelFleetVRAMErrors")
        time.sleep(3)  # Prometheus tried to send it
        s.start_service(Part.ALERTMANAGER)
        history = s.wait_switches(1, RESEND_DELAY + 2 * SLACK)
        switched = float(history[0]["time"])
        margin = fired + RESEND_DELAY + SLACK - switched
        assert margin >= 0, f"switched {-margin:.1f} s after Prometheus' resend"
        s.observe(15, switches=1)
        report("Alertmanager restart", started, switch_after_alert=switched - fired, margin=margin)


def test_the_remediator_restarted_mid_incident_the_fleet_steps_once(tmp_path: Path) -> None:
    """Two errors; the remediator stops; the third error fires the alert, and Alertmanager's
    deliveries fail; the remediator starts again on the same state file. The fleet steps
    exactly once, at most 10 s after the remediator is back. Shipped timings throughout."""
    started = time.monotonic()
    with Scenario(tmp_path) as s:
        assert s.timing_changes() == {}
        s.emit_errors(2)
        wait_until(lambda: s.errors_since_start() == 2, 15, "the exporter to count 2 errors")
        s.stop_service(Part.REMEDIATOR)
        s.emit_errors(1)
        am = s.alertmanagers[0]

        def failed_deliveries() -> float:
            text = http_get(am.url + "/metrics").decode()
            return sum(sample_values(text, "alertmanager_notifications_failed_total"))

        wait_until(failed_deliveries, ALERT_TIMEOUT, "a failed delivery to the remediator")
        back = s.start_service(Part.REMEDIATOR)
        history = s.wait_switches(1, 2 * SLACK)
        switched = float(history[0]["time"])
        margin = back + SLACK - switched
        assert margin >= 0, f"switched {-margin:.1f} s after the remediator was back"
        s.observe(15, switches=1)
        report("remediator restart", started, switch_after_back=switched - back, margin=margin)


def test_the_remediator_down_when_the_cooldown_ends_acts_once_it_is_back(tmp_path: Path) -> None:
    """The chain: the fleet steps to phi3:mini, which fails at once; its alert is refused for
    the cooldown and kept; the remediator stops before the cooldown ends and starts again
    (same state file) 10 s after. The step down comes at most 10 s after it is back. Shipped
    timings throughout."""
    started = time.monotonic()
    with Scenario(tmp_path, chain_options()) as s:
        assert s.timing_changes() == {}
        first = float(s.wait_switches(1, 60)[0]["time"])
        s.follow_vram()
        deferred(s, "cooldown")
        assert time.time() < first + COOLDOWN - 5, "deferred too late to stop the remediator"
        s.stop_service(Part.REMEDIATOR)
        time.sleep(max(0.0, first + COOLDOWN + SLACK - time.time()))
        back = s.start_service(Part.REMEDIATOR)
        history = s.wait_switches(2, 3 * SLACK)
        second = float(history[1]["time"])
        assert (history[1]["from"], history[1]["to"]) == (LADDER[1], LADDER[2])
        margin = back + SLACK - second
        assert margin >= 0, f"acted on {-margin:.1f} s after the remediator was back"
        s.observe(10, switches=2)
        report(
            "remediator down at the cooldown's end",
            started,
            after_back=second - back,
            margin=margin,
        )
