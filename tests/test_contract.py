"""fleet_contract against the code: the services' real /metrics, the rules, the dashboard, the
classifier, the environment variables the code reads, and what the package may import."""

from __future__ import annotations

import ast
import re
import threading
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.classifier import DEFAULT_PATTERNS, LogClassifier
from exporter.config import CONFIG_KEYS, ConfigError, ExporterConfig, parse_config
from exporter.containerlog import Tally
from exporter.main import build_exporter
from exporter.server import make_server
from exporter.serverapi import LoadedModel
from exporter.serverpoll import ProbeResult
from fleet_contract import env, errors, labels, metrics
from remediator.config import CONFIG_KEYS as RemediatorConfigKeys
from remediator.config import ConfigError as RemediatorConfigError
from remediator.config import parse_config as parse_remediator_config
from remediator.report import metrics as remediator_metrics
from remediator.store.state import StateStore
from simulator.prom_env import REPO, RULES_FILE, promql_metric_names
from tests.test_dashboards import _queries, _substitute

# name -> (type, label names) as a service exposes it
Exposed = dict[str, tuple[str, frozenset[str]]]

FORBIDDEN = frozenset(
    {"docker", "requests", "urllib3", "urllib", "pynvml", "flask", "prometheus_client"}
    | {"remediator", "exporter"}
)
# Hooks for the project's own tests, not settings: documented where they are read.
TEST_HOOKS = frozenset({"MODEL_FLEET_POLICY_RC_D"})
# The host the services below run for: every sample must carry it.
HOST = "gpu-test.lan"


def parse_exposition(text: str) -> Exposed:
    """The metric names of a Prometheus text exposition, as PromQL names them, with label sets."""
    families = list(text_string_to_metric_families(text))
    # prometheus_client adds X_created (the creation time) to a counter or histogram X; the
    # text format shows it as a family of its own.
    created = {f"{f.name}_created" for f in families if f.type in ("counter", "histogram")}
    found: Exposed = {}
    for family in families:
        if family.name in created:
            continue
        # The parser drops a counter's _total from the family name; PromQL keeps it.
        name = f"{family.name}_total" if family.type == "counter" else family.name
        names: set[str] = set()
        for sample in family.samples:
            names |= set(sample.labels) - ({"le"} if family.type == "histogram" else set())
        found[name] = (family.type, frozenset(names))
    return found


def contract_of(service: metrics.Service) -> Exposed:
    """What the contract says ``service`` exposes."""
    return {
        m.name: (m.kind, frozenset(metrics.exposed_labels(m))) for m in metrics.of_service(service)
    }


class _FakeNvml(types.SimpleNamespace):
    """pynvml with one GPU running one process: enough for every GPU metric to appear."""

    class NVMLError(Exception):
        value = 999

    nvmlMemory_v2 = 2

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"Fake T4"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return "GPU-00000000-0000-0000-0000-000000000000"

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int = 1) -> types.SimpleNamespace:
        return types.SimpleNamespace(total=16 << 30, used=6 << 30, free=10 << 30)

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: int) -> list[types.SimpleNamespace]:
        return [types.SimpleNamespace(pid=4242, usedGpuMemory=5 << 30)]


def exporter_metrics(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """GET /metrics of a real exporter (fake NVML, no Docker) with one watched container."""
    monkeypatch.setattr("exporter.adapters.nvml._load_pynvml", _FakeNvml)
    config = ExporterConfig(docker=False, proc_root=str(tmp_path), host=HOST)
    exporter = build_exporter(config)
    # One container that has run and reconnected: its gauges exist only then.
    store = exporter.store
    store.register("default", "ollama", expected=True)
    tally = Tally(lines=2, errors={errors.OOM: 1})
    store.update("default", "ollama", "c1", 1, tally, since_start=1, up=True, started_at="t0")
    store.reconnected("default", "ollama")
    # The default fleet's model server, polled once with a partly offloaded model, and probed.
    servers = exporter.servers.store
    servers.report_poll("default", [LoadedModel("phi3:mini", 3 << 30, 2 << 30)])
    servers.report_probe("default", ProbeResult("phi3:mini", True, 0.25, 42.0))
    server = make_server("127.0.0.1", 0, exporter.registry, exporter.health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())
    finally:
        server.shutdown()
        server.server_close()


def remediator_metrics_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The remediator's /metrics body for the default configuration, from a fresh registry."""
    monkeypatch.delenv(env.PROMETHEUS_MULTIPROC_DIR, raising=False)
    config = parse_remediator_config({"state_file": str(tmp_path / "state.json"), "host": HOST})
    registry = CollectorRegistry()
    remediator_metrics.RemediatorMetrics(config, registry)
    return remediator_metrics.render(config, StateStore(config), registry).decode()


@pytest.fixture()
def exposed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Exposed]:
    """What each service's real /metrics shows."""
    return {
        "exporter": parse_exposition(exporter_metrics(monkeypatch, tmp_path)),
        "remediator": parse_exposition(remediator_metrics_text(monkeypatch, tmp_path)),
    }


@pytest.mark.parametrize("service", ["exporter", "remediator"])
def test_service_exposes_exactly_its_contract_metrics(
    service: metrics.Service, exposed: dict[str, Exposed]
) -> None:
    real, contract = exposed[service], contract_of(service)
    assert sorted(set(real) - set(contract)) == [], "exposed, but not in the contract"
    assert sorted(set(contract) - set(real)) == [], "in the contract, but not exposed"
    for name, (kind, label_set) in contract.items():
        assert real[name] == (kind, label_set), f"{name}: exposed {real[name]}"


@pytest.mark.parametrize("service", ["exporter", "remediator"])
def test_every_sample_carries_the_services_host(
    service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(env.HOST, raising=False)
    render = exporter_metrics if service == "exporter" else remediator_metrics_text
    samples = [
        sample
        for family in text_string_to_metric_families(render(monkeypatch, tmp_path))
        for sample in family.samples
    ]
    assert samples
    for sample in samples:
        assert sample.labels.get(labels.HOST_LABEL) == HOST, sample
    assert metrics.COMMON_LABELS == (labels.HOST_LABEL,)


def test_every_metric_belongs_to_one_service_once() -> None:
    names = [m.name for m in metrics.METRICS]
    assert len(names) == len(set(names))
    assert {m.service for m in metrics.METRICS} == {"exporter", "remediator", "both"}
    # Both services say which model-fleet they are, and nothing else is exported twice.
    assert [m.name for m in metrics.METRICS if m.service == "both"] == [metrics.BUILD_INFO]
    for m in metrics.METRICS:
        assert re.fullmatch(r"model_fleet_[a-z_]+", m.name), m.name
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
        assert m.help.strip() and len(set(m.labels)) == len(m.labels), m.name


def test_the_exporter_counts_the_contract_error_kinds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = exporter_metrics(monkeypatch, tmp_path)
    family_name = metrics.VRAM_ERRORS.removesuffix("_total")  # the parser drops _total
    [family] = [f for f in text_string_to_metric_families(text) if f.name == family_name]
    kinds = {s.labels["kind"] for s in family.samples if s.name == metrics.VRAM_ERRORS}
    assert kinds == {k.name for k in errors.ERROR_KINDS}


def _rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return {
        f"rule {r.get('alert') or r.get('record')}": r["expr"]
        for group in doc["groups"]
        for r in group["rules"]
    }


def test_rules_and_dashboard_use_only_metrics_the_services_expose(
    exposed: dict[str, Exposed],
) -> None:
    available = set(exposed["exporter"]) | set(exposed["remediator"]) | metrics.BUILTIN
    queries = {**_rule_exprs(), **{f"dashboard {w}": _substitute(e) for w, e in _queries().items()}}
    unknown = {
        (where, name)
        for where, expr in queries.items()
        for name in promql_metric_names(expr)
        if name not in available
    }
    assert not unknown, f"queries name metrics no service exposes: {sorted(unknown)}"
    used = {n for expr in queries.values() for n in promql_metric_names(expr)}
    assert metrics.VRAM_ERRORS_SINCE_START in used and metrics.SWITCHES in used


def test_classifier_defaults_are_the_error_kinds() -> None:
    assert list(DEFAULT_PATTERNS.items()) == [
        (k.name, k.default_patterns) for k in errors.ERROR_KINDS
    ]
    assert LogClassifier().kinds == tuple(k.name for k in errors.ERROR_KINDS)
    for kind in errors.ERROR_KINDS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", kind.name) and kind.meaning
        # Each default pattern finds its own kind in a line that quotes it.
        for pattern in kind.default_patterns:
            sample = pattern.replace(".*", " ... ").replace(r"\d*", "0").replace("\\(", "(")
            assert LogClassifier().classify(f"level=ERROR msg={sample}") == kind.name, pattern


def test_labels_are_the_deployed_ones() -> None:
    gpu = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text(encoding="utf-8"))
    services = gpu["services"]
    assert services["ollama"]["labels"] == {
        labels.FLEET_LABEL: labels.DEFAULT_FLEET,
        labels.ROLE_LABEL: labels.ROLE_SERVER,
    }
    assert services["app"]["labels"][labels.ROLE_LABEL] == labels.ROLE_APP


def _imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(module, imported names) of every import statement in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]


def test_fleet_contract_imports_nothing_forbidden() -> None:
    modules = sorted((REPO / "fleet_contract").glob("*.py"))
    assert {p.stem for p in modules} >= {"labels", "env", "metrics", "errors", "yamlfile"}
    for path in modules:
        for module, _ in _imports(path):
            top = module.split(".")[0]
            assert top not in FORBIDDEN, f"fleet_contract/{path.name} imports {module}"


def _env_names_read_by_the_code() -> set[str]:
    """Names of the contract's env constants that remediator/ and exporter/ code refers to (or
    the shared code both run: fleet_contract's version and log format)."""
    constants = {k for k, v in vars(env).items() if isinstance(v, str) and k.isupper()}
    used: set[str] = set()
    for package in ("remediator", "exporter", "fleet_contract", "fleet_exposition"):
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            aliases = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == "fleet_contract.env":
                    used |= {a.name for a in node.names} & constants
                if isinstance(node, ast.ImportFrom) and node.module == "fleet_contract":
                    aliases |= {a.asname or a.name for a in node.names if a.name == "env"}
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in aliases
                    and node.attr in constants
                ):
                    used.add(node.attr)
    return {getattr(env, name) for name in used}


def _env_names_in_scripts() -> set[str]:
    files = [*sorted((REPO / "scripts").rglob("*")), *sorted(REPO.glob("docker-compose*.yml"))]
    text = "\n".join(p.read_text(encoding="utf-8") for p in files if p.is_file())
    return set(re.findall(r"\bMODEL_FLEET_[A-Z0-9_]+\b", text))


def test_env_vars_are_the_ones_the_code_and_scripts_read() -> None:
    names = {v.name for v in env.ENV_VARS}
    assert len(names) == len(env.ENV_VARS)
    for var in env.ENV_VARS:
        assert var.used_by and set(var.used_by) <= env.EnvVar.READERS and var.meaning, var
    by_code = _env_names_read_by_the_code()
    by_scripts = _env_names_in_scripts() - TEST_HOOKS
    # Every variable read is in the table ...
    assert sorted((by_code | by_scripts) - names) == []
    # ... and every variable in the table is read by whom it names.
    for var in env.ENV_VARS:
        if set(var.used_by) - {"scripts"}:
            assert var.name in by_code, f"{var.name}: no code reads it"
        if "scripts" in var.used_by:
            assert var.name in by_scripts, f"{var.name}: no script or compose file names it"
    # The code holds no literal variable name of its own.
    literals = set()
    for package in ("remediator", "exporter"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    literals |= set(re.findall(r"^(?:MODEL_FLEET|PROMETHEUS)_[A-Z_]+$", node.value))
    assert not literals, f"env variable names typed outside fleet_contract.env: {literals}"


def test_both_services_raise_the_one_config_error() -> None:
    assert ConfigError is RemediatorConfigError


def test_exporter_config_keys_are_the_keys_its_parser_accepts() -> None:
    with pytest.raises(ConfigError, match=r"allowed: ([^)]*)\)") as info:
        parse_config({"exporter": {"no_such_key": 1}})
    allowed = re.search(r"allowed: ([^)]*)\)", str(info.value))
    assert allowed is not None
    exporter_keys = {k for k in CONFIG_KEYS if k.startswith("exporter.")}
    top = {k for k in exporter_keys if k.count(".") == 1}
    assert top == {f"exporter.{k}" for k in allowed.group(1).split(", ")}
    with pytest.raises(ConfigError, match=r"allowed: ([^)]*)\)") as info:
        parse_config({"exporter": {"logs": {"no_such_key": 1}}})
    allowed = re.search(r"allowed: ([^)]*)\)", str(info.value))
    assert allowed is not None
    assert exporter_keys - top == {f"exporter.logs.{k}" for k in allowed.group(1).split(", ")}
    # Of the fleets, the exporter reads how their model servers' containers are found, where
    # their APIs answer, and the synthetic probe.
    assert "host" in CONFIG_KEYS and "host" in RemediatorConfigKeys
    fleet_keys = CONFIG_KEYS - exporter_keys - {"host"}
    assert fleet_keys == {
        "fleets.*.containers.server",
        "fleets.*.containers.ollama",  # the deprecated name of server
        "fleets.*.containers.use_labels",
        "fleets.*.server.url",
        "fleets.*.server.unit",  # whose journal is read with logs.source journald
        "fleets.*.ollama_url",  # the deprecated name of server.url
        "fleets.*.probe.enabled",
        "fleets.*.probe.interval_seconds",
        "fleets.*.probe.num_predict",
        "fleets.*.probe.prompt",
        "fleets.*.probe.model",
    }
    config = parse_config(
        {"fleets": {"gpu0": {"containers": {"ollama": ["srv"], "use_labels": False}}}}
    )
    assert config.selection.names == {"srv": "gpu0"} and not config.selection.use_labels


def test_both_services_name_their_host_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """model-fleet.yaml's `host`, overridden by $MODEL_FLEET_HOST, else the machine's name;
    a name that is no label-safe value is an error naming where it came from."""
    import socket

    parsers = (parse_config, parse_remediator_config)
    monkeypatch.delenv(env.HOST, raising=False)
    for parse in parsers:
        assert parse({"host": "gpu-a.lan"}, "f.yaml").host == "gpu-a.lan"
        assert parse({}, "f.yaml").host == socket.gethostname()
        with pytest.raises(ConfigError, match=r"^f\.yaml: host: must be a host name .* 'gpu a'"):
            parse({"host": "gpu a"}, "f.yaml")
        with pytest.raises(ConfigError, match="must be a host name"):
            parse({"host": 7}, "f.yaml")
    monkeypatch.setenv(env.HOST, "gpu-b")
    for parse in parsers:
        assert parse({"host": "gpu-a"}, "f.yaml").host == "gpu-b"
    monkeypatch.setenv(env.HOST, "-bad")
    for parse in parsers:
        with pytest.raises(ConfigError, match=r"^\$MODEL_FLEET_HOST: must be a host name"):
            parse({}, "f.yaml")
