"""Real Prometheus and Alertmanager processes on 127.0.0.1 ports, for the tests.

``start_prometheus(config, rule_files)`` and ``start_alertmanager(config)`` run the installed
binaries on free local ports with throw-away storage and stop them on exit. The render_*
functions turn the compose configs of monitoring/ into test copies by rewriting only the
addresses (targets, webhook URLs, token file, rule files); ``render_rules`` shortens only the
``for`` of named alerts. ``MetricsEndpoint`` serves
Prometheus text over HTTP; ``exporter_exposition`` / ``remediator_exposition`` produce every
metric of the contract (fleet_contract.metrics) so queries can be checked before the real
services run.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fleet_contract import metrics as m
from fleet_contract.errors import ERROR_KINDS

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = REPO / "monitoring" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "monitoring" / "alertmanager.yml"
RULES_FILE = REPO / "alert_rules" / "model_fleet.rules.yml"

EXPORTER_JOB = "model-fleet-exporter"
REMEDIATOR_JOB = "model-fleet-remediator"
REMEDIATOR_RECEIVER = "remediator"
# Where monitoring/alertmanager.yml reaches the remediator under compose.
COMPOSE_REMEDIATOR_URL = "http://remediator:8080/"

T = TypeVar("T")


class PromQLError(Exception):
    """Prometheus answered a query with an error (never retried by wait_for)."""


MIB = 1024 * 1024
GIB = 1024 * MIB


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
            if result is not None and result is not False:
                return result
        except (OSError, ValueError, KeyError) as exc:  # not up yet, or a half-written answer
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def http_json(
    url: str, *, data: Any = None, method: str | None = None, timeout: float = 10.0
) -> Any:
    """GET (or POST ``data`` as JSON) and decode the JSON answer; HTTP errors keep their body."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return json.loads(raw)
        except ValueError:
            raise exc from None
    return json.loads(raw) if raw else None


# --- rendering the compose configs into test copies --------------------------------------


def _job(config: dict[str, Any], job: str) -> dict[str, Any]:
    for scrape in config["scrape_configs"]:
        if scrape["job_name"] == job:
            return scrape  # type: ignore[no-any-return]
    raise KeyError(f"no scrape job {job!r} in the Prometheus config")


def render_prometheus_config(
    *,
    exporter: str,
    remediator: str,
    alertmanager: str | None = None,
    rule_files: Sequence[Path] = (RULES_FILE,),
    source: Path = PROMETHEUS_CONFIG,
) -> dict[str, Any]:
    """monitoring/prometheus.yml with test targets ("127.0.0.1:PORT") and rule file paths.

    Only the two scrape targets, the Alertmanager target and rule_files change; intervals,
    job names and everything else stay as compose runs them. No Alertmanager: a local port
    nothing listens on, so notifications fail fast instead of resolving a compose host name.
    """
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    _job(config, EXPORTER_JOB)["static_configs"] = [{"targets": [exporter]}]
    _job(config, REMEDIATOR_JOB)["static_configs"] = [{"targets": [remediator]}]
    am = alertmanager or f"127.0.0.1:{free_port()}"
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [am]}]
    config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    return config


def render_alertmanager_config(
    *,
    webhook_url: str,
    credentials_file: Path,
    notify_url: str | None = None,
    source: Path = ALERTMANAGER_CONFIG,
) -> dict[str, Any]:
    """monitoring/alertmanager.yml with the remediator's URLs and token file rewritten.

    The remediator receiver posts to ``webhook_url``; the human receivers (their webhooks go
    to the remediator's /webhook/notify) post to ``notify_url``, or to a local port nothing
    listens on when None, so that tests of the switch webhook see nothing else.
    """
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    found = False
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if not hook["url"].startswith(COMPOSE_REMEDIATOR_URL):
                continue
            if receiver["name"] == REMEDIATOR_RECEIVER:
                hook["url"], found = webhook_url, True
            else:
                hook["url"] = notify_url or f"http://127.0.0.1:{free_port()}/webhook/notify"
            hook["http_config"]["authorization"]["credentials_file"] = str(credentials_file)
    if not found:
        raise KeyError(f"no receiver {REMEDIATOR_RECEIVER!r} in the Alertmanager config")
    return config


def render_rules(durations: Mapping[str, str], source: Path = RULES_FILE) -> dict[str, Any]:
    """alert_rules/model_fleet.rules.yml with the ``for`` of the alerts named in ``durations``
    (alert name -> Prometheus duration) replaced: a fast test copy. Nothing else changes."""
    doc: dict[str, Any] = yaml.safe_load(source.read_text())
    rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}
    for name, duration in durations.items():
        if name not in rules:
            raise KeyError(f"no alert {name!r} in {source.name}")
        rules[name]["for"] = duration
    return doc


def _config_text(config: str | Mapping[str, Any]) -> str:
    return config if isinstance(config, str) else yaml.safe_dump(dict(config), sort_keys=False)


# --- processes ----------------------------------------------------------------------------


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
    with log.open("wb") as out:
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
    config: str | Mapping[str, Any], rule_files: Sequence[Path] = (), timeout: float = 30.0
) -> Iterator[Prometheus]:
    """Run Prometheus with ``config`` (YAML text or dict) on a free 127.0.0.1 port.

    ``rule_files`` replaces the config's rule_files (absolute paths); empty keeps the config's.
    """
    binary = _binary("prometheus")
    with tempfile.TemporaryDirectory(prefix="mf-prometheus-") as tmp:
        workdir = Path(tmp)
        cfg = yaml.safe_load(_config_text(config))
        if rule_files:
            cfg["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
        url = f"http://127.0.0.1:{free_port()}"
        argv = [
            binary,
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
) -> Iterator[Alertmanager]:
    """Run Alertmanager with ``config`` (YAML text or dict) on a free 127.0.0.1 port.

    With ``cluster_listen`` ("127.0.0.1:PORT") it joins a high-availability cluster with
    ``peers``: replicas gossip notification logs, so one alert is delivered once.
    """
    binary = _binary("prometheus-alertmanager", "alertmanager")
    with tempfile.TemporaryDirectory(prefix="mf-alertmanager-") as tmp:
        workdir = Path(tmp)
        config_file = workdir / "alertmanager.yml"
        config_file.write_text(_config_text(config))
        url = f"http://127.0.0.1:{free_port()}"
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


# --- an HTTP endpoint serving Prometheus text ----------------------------------------------


class MetricsEndpoint:
    """Serves ``render(n)`` at /metrics on a free 127.0.0.1 port; n counts the scrapes from 1."""

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._lock = threading.Lock()
        self.scrapes = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                with endpoint._lock:
                    endpoint.scrapes += 1
                    body = endpoint._render(endpoint.scrapes).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the test output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> MetricsEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(sample: str) -> m.MetricSpec | None:
    """The contract metric a sample belongs to (a histogram's _bucket, _sum and _count too)."""
    if sample in m.BY_NAME:
        return m.BY_NAME[sample]
    for suffix in ("_bucket", "_sum", "_count"):
        spec = m.BY_NAME.get(sample.removesuffix(suffix))
        if sample.endswith(suffix) and spec is not None and spec.kind == "histogram":
            return spec
    return None


def exposition(samples: Sequence[tuple[str, Mapping[str, str], float]]) -> str:
    """Prometheus text format for (name, labels, value) samples, with # TYPE lines."""
    lines: list[str] = []
    typed: set[str] = set()
    for name, labels, value in samples:
        spec = _family(name)
        family = spec.name if spec is not None else name
        if family not in typed:
            lines.append(f"# TYPE {family} {spec.kind if spec is not None else 'untyped'}")
            typed.add(family)
        pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        number = str(int(value)) if float(value).is_integer() else repr(float(value))
        lines.append(f"{name}{{{pairs}}} {number}" if pairs else f"{name} {number}")
    return "\n".join(lines) + "\n"


LADDER = (
    ("llama3.2:3b", 2048),
    ("phi3:mini", 2200),
    ("tinyllama:1.1b", 637),
    ("qwen2.5:0.5b", 397),
)


def exporter_exposition(scrape: int) -> str:
    """Every exporter metric of the contract for fleet "default" on GPU "0"; counters grow."""
    gpu = {"gpu": "0", "uuid": "GPU-00000000-0000-0000-0000-000000000000", "name": "Fake T4"}
    total = 16 * GIB
    used = 6 * GIB + scrape * 10 * MIB
    ollama = {"fleet": "default", "container": "ollama"}
    samples: list[tuple[str, Mapping[str, str], float]] = [
        (m.GPU_MEMORY_TOTAL, gpu, total),
        (m.GPU_MEMORY_USED, gpu, used),
        (m.GPU_MEMORY_FREE, gpu, total - used),
        # The process metric names the container, not the fleet.
        (m.GPU_PROCESS_MEMORY, {"gpu": "0", "pid": "4242", "container": "ollama"}, used),
        (m.NVML_UP, {}, 1),
    ]
    samples += [
        (m.VRAM_ERRORS, {**ollama, "kind": kind.name}, scrape if i == 0 else 0)
        for i, kind in enumerate(ERROR_KINDS)
    ]
    samples += [
        (m.VRAM_ERRORS_SINCE_START, ollama, 3),
        (m.LOG_LINES, ollama, 10 * scrape),
        (m.LOG_STREAM_UP, ollama, 1),
        (m.LOG_STREAM_RECONNECTS, ollama, 0),
        (m.CONTAINER_START_INFO, {**ollama, "started_at": "2026-11-27T10:00:00Z"}, 1),
        (m.EXPORTER_DOCKER_UP, {}, 1),
        (f"{m.EXPORTER_SCRAPE_DURATION}_bucket", {"le": "0.01"}, scrape),
        (f"{m.EXPORTER_SCRAPE_DURATION}_bucket", {"le": "+Inf"}, scrape),
        (f"{m.EXPORTER_SCRAPE_DURATION}_sum", {}, 0.002 * scrape),
        (f"{m.EXPORTER_SCRAPE_DURATION}_count", {}, scrape),
    ]
    # The model server's view (/api/ps and the probe): phi3:mini, a quarter of it offloaded.
    model = {"fleet": "default", "model": LADDER[1][0]}
    size = LADDER[1][1] * MIB
    samples += [
        (m.MODEL_SERVER_UP, {"fleet": "default"}, 1),
        (m.MODEL_MEMORY, {**model, "location": "vram"}, size - size // 4),
        (m.MODEL_MEMORY, {**model, "location": "system"}, size // 4),
        (m.PROBE_SUCCESS, model, 1),
        (m.PROBE_DURATION, model, 0.25),
        (m.PROBE_TOKENS_PER_SECOND, model, 40.0 + scrape % 5),
    ]
    return exposition(samples)


def remediator_exposition(scrape: int, now: Callable[[], float] = time.time) -> str:
    """Every remediator metric of the contract: fleet "default" on phi3:mini; counters grow."""
    current = 1
    fleet = {"fleet": "default"}
    samples: list[tuple[str, Mapping[str, str], float]] = [
        (m.CURRENT_MODEL_INFO, {**fleet, "model": LADDER[current][0]}, 1),
        (m.CURRENT_MODEL_INDEX, fleet, current),
        (m.LADDER_SIZE, fleet, len(LADDER)),
        (m.CAN_DOWNGRADE, fleet, 1),
        (m.OFFLOAD_TOLERANCE, fleet, 0.1),
    ]
    samples += [
        (m.LADDER_MODEL_BYTES, {**fleet, "model": name, "rung": str(i)}, mb * MIB)
        for i, (name, mb) in enumerate(LADDER)
    ]
    samples += [
        (m.NEXT_LARGER_MODEL_BYTES, {**fleet, "gpu": "0"}, LADDER[0][1] * MIB),
        (m.SWITCHES, {**fleet, "direction": "down", "trigger": "alert"}, scrape),
        (m.REMEDIATION_FAILURES, {**fleet, "step": "pull"}, scrape // 2),
        (m.WEBHOOK_REQUESTS, {"outcome": "accepted"}, scrape),
        (m.NOTIFICATIONS, {"outcome": "forwarded"}, scrape // 3),
        (m.LAST_SWITCH_TIMESTAMP, fleet, round(now()) - 30),
    ]
    return exposition(samples)


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
