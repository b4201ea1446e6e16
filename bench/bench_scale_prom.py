"""What the per-host series cost a real Prometheus, and what a two-replica Alertmanager takes.

Prometheus: the shipped prometheus.yml and rules, with both jobs' targets in file_sd files
(as render-monitoring writes them): the same running exporter and remediator listed K times,
each with its own ``host`` target label, and a metric relabelling that prefixes ``fleet`` and
``gpu`` with the host, so K simulated hosts give K times the series and K times the alert
rules' work, as K real hosts would. For each K: head series, resident memory, CPU, rule group
evaluation time, evaluation failures.

Alertmanager: the shipped alertmanager.yml on a two-replica cluster (prom_env), its webhooks
pointed at a local sink. N downgrade alerts, one fleet each, are posted to both replicas (as
Prometheus posts to every replica); measured: alerts/s ingested, then the time until the sink
has one notification per fleet, and duplicates across the replicas.

One switch: the whole loop (simulator/loop.py) makes one downgrade; counted are the alerts
that fired and the deliveries that reached the remediator.

Used by bench/bench_scale.py.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from bench.common import Row, free_port
from simulator import prom_env
from simulator.local_http import http_get

# Which alerts of alert_rules/ a host can raise, and per what: the upper bound when every
# label set fires at once. A rule not listed here fails the benchmark (keep it in step).
ALERT_SCOPE: dict[str, tuple[str, int]] = {
    "ModelFleetVRAMErrors": ("container", 1),  # fleet, container, started_at (newest start)
    "ModelFleetAtSmallestModel": ("fleet", 1),
    "ModelFleetCanStepUp": ("fleet", 1),  # fleet, gpu: one GPU per fleet
    "ModelFleetCPUOffload": ("fleet", 1),  # the current model only
    "ModelFleetRemediationFailed": ("fleet", 7),  # per step (remediator.report.metrics.STEPS)
    "ModelFleetSwitchFlapping": ("fleet", 1),
    "ModelFleetModelSwitched": ("fleet", 9),  # direction x trigger
    "GPUVRAMNearlyFull": ("gpu", 1),
    "GPUVRAMFillingUp": ("gpu", 1),
    "ModelFleetExporterDown": ("host", 1),
    "ModelFleetRemediatorDown": ("host", 1),
    "ModelFleetNVMLDown": ("host", 1),
    "ModelFleetProbeFailing": ("fleet", 1),  # the current model only
    "ModelFleetLogStreamDown": ("container", 1),
    "ModelFleetLogLinesLost": ("container", 1),
}


def alert_bound_row() -> Row:
    """The most alert series one host can have firing at once, per GPU, fleet and container."""
    doc = yaml.safe_load(prom_env.RULES_FILE.read_text())
    names = {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    if names != set(ALERT_SCOPE):
        raise RuntimeError(f"ALERT_SCOPE is out of step with the rules: {names ^ set(ALERT_SCOPE)}")
    per: Counter[str] = Counter()
    for scope, count in ALERT_SCOPE.values():
        per[scope] += count
    value = (
        f"{per['host']} + {per['gpu']}*GPU + {per['fleet']}*fleet + {per['container']}*container"
        f" ({len(names)} alerts)"
    )
    return Row("scale: alerts", "alert series per host at most (every label set firing)", value)


def _metrics(url: str) -> dict[str, float]:
    """Prometheus' own /metrics, the series this benchmark reads (summed over labels)."""
    wanted = (
        "prometheus_tsdb_head_series",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "prometheus_rule_evaluation_failures_total",
        "go_memstats_heap_inuse_bytes",
    )
    out: dict[str, float] = {}
    for line in http_get(url + "/metrics", timeout=10).decode().splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _rule_durations(prom: prom_env.Prometheus) -> dict[str, float]:
    groups = prom.api("rules")["groups"]
    return {g["name"]: float(g["evaluationTime"]) for g in groups}


def _prom_config(workdir: Path, urls: tuple[str, str], hosts: int) -> dict[str, Any]:
    exporter, remediator = (u.removeprefix("http://").removesuffix("/metrics") for u in urls)
    config = prom_env.render_prometheus_config(exporter=exporter, remediator=remediator)
    # The shipped jobs honor the services' own `host` label, the same for every simulated host:
    # each target also carries `sim_host`, which becomes the samples' `host` (and a prefix of
    # `fleet` and `gpu`), so that K hosts are K distinct sets of series.
    relabel: list[dict[str, Any]] = [
        {
            "source_labels": ["sim_host", label],
            "regex": "(.+);(.+)",
            "target_label": label,
            "replacement": "${1}-${2}",
        }
        for label in ("fleet", "gpu")
    ]
    relabel += [
        {"source_labels": ["sim_host"], "regex": "(.+)", "target_label": "host"},
        {"regex": "sim_host", "action": "labeldrop"},
    ]
    for job, address in (
        (prom_env.EXPORTER_JOB, exporter),
        (prom_env.REMEDIATOR_JOB, remediator),
    ):
        sd = workdir / f"{job}.json"
        groups = [
            {"targets": [address], "labels": {"host": f"h{k:03d}", "sim_host": f"h{k:03d}"}}
            for k in range(hosts)
        ]
        sd.write_text(json.dumps(groups))
        scrape = next(s for s in config["scrape_configs"] if s["job_name"] == job)
        scrape.pop("static_configs")
        scrape["file_sd_configs"] = [{"files": [str(sd)]}]
        scrape["metric_relabel_configs"] = relabel
    return config


def one_prometheus(
    workdir: Path, urls: tuple[str, str], hosts: int, window: float = 20.0
) -> dict[str, float]:
    """Prometheus scraping ``hosts`` simulated hosts: its figures after it settled."""
    with prom_env.start_prometheus(_prom_config(workdir, urls, hosts)) as prom:
        prom.wait_targets_up(90)
        time.sleep(12)  # every target scraped twice, every rule evaluated a few times
        before, t0 = _metrics(prom.url), time.monotonic()
        evals: dict[str, list[float]] = {}
        while time.monotonic() - t0 < window:
            for name, seconds in _rule_durations(prom).items():
                evals.setdefault(name, []).append(seconds)
            time.sleep(2)
        after, elapsed = _metrics(prom.url), time.monotonic() - t0
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        slowest = max(rules, key=lambda r: float(r["evaluationTime"]))
        scrape = prom.query(f'max(scrape_duration_seconds{{job="{prom_env.EXPORTER_JOB}"}})')
        return {
            "series": after["prometheus_tsdb_head_series"],
            "rss": after["process_resident_memory_bytes"],
            "heap": after["go_memstats_heap_inuse_bytes"],
            "cpu": (after["process_cpu_seconds_total"] - before["process_cpu_seconds_total"])
            / elapsed,
            "failures": after["prometheus_rule_evaluation_failures_total"],
            "scrape_max": float(scrape[0]["value"][1]) if scrape else 0.0,
            **{f"eval:{name}": statistics.median(values) for name, values in evals.items()},
            **{f"evalmax:{name}": max(values) for name, values in evals.items()},
            "load": os.getloadavg()[0],
            f"slowest:{slowest['name']}": float(slowest["evaluationTime"]),
        }


def prometheus_rows(
    workdir: Path, urls: tuple[str, str], shape: object, hosts: Sequence[int]
) -> list[Row]:
    """One Prometheus per K in ``hosts``; rows per K and the cost per series."""
    name = f"scale: Prometheus, K hosts of {shape}"
    rows, figures = [alert_bound_row()], {}
    for k in hosts:
        f = figures[k] = one_prometheus(workdir, urls, k)
        first = figures[min(figures)]
        if f["series"] < 0.9 * k * first["series"] / min(figures):
            raise RuntimeError(f"K={k}: {f['series']:.0f} head series, the hosts share series")
        evals = ", ".join(
            f"{key.removeprefix('eval:model-fleet-')} {v * 1000:.1f} ms "
            f"(max {f['evalmax:' + key.removeprefix('eval:')] * 1000:.1f})"
            for key, v in f.items()
            if key.startswith("eval:")
        )
        evals += "; slowest rule " + ", ".join(
            f"{key.removeprefix('slowest:')} {v * 1000:.1f} ms"
            for key, v in f.items()
            if key.startswith("slowest:")
        )
        rows.append(
            Row(
                name,
                f"K={k}",
                f"{f['series']:,.0f} head series, RSS {f['rss'] / 2**20:.0f} MiB (heap "
                f"{f['heap'] / 2**20:.0f} MiB), CPU {f['cpu'] * 100:.1f} % of a core, rule "
                f"eval median: {evals}, rule failures {f['failures']:.0f}, exporter scrape max "
                f"{f['scrape_max'] * 1000:.1f} ms, machine load {f['load']:.1f}",
            )
        )
    lo, hi = figures[min(hosts)], figures[max(hosts)]
    added = hi["series"] - lo["series"]
    if added > 0:
        per = {
            "RSS": (hi["rss"] - lo["rss"]) / added,
            "heap": (hi["heap"] - lo["heap"]) / added,
        }
        remediation = [k for k in hi if k.startswith("eval:") and k.endswith("remediation")]
        ev = (hi[remediation[0]] - lo[remediation[0]]) / added * 1e6 if remediation else 0.0
        cpu = (hi["cpu"] - lo["cpu"]) / added
        rows.append(
            Row(
                name,
                f"per added series (K={min(hosts)} -> {max(hosts)})",
                f"RSS {per['RSS']:,.0f} B, heap {per['heap']:,.0f} B, remediation group "
                f"eval (median) {ev:.2f} us, CPU {cpu * 1e6:.1f} us/s",
            )
        )
    return rows


class _Sink(BaseHTTPRequestHandler):
    """Counts Alertmanager's webhook deliveries: per group key and alerts in them."""

    groups: Counter[str]
    replicas: Counter[str]
    lock: threading.Lock
    last: list[float]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.groups[body["groupKey"]] += 1
            self.replicas[self.path.split("/")[1]] += 1
            self.last[0] = time.monotonic()
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        """Quiet."""


@contextmanager
def _sink() -> Iterator[tuple[str, type[_Sink]]]:
    handler = type(
        "Sink",
        (_Sink,),
        {"groups": Counter(), "replicas": Counter(), "lock": threading.Lock(), "last": [0.0]},
    )
    # A deep accept queue: Alertmanager opens a connection per group at once, and a refused
    # one is retried seconds later, which would measure the sink, not Alertmanager.
    server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 4096})
    server = server_class(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _post(url: str, alerts: list[dict[str, Any]]) -> None:
    req = urllib.request.Request(
        f"{url}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()


def alertmanager_rows(alerts: int = 20000, batch: int = 500) -> list[Row]:
    """Post ``alerts`` downgrade alerts (one fleet each) to a two-replica cluster."""
    name = "scale: Alertmanager, 2-replica cluster, shipped config"
    with ExitStack() as stack:
        sink_url, sink = stack.enter_context(_sink())
        token = Path(stack.enter_context(_tmpdir())) / "token"
        token.write_text("bench\n")
        # The same config but for the sink's path, which tells the replicas apart.
        configs = [
            prom_env.render_alertmanager_config(
                webhook_url=f"{sink_url}/r{i}/webhook/alertmanager",
                credentials_file=token,
                notify_url=f"{sink_url}/r{i}/webhook/notify",
            )
            for i in range(2)
        ]
        peers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        ams = [
            stack.enter_context(
                prom_env.start_alertmanager(
                    configs[i], cluster_listen=peers[i], peers=[peers[1 - i]]
                )
            )
            for i in range(2)
        ]
        time.sleep(2)  # the replicas find each other
        now = datetime.now(UTC).isoformat()
        payload = [
            {
                "labels": {
                    "alertname": "ModelFleetVRAMErrors",
                    "remediation": "downgrade",
                    "severity": "warning",
                    "host": f"h{i // 16:04d}",
                    "fleet": f"h{i // 16:04d}-f{i % 16:02d}",
                    "container": "ollama",
                    "started_at": now,
                },
                "annotations": {"value": "3"},
                "startsAt": now,
            }
            for i in range(alerts)
        ]
        t0 = time.monotonic()
        for start in range(0, alerts, batch):
            for am in ams:
                _post(am.url, payload[start : start + batch])
        ingest = time.monotonic() - t0
        deadline = time.monotonic() + 240
        while len(sink.groups) < alerts and time.monotonic() < deadline:
            time.sleep(0.5)
        delivered = sink.last[0] - t0
        with sink.lock:
            groups, posts = len(sink.groups), sum(sink.groups.values())
            by_replica = " / ".join(f"{sink.replicas[f'r{i}']:,}" for i in range(2))
        rss = [_rss(am.url) for am in ams]
    return [
        Row(
            name,
            f"ingest {alerts:,} alerts to both replicas ({batch} a request)",
            f"{ingest:.1f} s: {alerts / ingest:,.0f} alerts/s",
        ),
        Row(
            name,
            "notifications (remediation route, one group per fleet)",
            f"{groups:,} of {alerts:,} groups notified, {posts - groups} duplicates, last "
            f"{delivered:.1f} s after the first post: {groups / delivered:,.0f}/s",
        ),
        Row(name, "notifications sent by replica 0 / replica 1", by_replica),
        Row(name, "resident memory after", ", ".join(f"{r / 2**20:.0f} MiB" for r in rss)),
    ]


def _rss(url: str) -> float:
    for line in http_get(url + "/metrics", timeout=10).decode().splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1])
    return 0.0


@contextmanager
def _tmpdir() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mf-bench-am-") as tmp:
        yield tmp


def switch_rows(workdir: Path, settle: float = 45.0) -> list[Row]:
    """One downgrade on the whole loop (simulator/loop.py): the alerts and deliveries it makes.

    Counts what reached the remediator within ``settle`` seconds of the switch: deliveries to
    its switch webhook and to /webhook/notify (the humans' receiver), and the alerts Prometheus
    had pending or firing. ModelFleetModelSwitched's resolution comes minutes later (2 min of
    increase, then the humans route's 5 min group_interval) and is not waited for.
    """
    from simulator.loop import Loop, LoopOptions, sample_values, wait_until

    name = "scale: alerts of one switch (the whole loop, shipped rules and routes)"
    with Loop(workdir, LoopOptions(cooldown_seconds=5)) as loop:
        assert loop.prometheus is not None
        loop.emit_errors(3)
        wait_until(lambda: len(loop.history()) >= 1, 60, "the switch", interval=0.5)
        switched = time.monotonic()
        time.sleep(settle)
        text = loop.remediator_metrics()
        hooks = sum(sample_values(text, "model_fleet_webhook_requests_total"))
        notes = sum(sample_values(text, "model_fleet_notifications_total"))
        window = f"{settle + 60:.0f}s"
        seen = loop.prometheus.query(
            f'count by (alertname) (count_over_time(ALERTS{{alertstate="firing"}}[{window}]))'
        )
        alerts = sorted(s["metric"]["alertname"] for s in seen)
        waited = time.monotonic() - switched
    return [
        Row(
            name,
            f"within {waited:.0f} s of the switch",
            f"{hooks:.0f} deliveries to the switch webhook, {notes:.0f} to /webhook/notify; "
            f"alerts fired: {', '.join(alerts)}",
        )
    ]
