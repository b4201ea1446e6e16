"""Real Prometheus and Alertmanager processes on 127.0.0.1 ports, for the tests.

``start_prometheus(config, rule_files)`` and ``start_alertmanager(config)`` run the installed
binaries on free local ports with throw-away storage and stop them on exit;
``check_promql`` parses expressions with promtool. The test copies of the configs come from
simulator.prom_config and the metric expositions from simulator.expositions; both are
re-exported here, where the tests have always imported them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from simulator.expositions import (
    GIB,
    LADDER,
    MIB,
    MetricsEndpoint,
    exporter_exposition,
    exposition,
    remediator_exposition,
)
from simulator.local_http import free_port, http_json, wait_for
from simulator.prom_config import (
    ALERTMANAGER_CONFIG,
    COMPOSE_REMEDIATOR_URL,
    EXPORTER_JOB,
    PROMETHEUS_CONFIG,
    REMEDIATOR_JOB,
    REMEDIATOR_RECEIVER,
    REPO,
    RULES_FILE,
    config_text,
    render_alertmanager_config,
    render_prometheus_config,
    render_rules,
)

__all__ = [
    "ALERTMANAGER_CONFIG",
    "COMPOSE_REMEDIATOR_URL",
    "EXPORTER_JOB",
    "GIB",
    "LADDER",
    "MIB",
    "PROMETHEUS_CONFIG",
    "REMEDIATOR_JOB",
    "REMEDIATOR_RECEIVER",
    "REPO",
    "RULES_FILE",
    "Alertmanager",
    "MetricsEndpoint",
    "PromQLError",
    "Prometheus",
    "check_promql",
    "exporter_exposition",
    "exposition",
    "free_port",
    "http_json",
    "promql_metric_names",
    "remediator_exposition",
    "render_alertmanager_config",
    "render_prometheus_config",
    "render_rules",
    "start_alertmanager",
    "start_prometheus",
    "start_prometheus_file",
    "wait_for",
]


class PromQLError(Exception):
    """Prometheus answered a query with an error (never retried by wait_for)."""


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(f"{' or '.join(names)} not found: scripts/bootstrap installs it")


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def _serve(
    argv: list[str], url: str, log: Path, what: str, timeout: float
) -> Iterator[subprocess.Popen[bytes]]:
    # Appended: a process restarted on the same work directory keeps its earlier log.
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_log_tail(log)}")
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)

        try:
            wait_for(ready, timeout, f"{what} at {url} to be ready")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{_log_tail(log)}") from None
        yield proc
    finally:
        _stop(proc)


class Prometheus:
    """A running Prometheus: its URL and a few API calls."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir
        self.log = workdir / "prometheus.log"

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; raise PromQLError when Prometheus answers with an error."""
        query = urllib.parse.urlencode(params)
        answer = http_json(f"{self.url}/api/v1/{path}?{query}")
        if answer.get("status") != "success":
            raise PromQLError(f"Prometheus {path} {params}: {answer.get('error', answer)}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the vector's samples (or [] when empty)."""
        data = self.api("query", query=expr)
        return list(data["result"]) if data["resultType"] in ("vector", "matrix") else []

    def query_range(
        self, expr: str, seconds: float = 120.0, step: str = "5s"
    ) -> list[dict[str, Any]]:
        """Range query over the last ``seconds``; the matrix's series."""
        end = time.time()
        data = self.api(
            "query_range", query=expr, start=f"{end - seconds:.3f}", end=f"{end:.3f}", step=step
        )
        return list(data["result"])

    def active_targets(self) -> list[dict[str, Any]]:
        """The scrape targets with their health and last error."""
        return list(self.api("targets", state="active")["activeTargets"])

    def wait_targets_up(self, timeout: float = 30.0) -> None:
        """Wait until every active target has been scraped successfully."""

        def all_up() -> bool:
            targets = self.active_targets()
            return bool(targets) and all(t["health"] == "up" for t in targets)

        try:
            wait_for(all_up, timeout, "every scrape target up")
        except TimeoutError as exc:
            states = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in self.active_targets()]
            raise TimeoutError(f"{exc}: {states}") from None

    def firing_alerts(self) -> list[dict[str, Any]]:
        """Alerts in state firing, as /api/v1/alerts lists them."""
        alerts = self.api("alerts")["alerts"]
        return [a for a in alerts if a["state"] == "firing"]


@contextmanager
def start_prometheus(
    config: str | Mapping[str, Any],
    rule_files: Sequence[Path] = (),
    timeout: float = 30.0,
    files: Mapping[str, str] | None = None,
    *,
    listen: str | None = None,
    workdir: Path | None = None,
) -> Iterator[Prometheus]:
    """Run Prometheus with ``config`` (YAML text or dict) on a free 127.0.0.1 port.

    ``rule_files`` replaces the config's rule_files (absolute paths); empty keeps the config's.
    ``files`` (path relative to the config file -> text) are written next to it first: what
    the config names relative to itself, such as file_sd targets (render-monitoring's).
    ``listen`` ("127.0.0.1:PORT") fixes the address and ``workdir`` keeps the config, data and
    log there (else a throw-away directory): a restart on both is the same Prometheus again.
    """
    with _workdir("mf-prometheus-", workdir) as workdir:
        cfg = yaml.safe_load(config_text(config))
        if rule_files:
            cfg["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
        for relative, text in (files or {}).items():
            (workdir / relative).parent.mkdir(parents=True, exist_ok=True)
            (workdir / relative).write_text(text)
        with _run_prometheus(config_file, workdir, timeout, listen) as prom:
            yield prom


@contextmanager
def _workdir(prefix: str, keep: Path | None) -> Iterator[Path]:
    """``keep`` (created if missing, never removed), or a temporary directory."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@contextmanager
def start_prometheus_file(config_file: Path, timeout: float = 30.0) -> Iterator[Prometheus]:
    """Run Prometheus on ``config_file`` as it is (relative paths resolve next to it)."""
    with (
        tempfile.TemporaryDirectory(prefix="mf-prometheus-") as tmp,
        _run_prometheus(config_file, Path(tmp), timeout) as prom,
    ):
        yield prom


@contextmanager
def _run_prometheus(
    config_file: Path, workdir: Path, timeout: float, listen: str | None = None
) -> Iterator[Prometheus]:
    """Prometheus on ``config_file`` and ``listen`` (else a free 127.0.0.1 port), its data and
    log in ``workdir``."""
    url = f"http://{listen or f'127.0.0.1:{free_port()}'}"
    argv = [
        _binary("prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--log.level=warn",
    ]
    prom = Prometheus(url, workdir)
    with _serve(argv, url, prom.log, "Prometheus", timeout):
        yield prom


class Alertmanager:
    """A running Alertmanager: its URL and its v2 API."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir
        self.log = workdir / "alertmanager.log"

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """POST alerts (labels, annotations, startsAt/endsAt) as Prometheus would."""
        req = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(list(alerts)).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise RuntimeError(f"Alertmanager refused the alerts: HTTP {resp.status}")

    def alerts(self, *matchers: str) -> list[dict[str, Any]]:
        """GET /api/v2/alerts (inhibited and silenced included), filtered by ``matchers``."""
        query = urllib.parse.urlencode([("filter", m) for m in matchers])
        return list(http_json(f"{self.url}/api/v2/alerts?{query}"))


@contextmanager
def start_alertmanager(
    config: str | Mapping[str, Any],
    timeout: float = 30.0,
    *,
    cluster_listen: str | None = None,
    peers: Sequence[str] = (),
    listen: str | None = None,
    workdir: Path | None = None,
) -> Iterator[Alertmanager]:
    """Run Alertmanager with ``config`` (YAML text or dict) on a free 127.0.0.1 port.

    With ``cluster_listen`` ("127.0.0.1:PORT") it joins a high-availability cluster with
    ``peers``: replicas gossip notification logs, so one alert is delivered once.
    ``listen`` ("127.0.0.1:PORT") fixes the API's address (else a free port); ``workdir``
    keeps its config, data (notification log, silences) and log there (else a throw-away
    directory): a restart on both is the same Alertmanager again.
    """
    binary = _binary("prometheus-alertmanager", "alertmanager")
    with _workdir("mf-alertmanager-", workdir) as workdir:
        config_file = workdir / "alertmanager.yml"
        config_file.write_text(config_text(config))
        url = f"http://{listen or f'127.0.0.1:{free_port()}'}"
        argv = [
            binary,
            f"--config.file={config_file}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
            # Without a cluster: no gossip, and no fixed 9094 port to collide on.
            f"--cluster.listen-address={cluster_listen or ''}",
            *(f"--cluster.peer={peer}" for peer in peers),
            "--log.level=warn",
        ]
        am = Alertmanager(url, workdir)
        with _serve(argv, url, am.log, "Alertmanager", timeout):
            yield am


# --- PromQL text ---------------------------------------------------------------------------

_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan", "atan2"}
)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (plain text analysis, enough for ours)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def check_promql(exprs: Mapping[str, str]) -> None:
    """Parse each expression with promtool (as a recording rule); raise with its messages."""
    rules = [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs.values())]
    names = list(exprs)
    with tempfile.TemporaryDirectory(prefix="mf-promql-") as tmp:
        path = Path(tmp) / "exprs.rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
        result = subprocess.run(
            [_binary("promtool"), "check", "rules", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    if result.returncode != 0:
        # promtool names the failing rule by index: map it back to the caller's names.
        out = result.stdout + result.stderr
        out = re.sub(r"check:expr_(\d+)", lambda m: names[int(m.group(1))], out)
        raise ValueError(f"promtool rejected PromQL:\n{out}")
