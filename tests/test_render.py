"""The inventory and ``model-fleet render-monitoring``: validation errors, the rendered files
against real promtool and amtool (routing included), determinism, one host more, and the
shipped monitoring/ files they follow."""

from __future__ import annotations

import functools
import json
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediator.cli.main import main
from remediator.config import ConfigError
from remediator.hosts.inventory import INVENTORY_KEYS, load_inventory, parse_inventory
from remediator.hosts.render import render_files, write_files
from simulator.local_http import free_port
from simulator.prom_env import (
    ALERTMANAGER_CONFIG,
    PROMETHEUS_CONFIG,
    RULES_FILE,
    MetricsEndpoint,
    exporter_exposition,
    remediator_exposition,
    start_prometheus,
    wait_for,
)

INVENTORY = """\
hosts:
  gpu-a: {exporter: "gpu-a.lan:9842", remediator: "http://gpu-a.lan:8080", fleets: [a0, a1]}
  gpu-b: {exporter: "gpu-b.lan:9842", remediator: "http://gpu-b.lan:8080", fleets: [b0]}
"""
GPU_C = '  gpu-c: {exporter: "10.0.0.3:9842", remediator: "https://gpu-c.lan:8443", fleets: [c0]}\n'


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def _write(tmp_path: Path, text: str, name: str = "hosts.yml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _render(tmp_path: Path, text: str = INVENTORY) -> Path:
    out = tmp_path / "rendered"
    assert (
        main(["render-monitoring", "--inventory", str(_write(tmp_path, text)), "--out", str(out)])
        == 0
    )
    return out


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- validation -----------------------------------------------------------------------------


def test_a_valid_inventory() -> None:
    inventory = parse_inventory(yaml.safe_load(INVENTORY + GPU_C), "hosts.yml")
    assert list(inventory.hosts) == ["gpu-a", "gpu-b", "gpu-c"]
    assert inventory.hosts["gpu-a"].fleets == ("a0", "a1")
    assert inventory.host_of("c0") == "gpu-c" and inventory.host_of("zz") is None
    c = inventory.hosts["gpu-c"]
    assert (c.remediator_scheme, c.remediator_address) == ("https", "gpu-c.lan:8443")
    assert c.credentials_file == "/run/secrets/model_fleet_token"
    assert inventory.alertmanagers == ("alertmanager:9093",)


INVALID = [
    ("hosts: {}\n", "hosts: must be a non-empty mapping"),
    ("hosts:\n  gpu a: {exporter: 'a:1', remediator: 'http://a:1', fleets: [x]}\n",
     "hosts.gpu a: host names use letters"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'http://a:1', fleets: [x]}\n"
     "  b: {exporter: 'b:1', remediator: 'http://b:1', fleets: [y, x]}\n",
     "hosts.b.fleets: fleet 'x' is listed by both host a and host b"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'http://a:1', fleets: [x]}\n"
     "  a: {exporter: 'b:1', remediator: 'http://b:1', fleets: [y]}\n",
     "key 'a' appears twice"),
    ("hosts:\n  a: {exporter: 'http://a:9842', remediator: 'http://a:1', fleets: [x]}\n",
     "hosts.a.exporter: must be HOST:PORT"),
    ("hosts:\n  a: {exporter: 'a:70000', remediator: 'http://a:1', fleets: [x]}\n",
     "hosts.a.exporter: must be HOST:PORT"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'a:8080', fleets: [x]}\n",
     "hosts.a.remediator: must be http(s)://HOST:PORT"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'http://a:8080/x', fleets: [x]}\n",
     "hosts.a.remediator: must be http(s)://HOST:PORT (no path)"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'http://a:1', fleets: []}\n",
     "hosts.a.fleets: must be a non-empty list"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'http://a:1', fleets: ['a b']}\n",
     "hosts.a.fleets: fleet names use letters"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'http://a:1'}\n", "hosts.a.fleets: is required"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'http://a:1', fleets: [x], gpu: 0}\n",
     "hosts.a: unknown key(s) gpu"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'http://a:1', fleets: [x]}\nalertmanagers: []\n",
     "alertmanagers: must be a non-empty list of HOST:PORT"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'http://a:1', fleets: [x]}\nnotify_url: chat\n",
     "notify_url: must be an http(s) URL"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'http://a:1', fleets: [x]}\nroute: {}\n",
     "top level: unknown key(s) route"),
    ("hosts:\n  a: {exporter: 'a:1', remediator: 'http://a:1', fleets: [x]}\n"
     "  b: {exporter: 'a:1', remediator: 'http://b:1', fleets: [y]}\n",
     "hosts.b.exporter: a:1 is host a's exporter too"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), INVALID, ids=lambda v: str(v)[:40])
def test_invalid_inventories_name_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_check_config_validates_an_inventory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write(tmp_path, INVENTORY)
    assert main(["check-config", "--inventory", str(good)]) == 0
    assert list(json.loads(capsys.readouterr().out)["hosts"]) == ["gpu-a", "gpu-b"]
    bad = _write(tmp_path, INVENTORY.replace("[b0]", "[a1]"), "bad.yml")
    assert main(["check-config", "--inventory", str(bad)]) == 2
    assert "fleet 'a1' is listed by both host gpu-a and host gpu-b" in capsys.readouterr().err


def test_check_config_compares_a_hosts_config_with_the_inventory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODEL_FLEET_HOST", raising=False)
    inventory = str(_write(tmp_path, INVENTORY))

    def check(config: dict[str, Any]) -> tuple[int, str]:
        path = _write(tmp_path, yaml.safe_dump(config), "model-fleet.yaml")
        code = main(["check-config", "--inventory", inventory, "--config", str(path)])
        return code, capsys.readouterr().err

    assert check({"host": "gpu-a", "fleets": {"a0": {}, "a1": {}}}) == (0, "")
    code, err = check({"host": "gpu-a", "fleets": {"a0": {}}})
    assert code == 2 and "fleets a0 of host gpu-a differ from those" in err and "(a0, a1)" in err
    code, err = check({"host": "gpu-z", "fleets": {"a0": {}}})
    assert code == 2 and "host 'gpu-z' is not in the inventory" in err
    code, err = check({"host": "gpu a", "fleets": {"a0": {}}})
    assert code == 2 and "host: must be a host name" in err


def test_the_inventory_keys_are_documented() -> None:
    assert {"hosts", "hosts.*.exporter", "hosts.*.fleets", "notify_url"} <= INVENTORY_KEYS


# --- rendering -------------------------------------------------------------------------------


def test_the_rendered_files_pass_promtool_and_amtool(tmp_path: Path) -> None:
    out = _render(tmp_path, INVENTORY + GPU_C)
    assert sorted(_snapshot(out)) == [
        "alertmanager.yml",
        "prometheus.yml",
        "targets/exporters.json",
        "targets/remediators.json",
    ]
    result = _run("promtool", "check", "config", str(out / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = _run("amtool", "check-config", str(out / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    exporters = json.loads((out / "targets" / "exporters.json").read_text())
    assert exporters == [
        {"targets": ["gpu-a.lan:9842"], "labels": {"host": "gpu-a"}},
        {"targets": ["gpu-b.lan:9842"], "labels": {"host": "gpu-b"}},
        {"targets": ["10.0.0.3:9842"], "labels": {"host": "gpu-c"}},
    ]
    remediators = json.loads((out / "targets" / "remediators.json").read_text())
    assert remediators[2] == {
        "targets": ["gpu-c.lan:8443"],
        "labels": {"host": "gpu-c", "__scheme__": "https"},
    }
    assert remediators[0] == {"targets": ["gpu-a.lan:8080"], "labels": {"host": "gpu-a"}}


ROUTES = [
    ({"alertname": "ModelFleetVRAMErrors", "host": "gpu-b", "fleet": "b0",
      "remediation": "downgrade", "severity": "warning"}, "remediator-gpu-b"),
    ({"alertname": "ModelFleetVRAMErrors", "host": "gpu-a", "fleet": "a1",
      "remediation": "downgrade", "severity": "warning"}, "remediator-gpu-a"),
    ({"alertname": "ModelFleetCanStepUp", "host": "gpu-a", "fleet": "a0",
      "remediation": "upgrade", "severity": "info"}, "remediator-gpu-a"),
    # A fleet on the wrong host, or no host at all: no remediator acts on it.
    ({"alertname": "ModelFleetVRAMErrors", "host": "gpu-a", "fleet": "b0",
      "remediation": "downgrade", "severity": "warning"}, "humans"),
    ({"alertname": "ModelFleetVRAMErrors", "fleet": "a0", "remediation": "downgrade",
      "severity": "warning"}, "humans"),
    ({"alertname": "ModelFleetRemediatorDown", "host": "gpu-b", "job": "model-fleet-remediator",
      "severity": "critical"}, "pager"),
    ({"alertname": "ModelFleetModelSwitched", "host": "gpu-a", "fleet": "a0",
      "severity": "info"}, "humans"),
]  # fmt: skip


def test_amtool_routes_each_hosts_alerts_to_its_remediator(tmp_path: Path) -> None:
    config = _render(tmp_path) / "alertmanager.yml"
    for labels, receiver in ROUTES:
        pairs = [f"{k}={v}" for k, v in labels.items()]
        result = _run(
            "amtool", "config", "routes", "test", f"--config.file={config}",
            f"--verify.receivers={receiver}", *pairs,
        )  # fmt: skip
        assert result.returncode == 0, f"{labels} -> {result.stdout.strip()}, expected {receiver}"


def test_receivers_post_to_each_host_with_its_token(tmp_path: Path) -> None:
    text = INVENTORY.replace("fleets: [b0]}", "fleets: [b0], credentials_file: /s/b}")
    am = yaml.safe_load((_render(tmp_path, text) / "alertmanager.yml").read_text())
    receivers = {r["name"]: r["webhook_configs"] for r in am["receivers"]}
    [b] = receivers["remediator-gpu-b"]
    assert b["url"] == "http://gpu-b.lan:8080/webhook/alertmanager"
    assert b["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": "/s/b"}
    # People: every host's notify webhook, so a host that is down cannot silence them.
    assert [h["url"] for h in receivers["pager"]] == [
        "http://gpu-a.lan:8080/webhook/notify",
        "http://gpu-b.lan:8080/webhook/notify",
    ]
    am = yaml.safe_load(
        (
            _render(tmp_path, INVENTORY + "notify_url: https://chat.lan/hook\n")
            / "alertmanager.yml"
        ).read_text()
    )
    for receiver in am["receivers"]:
        if receiver["name"] in ("humans", "pager"):
            assert [h["url"] for h in receiver["webhook_configs"]] == ["https://chat.lan/hook"]


def test_rendering_is_deterministic_atomic_and_one_host_adds_only_its_own(tmp_path: Path) -> None:
    first = _snapshot(_render(tmp_path / "1"))
    again = _snapshot(_render(tmp_path / "2"))
    assert first == again  # the same inventory: byte-identical files
    out = _render(tmp_path / "1")  # unchanged: nothing rewritten
    assert _snapshot(out) == first
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "temporary files left"
    more = _snapshot(_render(tmp_path / "1", INVENTORY + GPU_C))
    for name, before in first.items():
        after = more[name].decode()
        # Every line rendered before is still there, in order: the new host only adds lines.
        lines, it = before.decode().splitlines(), iter(after.splitlines())
        assert all(any(line == seen for seen in it) for line in lines), name
        if name == "prometheus.yml":
            assert more[name] == before  # the hosts are in targets/ only
        else:
            assert "gpu-c" in after, name


def test_rendered_files_follow_the_shipped_monitoring_files() -> None:
    """What the renderer copies from monitoring/ stays in step with it."""
    inventory = parse_inventory(yaml.safe_load(INVENTORY), "hosts.yml")
    files = render_files(inventory)
    shipped_prom = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    prom = yaml.safe_load(files["prometheus.yml"])
    assert prom["global"] == shipped_prom["global"]
    assert prom["rule_files"] == shipped_prom["rule_files"]
    assert prom["alerting"] == shipped_prom["alerting"]
    shipped_jobs = {j["job_name"]: j for j in shipped_prom["scrape_configs"]}
    for job in prom["scrape_configs"]:
        shipped = shipped_jobs[job["job_name"]]
        assert job["honor_labels"] is True
        assert {k: v for k, v in job.items() if k not in ("file_sd_configs", "honor_labels")} == {
            k: v for k, v in shipped.items() if k not in ("static_configs", "honor_labels")
        }
    shipped_am = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    am = yaml.safe_load(files["alertmanager.yml"])
    assert am["global"] == shipped_am["global"]
    assert am["inhibit_rules"] == shipped_am["inhibit_rules"]
    root = {k: v for k, v in am["route"].items() if k != "routes"}
    assert root == {k: v for k, v in shipped_am["route"].items() if k != "routes"}
    [shipped_remediation, shipped_pager] = shipped_am["route"]["routes"]
    *per_host, pager = am["route"]["routes"]
    assert pager == shipped_pager
    for route in per_host:
        assert route["matchers"][0] == shipped_remediation["matchers"][0]
        same = {k: v for k, v in route.items() if k not in ("receiver", "matchers")}
        assert same == {
            k: v for k, v in shipped_remediation.items() if k not in ("receiver", "matchers")
        }
    shipped_hook = {r["name"]: r for r in shipped_am["receivers"]}["remediator"]["webhook_configs"]
    hook = {r["name"]: r for r in am["receivers"]}["remediator-gpu-a"]["webhook_configs"]
    assert [{**h, "url": None} for h in hook] == [{**h, "url": None} for h in shipped_hook]


def test_write_files_reports_what_changed(tmp_path: Path) -> None:
    inventory = parse_inventory(yaml.safe_load(INVENTORY), str(tmp_path / "hosts.yml"))
    assert len(write_files(inventory, tmp_path / "out")) == 4
    assert write_files(inventory, tmp_path / "out") == []


def test_a_real_prometheus_scrapes_two_hosts_of_the_same_shape_apart() -> None:
    """The rendered prometheus.yml and targets/ on a real Prometheus: two hosts whose stand-in
    services publish the same fleet, container and GPU (each labelling its samples with its
    own host) give two series everywhere, `up` names each host, and each host's errors raise
    that host's own ModelFleetVRAMErrors."""
    with ExitStack() as stack:
        hosts = []
        for name in ("gpu-a", "gpu-b"):
            exporter = stack.enter_context(
                MetricsEndpoint(functools.partial(exporter_exposition, host=name))
            )
            remediator = stack.enter_context(
                MetricsEndpoint(functools.partial(remediator_exposition, host=name))
            )
            hosts.append(
                f"  {name}: {{exporter: '{exporter.target}', "
                f"remediator: 'http://{remediator.target}', fleets: [{name.replace('-', '')}]}}"
            )
        text = "hosts:\n" + "\n".join(hosts) + f"\nalertmanagers: ['127.0.0.1:{free_port()}']\n"
        files = render_files(parse_inventory(yaml.safe_load(text), "hosts.yml"))
        config = files.pop("prometheus.yml")
        prom = stack.enter_context(start_prometheus(config, [RULES_FILE], files=files))
        prom.wait_targets_up(timeout=30)
        up = {(s["metric"]["job"], s["metric"]["host"]) for s in prom.query("up")}
        assert up == {
            (job, host)
            for job in ("model-fleet-exporter", "model-fleet-remediator")
            for host in ("gpu-a", "gpu-b")
        }
        errors = prom.query("model_fleet_vram_errors_since_start")
        assert sorted(s["metric"]["host"] for s in errors) == ["gpu-a", "gpu-b"]
        assert prom.query('{exported_host!=""}') == [], "honor_labels keeps the service's host"

        def both_fire() -> list[str]:
            alerts = prom.query('ALERTS{alertname="ModelFleetVRAMErrors", alertstate="firing"}')
            found = sorted(a["metric"]["host"] for a in alerts)
            return found if found == ["gpu-a", "gpu-b"] else []

        wait_for(both_fire, 30, "one ModelFleetVRAMErrors per host")
