"""The whole loop end to end on real parts (see simulator/loop.py): detect, alert, switch, restart.

Three VRAM errors from a real container (failed model loads of two log lines each, further
apart than the exporter's incident window: three errors, six lines) reach the exporter,
Prometheus fires the shipped rule, Alertmanager (shipped config) calls the remediator under
gunicorn with the bearer token, and the remediator rewrites the application's config and
restarts both containers for real. The exporter also polls the stand-in Ollama's /api/ps and
probes its current model: a model partly offloaded to system memory fires ModelFleetCPUOffload
and the fleet steps down the same way. That rule waits a minute (`for: 1m`); this module's
Prometheus loads a copy of the shipped rules in which only that `for` is shorter
(OFFLOAD_FOR, simulator/prom_config.py's render_rules), so the case takes seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.loop import Loop, LoopOptions, http_get, sample_values, wait_until
from simulator.prom_env import http_json

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

# Shipped intervals: 2 s exporter scrape + 2 s evaluation + 1 s group_wait, plus restarts.
ALERT_TIMEOUT = 45.0
# The `for` of ModelFleetCPUOffload in this module's copy of the rules (shipped: 1m).
OFFLOAD_FOR = "10s"


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    # No cooldown: nothing but the alert contract keeps a stale or repeated alert from
    # switching twice, so these tests would see a second switch if one slipped through.
    options = LoopOptions(cooldown_seconds=0, alert_for={"ModelFleetCPUOffload": OFFLOAD_FOR})
    with Loop(tmp_path_factory.mktemp("e2e"), options) as running:
        yield running


def switch_to(loop: Loop, model: str, count: int) -> None:
    wait_until(
        lambda: len(loop.history()) >= count,
        ALERT_TIMEOUT,
        f"switch #{count} to {model}",
        interval=0.2,
        diagnose=loop.diagnostics,
    )
    assert loop.history()[count - 1]["to"] == model


def oom_counters(loop: Loop) -> tuple[float, float]:
    """The exporter's oom errors and oom lines for the loop's fleet so far."""
    text = loop.exporter_metrics()
    return (
        sum(sample_values(text, "model_fleet_vram_errors_total", fleet=loop.fleet, kind="oom")),
        sum(
            sample_values(text, "model_fleet_vram_error_lines_total", fleet=loop.fleet, kind="oom")
        ),
    )


def one_round(loop: Loop, expect_model: str, switches_before: int) -> None:
    """Three errors: the alert fires, the fleet moves one rung down, the alert resolves."""
    server_started = loop.started_at(loop.server)
    app_started = loop.started_at(loop.app)
    errors, lines = oom_counters(loop)
    loop.emit_errors(3)
    wait_until(lambda: loop.errors_since_start() >= 3, 10, "the exporter to count 3 errors")
    wait_until(lambda: oom_counters(loop)[1] >= lines + 6, 10, "the exporter to count 6 lines")
    assert oom_counters(loop) == (errors + 3, lines + 6)  # one error per failed load
    switch_to(loop, expect_model, switches_before + 1)
    record = loop.history()[-1]
    assert (record["direction"], record["trigger"]) == ("down", "alert")
    assert record["alert_key"]
    assert loop.current_model_in_config() == expect_model
    # Both containers restarted for real, and the app runs on the new model.
    wait_until(
        lambda: loop.started_at(loop.server) > server_started, 30, "the model server restart"
    )
    wait_until(lambda: loop.started_at(loop.app) > app_started, 30, "the app restart")
    wait_until(
        lambda: loop.app_log_tail() == f"app running {expect_model}", 15, "the app on the new model"
    )
    # The restarted server starts from 0 errors; the alert resolves; no second switch.
    wait_until(lambda: loop.errors_since_start() == 0, 15, "errors since start back to 0")
    wait_until(
        lambda: not loop.firing("ModelFleetVRAMErrors"), ALERT_TIMEOUT, "the alert to resolve"
    )
    assert loop.status()["current_model"]["name"] == expect_model


def test_three_errors_step_down_one_rung_and_no_second_switch_follows(loop: Loop) -> None:
    started = time.monotonic()
    one_round(loop, "phi3:mini", 0)
    first = time.monotonic() - started
    time.sleep(12)  # two more evaluation rounds and a group_interval: still one switch
    assert len(loop.history()) == 1
    state = loop.status()
    assert (state["current_model"]["index"], state["vram_error_count"]) == (1, 0)
    print(f"round 1 (3 errors -> app on phi3:mini, alert resolved): {first:.1f} s")


def test_three_more_errors_take_the_next_rung_then_the_smallest(loop: Loop) -> None:
    one_round(loop, "tinyllama:1.1b", 1)
    one_round(loop, "qwen2.5:0.5b", 2)
    assert loop.status()["can_downgrade"] is False


def test_at_the_smallest_model_a_person_is_paged_and_nothing_switches(loop: Loop) -> None:
    before = loop.started_at(loop.server)
    loop.emit_errors(3)
    alert = wait_until(
        lambda: loop.firing("ModelFleetAtSmallestModel"), ALERT_TIMEOUT, "the critical alert"
    )
    assert alert[0]["labels"]["severity"] == "critical"
    assert "remediation" not in alert[0]["labels"]
    # Alertmanager holds the downgrade alert back (inhibited) while the critical one fires.
    am = loop.alertmanagers[0]
    wait_until(
        lambda: any(
            a["status"]["state"] == "suppressed"
            for a in am.alerts('alertname="ModelFleetVRAMErrors"', f'fleet="{loop.fleet}"')
        ),
        ALERT_TIMEOUT,
        "the downgrade alert to be inhibited",
    )
    time.sleep(3)
    assert len(loop.history()) == 3
    assert loop.started_at(loop.server) == before
    assert loop.current_model_in_config() == "qwen2.5:0.5b"


def test_a_reset_through_the_http_api_brings_the_fleet_back_to_the_top(loop: Loop) -> None:
    code, body = loop.post("/reset", {"reason": "new GPU installed"})
    assert code == 200, body
    assert (body["from"], body["to"]) == ("qwen2.5:0.5b", "llama3.2:3b")
    assert loop.current_model_in_config() == "llama3.2:3b"
    wait_until(
        lambda: loop.app_log_tail() == "app running llama3.2:3b", 15, "the app back on llama3.2:3b"
    )
    wait_until(
        lambda: not loop.firing("ModelFleetAtSmallestModel"), ALERT_TIMEOUT, "the page to resolve"
    )
    assert loop.history()[-1]["direction"] == "reset"


def test_a_refused_pull_rolls_back_and_fires_the_failure_alert(loop: Loop) -> None:
    # The next rung is not pulled, and the registry refuses it.
    loop.ollama.forget("phi3:mini")
    loop.ollama.refuse_pull("pull model manifest: file does not exist")
    try:
        app_started = loop.started_at(loop.app)
        switches = len(loop.history())
        loop.emit_errors(3)
        alert = wait_until(
            lambda: loop.firing("ModelFleetRemediationFailed"),
            60,
            "the failure alert",
            diagnose=loop.diagnostics,
        )
        assert alert[0]["labels"]["fleet"] == loop.fleet
        status = loop.status()
        assert status["last_failure"]["step"] == "pull"
        assert status["current_model"]["name"] == "llama3.2:3b"
        assert loop.current_model_in_config() == "llama3.2:3b"
        assert loop.started_at(loop.app) == app_started
        assert len(loop.history()) == switches
        failures = sample_values(
            loop.remediator_metrics(),
            "model_fleet_remediation_failures_total",
            fleet=loop.fleet,
            step="pull",
        )
        assert failures == [1.0]
    finally:
        loop.ollama.heal()


def model_memory(loop: Loop, location: str, model: str | None = None) -> float:
    """What the exporter says now of the fleet's models at ``location`` (summed)."""
    labels = {"fleet": loop.fleet, "location": location} | ({"model": model} if model else {})
    return sum(sample_values(loop.exporter_metrics(), "model_fleet_model_memory_bytes", **labels))


def test_a_partly_offloaded_model_steps_the_fleet_down_and_the_offload_goes(loop: Loop) -> None:
    """No error line at all: the stand-in lists the current model 40 % in system memory."""
    assert loop.prometheus is not None
    prom = loop.prometheus
    assert loop.current_model_in_config() == "llama3.2:3b"
    switches = len(loop.history())
    size = loop.ollama.models["llama3.2:3b"]
    began = time.time()
    loop.ollama.load("llama3.2:3b", size_vram=size * 6 // 10)
    wait_until(
        lambda: model_memory(loop, "system", "llama3.2:3b") == size - size * 6 // 10,
        10,
        "the exporter to see the offload in /api/ps",
    )
    alert = wait_until(
        lambda: loop.firing("ModelFleetCPUOffload"),
        60,
        "the offload alert",
        diagnose=loop.diagnostics,
    )
    labels = alert[0]["labels"]
    assert (labels["remediation"], labels["kind"], labels["model"]) == (
        "downgrade",
        "offload",
        "llama3.2:3b",
    )
    assert float(alert[0]["value"]) == pytest.approx(0.4, abs=0.001)
    switch_to(loop, "phi3:mini", switches + 1)
    record = loop.history()[-1]
    assert (record["direction"], record["trigger"]) == ("down", "alert") and record["alert_key"]
    # The switch unloaded the offloaded model (keep_alive 0) ...
    unloads = [
        c
        for c in loop.ollama.calls_to("/api/generate")
        if c.at >= began and c.body.get("model") == "llama3.2:3b" and c.body.get("keep_alive") == 0
    ]
    assert unloads, "the switch did not unload llama3.2:3b"
    wait_until(
        lambda: loop.app_log_tail() == "app running phi3:mini", 30, "the app on the new model"
    )
    # ... and the application's first request loads the new one, whole: it fits.
    answer = http_json(
        f"{loop.ollama.url}/api/generate",
        data={"model": "phi3:mini", "prompt": "hello", "stream": False},
    )
    assert answer["done"] is True
    selector = f'model_fleet_model_memory_bytes{{fleet="{loop.fleet}"'
    wait_until(
        lambda: prom.query(f'{selector}, model="phi3:mini", location="vram"}} > 0'),
        20,
        "Prometheus to see phi3:mini in VRAM",
    )
    wait_until(
        lambda: not prom.query(f'{selector}, location="system"}} > 0'),
        20,
        "no offload left in Prometheus",
    )
    assert model_memory(loop, "system") == 0
    wait_until(
        lambda: not loop.firing("ModelFleetCPUOffload"),
        ALERT_TIMEOUT,
        "the offload alert to resolve",
        diagnose=loop.diagnostics,
    )
    # The probe follows the loaded model: tokens/s of phi3:mini (the dashboard's panel).
    wait_until(
        lambda: prom.query(
            f'model_fleet_probe_tokens_per_second{{fleet="{loop.fleet}", model="phi3:mini"}}'
        ),
        20,
        "a probe of phi3:mini",
    )
    assert len(loop.history()) == switches + 1
    assert loop.status()["current_model"]["name"] == "phi3:mini"


def test_every_dashboard_query_returns_data_from_the_real_services(loop: Loop) -> None:
    """The dashboard against a Prometheus that scraped the real exporter and remediator."""
    import json

    assert loop.prometheus is not None
    dashboard = json.loads(
        (Path(__file__).parents[1] / "grafana/dashboards/model-fleet.json").read_text()
    )
    exprs: list[tuple[str, str]] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append((panel.get("title", "?"), target["expr"]))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            exprs.append((annotation["name"], annotation["expr"]))
    assert exprs
    empty = []
    for title, expr in exprs:
        query = (
            expr.replace("$fleet", loop.fleet)
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "15s")
        )
        query = query.replace("$gpu", ".*").replace("$host", ".*")  # All, as Grafana sends it
        series = loop.prometheus.query_range(query, seconds=600, step="5s")
        if not series:
            empty.append(title)
    assert empty == [], f"panels with no data from the real services: {empty}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    options = LoopOptions(cooldown_seconds=0, alertmanager_replicas=2)
    with Loop(tmp_path_factory.mktemp("e2e-cluster"), options) as running:
        yield running


def test_two_alertmanager_replicas_still_switch_exactly_once(cluster: Loop) -> None:
    def am_metric(url: str, name: str, **labels: str) -> float:
        return sum(sample_values(http_get(url + "/metrics").decode(), name, **labels))

    urls = [am.url for am in cluster.alertmanagers]
    for url in urls:  # a real cluster: each replica sees both members
        wait_until(
            lambda url=url: am_metric(url, "alertmanager_cluster_members") == 2, 30, "gossip"
        )
    cluster.emit_errors(3)
    switch_to(cluster, "phi3:mini", 1)
    # Prometheus sent the alert to both replicas ...
    for url in urls:
        received = am_metric(url, "alertmanager_alerts_received_total", status="firing")
        assert received >= 1, url
    time.sleep(12)
    # ... and the remediator acted once, however many notifications reached it.
    assert len(cluster.history()) == 1
    text = cluster.remediator_metrics()
    switches = sample_values(
        text, "model_fleet_switches_total", fleet=cluster.fleet, direction="down", trigger="alert"
    )
    assert switches == [1.0]
    sent = sum(
        am_metric(url, "alertmanager_notifications_total", integration="webhook") for url in urls
    )
    deliveries = sum(sample_values(text, "model_fleet_webhook_requests_total"))
    assert sent >= 1 and deliveries >= 1
    print(
        f"webhook notifications sent by 2 replicas: {sent:.0f}, "
        f"received: {deliveries:.0f}, switches: 1"
    )
