"""grafana/: provisioning, and every dashboard query parsed by promtool, checked against the
metric contract and the code, and evaluated by a real Prometheus that scraped the metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from fleet_contract import metrics as m
from fleet_contract.labels import HOST_LABEL
from remediator.config import SHIPPED_ALERT_THRESHOLD
from simulator.expositions import HOST
from simulator.prom_env import (
    REPO,
    RULES_FILE,
    MetricsEndpoint,
    Prometheus,
    check_promql,
    exporter_exposition,
    promql_metric_names,
    remediator_exposition,
    render_prometheus_config,
    start_prometheus,
    wait_for,
)

GRAFANA = REPO / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "model-fleet.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "model-fleet.yml"

# What Grafana substitutes before it sends a query; the values select the test data.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "5s",
    "$__range": "5m",
    "$host": HOST,  # the host the stand-in services label their samples with
    "$fleet": "default",
    "$gpu": "0",
}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels inside collapsed rows
    return found


def _queries() -> dict[str, str]:
    """Every PromQL query of the dashboard, by where it is: panels, annotations, variables."""
    dashboard = _dashboard()
    queries: dict[str, str] = {}
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            queries[f"annotation {annotation['name']!r}"] = annotation["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            # label_values(metric, label) asks for the metric's series: the metric is the query.
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: unexpected query {query!r}"
            queries[f"variable {variable['name']!r}"] = match.group(1)
    return queries


def _substitute(expr: str) -> str:
    # Longest names first: $__rate_interval before $__range.
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


# --- static checks --------------------------------------------------------------------------


def test_datasource_provisioning() -> None:
    [source] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "model-fleet-prometheus"
    assert source["url"] == "http://prometheus:9090"
    prom = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"]


def test_dashboard_provider_is_a_file_provider() -> None:
    [provider] = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# What a datasource reference of the dashboard is: the variable, never a uid of one Grafana.
DATASOURCE_VARIABLE = "datasource"
VARIABLE_REF = {"type": "prometheus", "uid": "${" + DATASOURCE_VARIABLE + "}"}
BUILTIN_REF = {"type": "grafana", "uid": "-- Grafana --"}  # the built-in annotations


def _datasource_refs(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every `datasource` value in the JSON, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield path, value
            yield from _datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _datasource_refs(value, f"{path}[{i}]")


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


# Grafana's import (pkg/services/dashboardimport/utils: DashTemplateEvaluator): every input of
# __inputs must be answered, each `${NAME}` of an input is replaced in every string of the
# JSON, other `${...}` (the dashboard's own variables) are left alone, and __inputs is dropped.
_TEMPLATE_VARIABLE = re.compile(r"\$\{.+?\}")


def _grafana_import(template: dict[str, Any], answers: dict[str, str]) -> dict[str, Any]:
    values = {}
    for declared in template.get("__inputs", []):
        if declared["name"] not in answers:
            raise KeyError(f"dashboard import failed: input {declared['name']} missing")
        values["${" + declared["name"] + "}"] = answers[declared["name"]]

    def evaluate(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: evaluate(v) for k, v in node.items() if k != "__inputs"}
        if isinstance(node, list):
            return [evaluate(v) for v in node]
        if isinstance(node, str):
            return _TEMPLATE_VARIABLE.sub(lambda m: values.get(m.group(0), m.group(0)), node)
        return node

    return evaluate(template)  # type: ignore[no-any-return]


def _selected_datasource(dashboard: dict[str, Any], datasources: list[dict[str, Any]]) -> str:
    """The uid the datasource variable selects when Grafana opens the dashboard (scenes'
    DataSourceVariable: one option per datasource of the plugin, label the name and value the
    uid; the saved `current` is matched by value, then by text, else the first option)."""
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    options = [(ds["name"], ds["uid"]) for ds in datasources if ds["type"] == variable["query"]]
    current = variable["current"]
    for _, uid in options:
        if uid == current["value"]:
            return uid
    for name, uid in options:
        if name == current["text"]:
            return uid
    return options[0][1]


def test_every_datasource_is_the_variable_never_a_uid() -> None:
    dashboard = _dashboard()
    refs = list(_datasource_refs(dashboard))
    wrong = [(path, ref) for path, ref in refs if ref not in (VARIABLE_REF, BUILTIN_REF)]
    assert not wrong, f"datasources not through ${DATASOURCE_VARIABLE}: {wrong}"
    # Every panel, target, query variable and query annotation has one (none inherits a
    # default that another Grafana may not have).
    holders: list[dict[str, Any]] = [
        v for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    holders += [a for a in dashboard["annotations"]["list"] if "expr" in a]
    for panel in _panels(dashboard):
        if panel["type"] != "row":
            holders += [panel, *panel["targets"]]
    missing = [h.get("title") or h.get("name") or h.get("expr") for h in holders if
               h.get("datasource") != VARIABLE_REF]  # fmt: skip
    assert not missing, f"not on ${DATASOURCE_VARIABLE}: {missing}"
    # No uid of the shipped stack anywhere, not even in a string.
    for source in yaml.safe_load(DATASOURCES.read_text())["datasources"]:
        assert source["uid"] not in DASHBOARD.read_text()


def test_the_datasource_variable_and_the_inputs_of_the_import_dialog() -> None:
    dashboard = _dashboard()
    variables = dashboard["templating"]["list"]
    assert variables[0]["name"] == DATASOURCE_VARIABLE, "the other variables query through it"
    assert variables[0]["type"] == "datasource" and variables[0]["query"] == "prometheus"
    # __inputs declares exactly the `${...}` the JSON uses that are not its own variables.
    own = {v["name"] for v in variables}
    used = {
        name
        for text in _strings({k: v for k, v in dashboard.items() if k != "__inputs"})
        for name in re.findall(r"\$\{(\w+)", text)
        if name not in own and not name.startswith("__")
    }
    [declared] = dashboard["__inputs"]
    assert used == {declared["name"]}
    assert (declared["type"], declared["pluginId"]) == ("datasource", "prometheus")
    # __requires names each panel plugin the dashboard uses, and the datasource plugin.
    required = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    panel_types = {p["type"] for p in _panels(dashboard)} - {"row"}
    assert {("panel", t) for t in panel_types} | {("datasource", "prometheus")} <= required


def test_import_into_another_grafana_uses_the_datasource_picked_in_the_dialog() -> None:
    elsewhere = [
        # Another Grafana may have a datasource of the shipped name: the choice still wins.
        {"name": "Prometheus", "uid": "their-default", "type": "prometheus"},
        {"name": "GPU hosts", "uid": "gpu-prom", "type": "prometheus"},
    ]
    with pytest.raises(KeyError, match="DS_PROMETHEUS"):
        _grafana_import(_dashboard(), {})
    imported = _grafana_import(_dashboard(), {"DS_PROMETHEUS": "gpu-prom"})
    assert "__inputs" not in imported
    assert "DS_PROMETHEUS" not in json.dumps(imported)
    assert _selected_datasource(imported, elsewhere) == "gpu-prom"
    # The panels still go through the variable, so a viewer can switch Prometheus later.
    assert all(ref in (VARIABLE_REF, BUILTIN_REF) for _, ref in _datasource_refs(imported))


def test_provisioning_selects_the_shipped_prometheus() -> None:
    """The file provider loads the JSON as it is: `${DS_PROMETHEUS}` is never replaced (a
    known limit of provisioning, grafana/grafana#10786); the variable's saved text, the
    provisioned datasource's name, selects it even when it is not the first one."""
    [shipped] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    provisioned = [{"name": "Another", "uid": "another", "type": "prometheus"}, shipped]
    assert _selected_datasource(_dashboard(), provisioned) == shipped["uid"]
    assert _selected_datasource(_dashboard(), [shipped]) == shipped["uid"]


def test_dashboard_identity_variables_and_unique_panel_ids() -> None:
    dashboard = _dashboard()
    assert dashboard["title"] == "Model Fleet" and dashboard["uid"] == "model-fleet"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "fleet" in variables
    assert variables["fleet"]["includeAll"] and variables["fleet"]["allValue"] == ".*"
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_fleet_scoped_queries_follow_the_fleet_variable() -> None:
    for where, expr in _queries().items():
        if where.startswith("variable"):
            continue
        names = promql_metric_names(expr) - m.BUILTIN
        if names and all("fleet" in m.spec(n).labels for n in names):
            for name in names:
                for selector in re.findall(rf"{name}(\{{[^}}]*\}})?", expr):
                    assert 'fleet=~"$fleet"' in selector, f"{where}: {name} ignores $fleet"


def test_every_query_follows_the_host_variable() -> None:
    """Every series carries `host` (both services add it): each selector of a contract metric,
    of ALERTS and of up filters by $host, and each aggregation and join keeps it."""
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    host = variables[HOST_LABEL]
    assert host["includeAll"] and host["allValue"] == ".*" and host["multi"]
    queried = [name for name, v in variables.items() if v["type"] == "query"]
    assert queried[0] == HOST_LABEL, "host comes first: fleet and gpu follow it"
    for name in ("fleet", "gpu"):
        assert 'host=~"$host"' in variables[name]["query"]["query"], name
    for where, expr in _queries().items():
        if where == "variable 'host'":
            continue
        for name in promql_metric_names(expr):
            for selector in re.findall(rf"\b{name}\b(\{{[^}}]*\}})?", expr):
                # up{host=""}: a single host's targets (monitoring/prometheus.yml) have no host.
                single = name == "up" and 'host=""' in selector
                assert 'host=~"$host"' in selector or single, f"{where}: {name} ignores $host"
        for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            assert HOST_LABEL in [n.strip() for n in group.split(",")], f"{where}: ({group})"


def test_a_fleet_by_host_overview() -> None:
    [table] = [p for p in _panels(_dashboard()) if p["title"] == "Fleets by host"]
    assert table["type"] == "table" and table["gridPos"]["w"] == 24
    exprs = [t["expr"] for t in table["targets"]]
    assert all("by (host, fleet" in e for e in exprs)
    shown = {n for e in exprs for n in promql_metric_names(e)}
    assert {m.CURRENT_MODEL_INFO, m.CURRENT_MODEL_INDEX, m.VRAM_ERRORS_SINCE_START, "ALERTS"} <= (
        shown
    )
    organize = [t for t in table["transformations"] if t["id"] == "organize"]
    assert organize[0]["options"]["indexByName"][HOST_LABEL] == 0


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    dashboard = _dashboard()
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            for name in promql_metric_names(target["expr"]):
                by_metric.setdefault(name, []).append(panel)
    # The current model as a stat showing the model's name.
    assert any(
        p["type"] == "stat" and p["options"]["textMode"] == "name"
        for p in by_metric[m.CURRENT_MODEL_INFO]
    )
    for name in (
        m.LADDER_MODEL_BYTES,  # the ladder ...
        m.CURRENT_MODEL_INDEX,  # ... and the current rung
        m.GPU_MEMORY_USED,
        m.GPU_MEMORY_TOTAL,
        m.GPU_PROCESS_MEMORY,
        m.VRAM_ERRORS,
        m.VRAM_ERRORS_SINCE_START,
        m.REMEDIATION_FAILURES,
        "ALERTS",
    ):
        assert name in by_metric, f"no panel shows {name}"
    assert any(
        "container" in t["expr"] for p in by_metric[m.GPU_PROCESS_MEMORY] for t in p["targets"]
    ), "per-process VRAM is not by container"
    assert any("kind" in t["expr"] for p in by_metric[m.VRAM_ERRORS] for t in p["targets"]), (
        "the error rate is not by kind"
    )
    # Offload: model memory by location per model; tokens/s next to VRAM in one panel.
    assert any(
        "location" in t["expr"] and "model" in t["expr"]
        for p in by_metric[m.MODEL_MEMORY]
        for t in p["targets"]
    ), "no panel shows model memory by location per model"
    assert any(
        any('location="vram"' in t["expr"] for t in p["targets"])
        for p in by_metric[m.PROBE_TOKENS_PER_SECOND]
    ), "probe tokens/s are not shown next to VRAM used"
    # Errors since start against the threshold of the rule: a threshold step at 3.
    [errors] = [p for p in by_metric[m.VRAM_ERRORS_SINCE_START] if p["type"] == "timeseries"]
    steps = errors["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps if s["value"] is not None] == [SHIPPED_ALERT_THRESHOLD]
    annotations = [a.get("expr", "") for a in dashboard["annotations"]["list"]]
    assert any(m.SWITCHES in a for a in annotations), "no switch annotations"


def test_queries_parse_with_promtool() -> None:
    check_promql({where: _substitute(expr) for where, expr in _queries().items()})


def test_queries_use_only_contract_metrics() -> None:
    unknown = {
        (where, name)
        for where, expr in _queries().items()
        for name in promql_metric_names(_substitute(expr))
        if name not in m.BY_NAME and name not in m.BUILTIN
    }
    assert not unknown, f"metrics outside fleet_contract.metrics: {sorted(unknown)}"


# --- against a real Prometheus ---------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    """Prometheus with the compose config and rules, scraping the contract's metrics."""
    with (
        MetricsEndpoint(exporter_exposition) as exporter,
        MetricsEndpoint(remediator_exposition) as remediator,
    ):
        config = render_prometheus_config(exporter=exporter.target, remediator=remediator.target)
        with start_prometheus(config, [RULES_FILE]) as prom:
            prom.wait_targets_up(timeout=30)
            yield prom


def test_every_query_returns_data_from_a_real_prometheus(prometheus: Prometheus) -> None:
    queries = {where: _substitute(expr) for where, expr in _queries().items()}
    results: dict[str, int] = {}

    def all_answer() -> bool:
        for where, expr in queries.items():
            # An error answer (bad_data...) raises PromQLError: the test fails at once.
            results[where] = len(prometheus.query_range(expr, seconds=60, step="5s"))
        return all(results.values())

    try:
        wait_for(all_answer, 45, "every dashboard query to return data", interval=2)
    except TimeoutError as exc:
        empty = sorted(w for w, n in results.items() if not n)
        pytest.fail(f"{exc}; empty: {empty}")


def test_operations_doc_tells_both_ways_into_a_grafana() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## The dashboard in another Grafana", 1)[1].split("\n## ", 1)[0]
    dashboard = _dashboard()
    [shipped] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    for word in (
        f"`{DATASOURCE_VARIABLE}`",
        f"`{dashboard['__inputs'][0]['name']}`",
        "`__inputs`",
        f"`{shipped['name']}`",
    ):
        assert word in section, word
