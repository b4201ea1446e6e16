"""The alert rules: promtool check/test rules, and their agreement with the config and docs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet_contract import labels, metrics
from remediator.config import MIB, SHIPPED_ALERT_THRESHOLD, AutoUpgrade, FleetConfig
from simulator.prom_env import REPO, RULES_FILE, promql_metric_names, render_rules

RULE_TESTS = sorted((REPO / "alert_rules" / "tests").glob("*.yml"))
RUNBOOK_URL = re.compile(
    r"^\{\{ \$externalLabels\.runbook_base_url \}\}/docs/operations\.md#(runbook-[a-z0-9-]+)$"
)
REMEDIATION_ALERTS = {
    "ModelFleetVRAMErrors": "downgrade",
    "ModelFleetCPUOffload": "downgrade",
    "ModelFleetCanStepUp": "upgrade",
}
EXPECTED_ALERTS = {
    "ModelFleetVRAMErrors",
    "ModelFleetAtSmallestModel",
    "ModelFleetCanStepUp",
    "ModelFleetRemediationFailed",
    "ModelFleetSwitchFlapping",
    "ModelFleetModelSwitched",
    "GPUVRAMNearlyFull",
    "GPUVRAMFillingUp",
    "ModelFleetExporterDown",
    "ModelFleetRemediatorDown",
    "ModelFleetNVMLDown",
    "ModelFleetLogStreamDown",
    "ModelFleetLogLinesLost",
    "ModelFleetCPUOffload",
    "ModelFleetProbeFailing",
}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES_FILE.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alert(name: str) -> dict[str, Any]:
    matches = [r for r in _rules() if r.get("alert") == name]
    assert len(matches) == 1, f"expected one rule for {name}, found {len(matches)}"
    return matches[0]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def _github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub derives from headings: lower case, punctuation dropped, spaces to '-'."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_promtool_check_rules_accepts_the_rule_file() -> None:
    result = _promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool rule tests under alert_rules/tests/"
    result = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    tested = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", [])}
    assert {r["alert"] for r in _rules() if "alert" in r} == EXPECTED_ALERTS
    assert tested >= EXPECTED_ALERTS, f"alerts without a promtool test: {EXPECTED_ALERTS - tested}"


def test_downgrade_threshold_is_the_default_max_vram_errors() -> None:
    default = FleetConfig(name="any").max_vram_errors
    assert default == SHIPPED_ALERT_THRESHOLD
    for name in ("ModelFleetVRAMErrors", "ModelFleetAtSmallestModel"):
        expr = _alert(name)["expr"]
        # The threshold closes the aggregation over the errors-since-start gauge.
        found = re.findall(r"\)\s*>=\s*(\d+)", expr)
        assert metrics.VRAM_ERRORS_SINCE_START in expr
        assert found == [str(default)], f"{name}: threshold {found} in {expr!r}"


def test_downgrade_alert_fires_without_delay_and_carries_the_contract_labels() -> None:
    rule = _alert("ModelFleetVRAMErrors")
    assert rule.get("for", "0s") in ("0s", "0m", 0), "the exact gauge needs no `for`"
    assert rule["labels"]["remediation"] == "downgrade"
    assert rule["labels"]["severity"]
    assert re.search(r"by \(host, fleet\b", rule["expr"]), "the alert must keep host and fleet"
    # One alert per start of the model server (see the rule's comment).
    assert "started_at" in rule["expr"]
    assert rule["annotations"]["value"] == "{{ $value }}"
    # The inhibiting alert must be firing no later than the alert it inhibits.
    assert _alert("ModelFleetAtSmallestModel").get("for", "0s") in ("0s", "0m", 0)


def test_offload_alert_asks_for_a_downgrade_about_the_current_model_only() -> None:
    rule = _alert("ModelFleetCPUOffload")
    assert rule["labels"] == {"remediation": "downgrade", "kind": "offload", "severity": "warning"}
    # The default time; docs/configuration.md names it as this rule's `for`.
    assert rule["for"] == "1m"
    expr = rule["expr"]
    assert f'{metrics.MODEL_MEMORY}{{location="system"}}' in expr
    assert metrics.OFFLOAD_TOLERANCE in expr and metrics.CURRENT_MODEL_INFO in expr
    assert "by (host, fleet, model)" in expr, "one alert per host, fleet and model"
    # The remediator reads a downgrade alert's `value` as the VRAM error count: none here.
    assert "value" not in rule["annotations"]
    [group] = [
        g for g in yaml.safe_load(RULES_FILE.read_text())["groups"]
        if any(r.get("alert") == "ModelFleetCPUOffload" for r in g["rules"])
    ]  # fmt: skip
    assert group["name"] == "model-fleet-remediation"


def test_the_fast_test_copy_of_the_rules_changes_only_the_for(tmp_path: Path) -> None:
    """tests/test_e2e.py runs ModelFleetCPUOffload with a shorter `for`; nothing else differs."""
    rendered = render_rules({"ModelFleetCPUOffload": "10s"})
    path = tmp_path / "fast.rules.yml"
    path.write_text(yaml.safe_dump(rendered))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    [rule] = [
        r
        for g in rendered["groups"]
        for r in g["rules"]
        if r.get("alert") == "ModelFleetCPUOffload"
    ]
    assert rule["for"] == "10s"
    rule["for"] = _alert("ModelFleetCPUOffload")["for"]
    assert rendered == yaml.safe_load(RULES_FILE.read_text())
    with pytest.raises(KeyError, match="NoSuchAlert"):
        render_rules({"NoSuchAlert": "1s"})


def test_probe_alert_is_for_people() -> None:
    rule = _alert("ModelFleetProbeFailing")
    assert rule["labels"] == {"severity": "warning"}
    assert rule["for"] == "3m" and metrics.PROBE_SUCCESS in rule["expr"]


def test_only_the_remediation_alerts_carry_a_remediation_label() -> None:
    found = {r["alert"]: r["labels"].get("remediation") for r in _rules() if "alert" in r}
    assert {k: v for k, v in found.items() if v} == REMEDIATION_ALERTS


def test_every_aggregation_and_join_keeps_the_host() -> None:
    """Two hosts with the same fleet, container and GPU names never mix (docs/multi-host.md):
    each `by (...)` and `on (...)` names host, so every alert carries it too (hosts_test.yml)."""
    for rule in _rules():
        groups = re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"])
        where = rule.get("alert") or rule.get("record")
        for group in groups:
            names = [n.strip() for n in group.split(",")]
            assert names[0] == labels.HOST_LABEL, f"{where}: ({group}) without host first"


def test_switch_notice_is_info_for_people_and_covers_every_switch() -> None:
    rule = _alert("ModelFleetModelSwitched")
    assert rule["labels"] == {"severity": "info"}, "info: never pages, never remediates"
    assert rule.get("for", "0s") in ("0s", "0m", 0), "a switch is news at once"
    assert metrics.SWITCHES in rule["expr"]
    # The alert keeps every label of the counter: one alert per kind of switch.
    switch_labels = ", ".join(metrics.exposed_labels(metrics.spec(metrics.SWITCHES)))
    assert f"by ({switch_labels})" in rule["expr"]


def test_step_up_rule_mirrors_the_auto_upgrade_defaults() -> None:
    expr = _alert("ModelFleetCanStepUp")["expr"]
    defaults = AutoUpgrade()
    assert str(defaults.headroom_mb * MIB) in expr, "headroom differs from auto_upgrade"
    assert f"< {defaults.quiet_seconds:g}" in expr, "quiet period differs from auto_upgrade"
    assert "[1h]" in expr and defaults.quiet_seconds == 3600


@pytest.mark.parametrize("rule", [r for r in _rules() if "alert" in r], ids=lambda r: r["alert"])
def test_rule_is_documented(rule: dict[str, Any]) -> None:
    annotations = rule["annotations"]
    assert annotations.get("summary"), "no summary"
    assert "$value" in annotations.get("description", ""), "the description lacks the value"
    match = RUNBOOK_URL.match(annotations.get("runbook_url", ""))
    assert match, f"runbook_url {annotations.get('runbook_url')!r} is not a runbook anchor"
    assert match.group(1) == f"runbook-{rule['alert'].lower()}"
    docs = [REPO / "docs" / "operations.md"]
    anchors = set().union(*(_github_anchors(p.read_text()) for p in docs))
    assert match.group(1) in anchors, f"no runbook section for #{match.group(1)} in {docs}"


def test_rules_use_only_contract_metrics() -> None:
    unknown = {
        (rule.get("alert") or rule.get("record"), name)
        for rule in _rules()
        for name in promql_metric_names(rule["expr"])
        if name not in metrics.BY_NAME and name not in metrics.BUILTIN
    }
    assert not unknown, f"metrics outside fleet_contract.metrics: {sorted(unknown)}"


def test_rule_job_names_match_the_scrape_config() -> None:
    jobs = {
        s["job_name"]
        for s in yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())[
            "scrape_configs"
        ]
    }
    used = set()
    for rule in _rules():
        used |= set(re.findall(r'job="([^"]+)"', rule["expr"]))
    assert used and used <= jobs, f"rules name jobs {used}, prometheus.yml has {jobs}"


def test_rule_files_glob_loads_rules_but_not_their_tests() -> None:
    pattern = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())["rule_files"]
    assert pattern == ["/etc/prometheus/rules/*.rules.yml"]
    local = sorted(Path(REPO / "alert_rules").glob("*.rules.yml"))
    assert local == [RULES_FILE]
