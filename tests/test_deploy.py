"""Deployment files: compose files, Dockerfiles, .dockerignore and the example application.

No image can be pulled here, so nothing is started from the compose files: they are checked
against the compose-spec schema, against the repository (every path they mount or build from)
and against each other (the two combine with ``-f ... -f ...``). The pieces that can run here
do run: hadolint, the services' health-check commands, the build context the engine receives,
and the example application against a stand-in Ollama.
"""

from __future__ import annotations

import copy
import glob
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediator.config import parse_config
from simulator.loop_setup import MODEL_SERVER_LOG_CONFIG
from simulator.stack import compose_command
from tests.support import docker_env

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A dev tool installed with the project (next to this Python), else from PATH."""
    beside = VENV_BIN / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} not found: install the dev extras (pip install -e '.[dev]')"
    return found


GPU_FILE = "docker-compose.gpu.yml"
MONITORING_FILE = "docker-compose.monitoring.yml"
COMPOSE_FILES = (GPU_FILE, MONITORING_FILE)
# One image for both services; compose service -> (console script, port) it runs.
DOCKERFILE = "deploy/Dockerfile"
IMAGE = "model-fleet/model-fleet:latest"
SERVICES = {
    "exporter": ("model-fleet-exporter", 9842),
    "remediator": ("model-fleet", 8080),
}
# The only absolute host paths a compose file may mount.
HOST_PATHS = {"/var/run/docker.sock"}
# Mounted paths other engineers write, so a missing one says whose it is.
OWNERS = {
    "monitoring/": "the Prometheus/Alertmanager configuration work",
    "alert_rules": "the alert rules work",
    "grafana/": "the Grafana provisioning and dashboard work",
    "README.md": "the operator README, merged by the lead",
}


def load_compose(name: str) -> dict[str, Any]:
    """One compose file of the repository, parsed."""
    data = yaml.safe_load((REPO / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{name}: not a mapping"
    return data


def merge_compose(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge as ``docker compose -f base -f override`` does: maps deeply, lists appended.

    Compose merges a few lists by key (ports, volumes by target); the two files define disjoint
    services, so appending is the same here.
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_compose(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + [v for v in value if v not in out[key]]
        else:
            out[key] = copy.deepcopy(value)
    return out


def combined() -> dict[str, Any]:
    """The whole stack: the GPU file, then the monitoring file."""
    return merge_compose(load_compose(GPU_FILE), load_compose(MONITORING_FILE))


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    """Validate one file with check-jsonschema's vendored compose-spec schema."""
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def mounts(service: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume entry, short or long syntax."""
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) == 1:  # an anonymous volume: a target only
                yield "", parts[0], False
                continue
            mode = parts[2] if len(parts) > 2 else "rw"
            yield parts[0], parts[1], "ro" in mode.split(",")
        else:
            yield str(entry.get("source", "")), entry["target"], bool(entry.get("read_only"))


def is_host_path(source: str) -> bool:
    """A bind-mount source (a path) rather than a named volume."""
    return source.startswith((".", "/", "~"))


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, comments dropped, continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def instruction(path: Path, name: str) -> str:
    """Arguments of the last ``name`` instruction (the one that counts)."""
    found = [args for word, args in dockerfile_instructions(path) if word == name]
    assert found, f"{path.relative_to(REPO)}: no {name}"
    return found[-1]


def healthcheck_command(service: str) -> list[str]:
    """The exec-form command of a compose service's health check (without the CMD word)."""
    test = combined()["services"][service]["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD", f"{service}: {test!r} is not exec form"
    return [str(part) for part in test[1:]]


def all_dockerfiles() -> list[Path]:
    """Every Dockerfile in the repository: the images and the example application's."""
    found = sorted(REPO.glob("deploy/*Dockerfile")) + sorted(REPO.glob("examples/**/Dockerfile"))
    return [p for p in found if ".venv" not in p.parts]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- compose files ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", [GPU_FILE, MONITORING_FILE, "combined"])
def test_compose_file_validates_against_compose_spec(which: str, tmp_path: Path) -> None:
    if which == "combined":
        path = tmp_path / "docker-compose.combined.yml"
        path.write_text(yaml.safe_dump(combined(), sort_keys=False), encoding="utf-8")
    else:
        path = REPO / which
    result = check_compose_schema(path)
    assert result.returncode == 0, f"{which}:\n{result.stdout}{result.stderr}"


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    # Guards the test above: the schema really is applied to what the files contain.
    data = load_compose(GPU_FILE)
    device = data["services"]["ollama"]["deploy"]["resources"]["reservations"]["devices"][0]
    device["capabilities"] = "gpu"  # must be a list
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = check_compose_schema(path)
    assert result.returncode != 0
    assert "capabilities" in result.stdout + result.stderr


def test_compose_files_combine_and_each_stands_alone() -> None:
    gpu, monitoring = load_compose(GPU_FILE), load_compose(MONITORING_FILE)
    shared = set(gpu["services"]) & set(monitoring["services"])
    assert not shared, f"both files define {sorted(shared)}: -f would silently merge them"
    assert combined()["services"].keys() == gpu["services"].keys() | monitoring["services"].keys()
    for name, data in ((GPU_FILE, gpu), (MONITORING_FILE, monitoring)):
        services = data["services"]
        volumes = set(data.get("volumes") or {})
        secrets = set(data.get("secrets") or {})
        for svc_name, svc in services.items():
            deps = svc.get("depends_on", [])
            missing = sorted(set(deps) - set(services))
            assert not missing, f"{name}: {svc_name} depends on {missing}, defined elsewhere"
            for source, _, _ in mounts(svc):
                if source and not is_host_path(source):
                    assert source in volumes, (
                        f"{name}: {svc_name} mounts undeclared volume {source}"
                    )
            for secret in svc.get("secrets", []):
                secret_name = secret if isinstance(secret, str) else secret["source"]
                assert secret_name in secrets, f"{name}: {svc_name} uses undeclared {secret_name}"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_mounted_or_built_path_exists_in_the_repository(name: str) -> None:
    data = load_compose(name)
    missing: list[str] = []
    for svc_name, svc in data["services"].items():
        wanted: list[str] = []
        build = svc.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            wanted.append(context)
            if isinstance(build, dict):
                wanted.append(str(Path(context) / build.get("dockerfile", "Dockerfile")))
        for source, _, _ in mounts(svc):
            if not is_host_path(source):
                continue
            if source.startswith("/"):
                assert source in HOST_PATHS, f"{name}: {svc_name} mounts host path {source}"
                continue
            wanted.append(source)
        for path in wanted:
            if not (REPO / path).exists():
                owner = next(
                    (o for p, o in OWNERS.items() if path.removeprefix("./").startswith(p)), ""
                )
                missing.append(f"{svc_name}: {path}" + (f" (owned by {owner})" if owner else ""))
    assert not missing, f"{name} references paths missing from the repository:\n" + "\n".join(
        missing
    )


def test_secret_files_are_gitignored_and_documented() -> None:
    # Secrets are created per host (so they need not exist here) and must never be committed.
    secrets = load_compose(MONITORING_FILE)["secrets"]
    readme = (REPO / "secrets" / "README.md").read_text(encoding="utf-8")
    for secret_name, spec in secrets.items():
        path = spec["file"].removeprefix("./")
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", path], cwd=REPO, capture_output=True, timeout=30
        )
        assert ignored.returncode == 0, f"{path} is not in .gitignore"
        assert Path(path).name in readme, f"secrets/README.md does not say how to create {path}"
        assert secret_name == Path(path).name


def test_services_are_wired_as_the_design_says() -> None:
    stack = combined()
    services = stack["services"]
    # Labels: containers are found by label, never by name (fleet_contract.labels).
    assert services["ollama"]["labels"] == {
        "model-fleet.fleet": "default",
        "model-fleet.role": "ollama",
    }
    assert services["app"]["labels"] == {"model-fleet.fleet": "default", "model-fleet.role": "app"}
    for svc_name in ("ollama", "exporter"):
        devices = services[svc_name]["deploy"]["resources"]["reservations"]["devices"]
        assert [(d["driver"], d["capabilities"]) for d in devices] == [("nvidia", ["gpu"])]
    assert services["ollama"]["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    assert services["exporter"]["pid"] == "host"

    def socket_mode(svc_name: str) -> bool | None:
        for source, target, read_only in mounts(services[svc_name]):
            if source == target == "/var/run/docker.sock":
                return read_only
        return None

    assert socket_mode("exporter") is True, "the exporter mounts the Docker socket read-only"
    assert socket_mode("remediator") is False, "the remediator restarts containers: read-write"

    # The app reads its model from a file the remediator can rewrite: same host directory.
    app_file = Path(services["app"]["environment"]["MODEL_ENV_FILE"])
    app_mount = next(m for m in mounts(services["app"]) if app_file.is_relative_to(m[1]))
    writer = [m for m in mounts(services["remediator"]) if m[0] == app_mount[0]]
    assert writer and not writer[0][2], "the remediator must mount the app's config read-write"
    host_file = REPO / app_mount[0] / app_file.relative_to(app_mount[1])
    assert host_file.is_file(), f"{host_file.relative_to(REPO)} is missing"

    # The token reaches the remediator and Alertmanager as the same secret file.
    token_env = services["remediator"]["environment"]["MODEL_FLEET_TOKEN_FILE"]
    assert token_env.startswith("/run/secrets/")
    secret = token_env.removeprefix("/run/secrets/")
    assert secret in services["remediator"]["secrets"]
    assert secret in services["alertmanager"]["secrets"]


def container_to_host(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository path a bind mount shows at ``container_path`` in the service, if any."""
    for source, target, _ in mounts(service):
        if is_host_path(source) and not source.startswith("/"):
            inside = Path(container_path)
            if inside == Path(target) or inside.is_relative_to(target):
                return REPO / source / inside.relative_to(target)
    return None


def load_owned(path: str) -> Any:
    """A YAML file another part of the project owns; fail clearly while it has not landed."""
    full = REPO / path
    owner = next((o for p, o in OWNERS.items() if path.startswith(p)), "another engineer")
    assert full.is_file(), f"{path} is missing (owned by {owner}; expected until it lands)"
    return yaml.safe_load(full.read_text(encoding="utf-8"))


def test_the_model_servers_log_rotates_at_sizes_that_keep_counts_exact() -> None:
    # docs/operations.md "Model server logging"; the sizes tests/test_exporter_rotation.py and
    # the simulator's loop use
    logging = combined()["services"]["ollama"]["logging"]
    assert logging == {
        "driver": MODEL_SERVER_LOG_CONFIG["type"],
        "options": MODEL_SERVER_LOG_CONFIG["config"],
    }


def test_prometheus_config_matches_the_compose_stack() -> None:
    services = combined()["services"]
    config = load_owned("monitoring/prometheus.yml")
    config_dir = "/etc/prometheus"
    loaded: set[Path] = set()
    for pattern in config.get("rule_files", []):
        inside = pattern if pattern.startswith("/") else f"{config_dir}/{pattern}"
        host = container_to_host(services["prometheus"], inside)
        assert host is not None, (
            f"rule_files {pattern}: not under a mount of the prometheus service"
        )
        # Without recursive=True, ** is *, as in Go's filepath.Glob that Prometheus uses.
        loaded |= {Path(p) for p in glob.glob(str(host))}
    rules = REPO / "alert_rules" / "model_fleet.rules.yml"
    assert rules in loaded, f"rule_files {config.get('rule_files')} do not load {rules.name}"
    assert not any("tests" in p.relative_to(REPO).parts for p in loaded), "loads promtool tests"

    def targets(jobs: list[dict[str, Any]]) -> set[str]:
        return {t for job in jobs for sc in job.get("static_configs", []) for t in sc["targets"]}

    scraped = targets(config.get("scrape_configs", []))
    for svc_name, port in (("exporter", 9842), ("remediator", 8080)):
        assert f"{svc_name}:{port}" in scraped, f"prometheus.yml does not scrape {svc_name}:{port}"
    alerting = targets(config.get("alerting", {}).get("alertmanagers", []))
    assert "alertmanager:9093" in alerting, f"alerts go to {sorted(alerting)}"


def test_alertmanager_config_sends_the_token_secret_to_the_remediator() -> None:
    services = combined()["services"]
    config = load_owned("monitoring/alertmanager.yml")
    hooks = [
        hook
        for receiver in config.get("receivers", [])
        for hook in receiver.get("webhook_configs", [])
        if hook.get("url") == "http://remediator:8080/webhook/alertmanager"
    ]
    assert hooks, "no webhook_config posts to http://remediator:8080/webhook/alertmanager"
    for hook in hooks:
        auth = hook.get("http_config", {}).get("authorization", {})
        assert "credentials" not in auth, "the token must come from the secret, not the file"
        path = auth.get("credentials_file", "")
        assert path.removeprefix("/run/secrets/") in services["alertmanager"]["secrets"], path


def test_grafana_provisioning_matches_the_compose_stack() -> None:
    grafana = combined()["services"]["grafana"]
    root = "grafana/provisioning"
    load_owned(f"{root}/datasources/prometheus.yml")
    datasources = [
        ds
        for f in sorted((REPO / root / "datasources").glob("*.y*ml"))
        for ds in load_owned(str(f.relative_to(REPO))).get("datasources", [])
    ]
    assert any(ds.get("url") == "http://prometheus:9090" for ds in datasources), datasources
    providers = load_owned(f"{root}/dashboards/model-fleet.yml").get("providers", [])
    paths = [container_to_host(grafana, p["options"]["path"]) for p in providers]
    assert any(p is not None and (p / "model-fleet.json").is_file() for p in paths), (
        f"no dashboard provider path shows grafana/dashboards/model-fleet.json: {paths}"
    )


def test_compose_config_file_fits_the_stack() -> None:
    # config/model-fleet.yaml is what the remediator container loads: its default fleet must
    # reach Ollama by service name, rewrite the app's model.env through the remediator's
    # mount, and watch the GPU Ollama reserves.
    from remediator.config import ConfigError, load_config

    services = combined()["services"]
    remediator_svc = services["remediator"]
    inside = remediator_svc["environment"]["MODEL_FLEET_CONFIG"]
    host = container_to_host(remediator_svc, inside)
    assert host == REPO / "config" / "model-fleet.yaml", f"{inside} is not config/model-fleet.yaml"
    try:
        config = load_config(host)
    except ConfigError as exc:
        pytest.fail(f"the remediator container would not start: {exc}")
    fleet = config.fleets.get("default")
    assert fleet is not None, f"no fleet 'default' (the compose labels say default): {config}"
    assert (fleet.server.kind, fleet.server.url) == ("ollama", "http://ollama:11434")
    gpu_ids = services["ollama"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
    default_gpu = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", gpu_ids[0])
    assert fleet.gpu == default_gpu, f"fleet gpu {fleet.gpu}, Ollama reserves GPU {default_gpu}"
    assert fleet.app_config, "no app_config target: a switch would not tell the app"
    for target in fleet.app_config:
        host_file = container_to_host(remediator_svc, target.path)
        assert host_file is not None and host_file.is_file(), f"{target.path} is not mounted"
        assert (target.format, target.key) == ("env", "OLLAMA_MODEL")
        text = host_file.read_text(encoding="utf-8")
        assert f"OLLAMA_MODEL={fleet.ladder[0].name}" in text, f"{host_file} starts elsewhere"


def test_the_exporter_reads_the_same_config_file_and_polls_the_stacks_server() -> None:
    # Without the file the exporter would poll its default 127.0.0.1:11434: itself.
    from exporter.config import load_config

    services = combined()["services"]
    exporter_svc, remediator_svc = services["exporter"], services["remediator"]
    inside = exporter_svc["environment"]["MODEL_FLEET_CONFIG"]
    host = container_to_host(exporter_svc, inside)
    assert host == container_to_host(
        remediator_svc, remediator_svc["environment"]["MODEL_FLEET_CONFIG"]
    )
    assert host is not None
    [(_, _, read_only)] = [m for m in mounts(exporter_svc) if m[1] == inside]
    assert read_only, "the exporter only reads the config"
    config = load_config(host)
    assert [(t.fleet, t.url) for t in config.servers] == [("default", "http://ollama:11434")]
    assert config.server_poll_seconds > 0


# --- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", all_dockerfiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_found() -> None:
    found = {str(p.relative_to(REPO)) for p in all_dockerfiles()}
    assert found == {DOCKERFILE, "examples/app/Dockerfile"}, "one image for both services"


def test_one_image_serves_both_services() -> None:
    path = REPO / DOCKERFILE
    words = [word for word, _ in dockerfile_instructions(path)]
    # The compose service names the command: the image must not pin one with an ENTRYPOINT,
    # nor a HEALTHCHECK that fits only one of them.
    assert "ENTRYPOINT" not in words and "HEALTHCHECK" not in words
    assert set(instruction(path, "EXPOSE").split()) == {str(p) for _, p in SERVICES.values()}
    user = instruction(path, "USER").split(":")[0]
    assert user not in ("root", "0"), f"{DOCKERFILE}: the image runs as root"
    builders = {
        name
        for name, svc in combined()["services"].items()
        if isinstance(svc.get("build"), dict) and svc["build"].get("dockerfile") == DOCKERFILE
    }
    assert builders == set(SERVICES), f"{DOCKERFILE} is built by {sorted(builders)}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_runs_its_console_script_from_the_image(service: str) -> None:
    script, port = SERVICES[service]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert script in scripts, f"{script} is not in [project.scripts] ({sorted(scripts)})"
    svc = combined()["services"][service]
    # Built from the repository root, one tag for both (and the version's, with the version
    # and commit scripts/up passes), the service's command and port.
    assert svc["build"] == {
        "context": ".",
        "dockerfile": DOCKERFILE,
        "args": {
            "MODEL_FLEET_VERSION": "${MODEL_FLEET_VERSION:-unknown}",
            "MODEL_FLEET_REVISION": "${MODEL_FLEET_REVISION:-unknown}",
        },
        "tags": ["model-fleet/model-fleet:${MODEL_FLEET_VERSION:-unknown}"],
    }
    assert svc["image"] == IMAGE
    assert svc["command"] == [script, "serve", "--bind", f"0.0.0.0:{port}"]
    assert f"{port}:{port}" in svc["ports"]
    check = healthcheck_command(service)
    assert check[:2] == ["python", "-c"] and f"127.0.0.1:{port}/healthz" in check[2]


def test_only_the_remediator_runs_as_root() -> None:
    # The image is unprivileged; the remediator rewrites operator-owned files (see its comment).
    services = combined()["services"]
    assert services["remediator"].get("user") == "root"
    assert "user" not in services["exporter"], "the exporter needs no root"
    state = [t for s, t, _ in mounts(services["remediator"]) if s == "model-fleet-state"]
    assert state == ["/var/lib/model-fleet"]
    assert services["remediator"]["environment"]["MODEL_FLEET_STATE_FILE"].startswith(state[0])


class _HealthzHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_healthcheck_command_follows_healthz(service: str) -> None:
    _, port = SERVICES[service]
    code = healthcheck_command(service)[2]
    test_port = free_port()
    # The same command, pointed at a port this test owns.
    code = code.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{test_port}/")

    def run_check() -> int:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=30
        ).returncode

    assert run_check() != 0, "healthy with nothing listening"

    class Handler(_HealthzHandler):
        status = 200

    handler = Handler
    server = http.server.ThreadingHTTPServer(("127.0.0.1", test_port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert run_check() == 0, "unhealthy although /healthz answers 200"
        handler.status = 503
        assert run_check() != 0, "healthy although /healthz answers 503"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def token_file_present() -> Iterator[Path]:
    """secrets/model_fleet_token, created for the test when the host has none yet."""
    path = REPO / "secrets" / "model_fleet_token"
    created = not path.exists()
    if created:
        path.write_text("test-token-that-must-stay-out-of-images\n", encoding="utf-8")
    try:
        yield path
    finally:
        if created:
            path.unlink(missing_ok=True)


@pytest.mark.docker
def test_build_context_holds_only_the_package_sources(
    busybox_image: str, token_file_present: Path
) -> None:
    # The real engine applies .dockerignore to the repository root, as `docker build .` and
    # compose do for the image; copy the whole context into a busybox image and list it.
    tag = f"model-fleet-test/context:{uuid.uuid4().hex[:10]}"
    build = subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-f", "-", "."],
        input=f"FROM {busybox_image}\nCOPY . /ctx\n",
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    try:
        listing = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--label",
                f"{docker_env.TEST_LABEL}={docker_env.RUN_ID}",
                tag,
                "find",
                "/ctx",
                "-type",
                "f",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0, listing.stderr
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)
    files = {line.removeprefix("/ctx/") for line in listing.stdout.split()}
    allowed = re.compile(
        r"(pyproject\.toml|README\.md|(fleet_contract|fleet_exposition|remediator|exporter)/.+)"
    )
    extra = sorted(f for f in files if not allowed.fullmatch(f) or "__pycache__" in f)
    assert not extra, f".dockerignore lets these into the image build context: {extra}"
    assert "secrets/model_fleet_token" not in files
    # Every file or directory the image COPYs from the context is in it.
    copied = set()
    for word, args in dockerfile_instructions(REPO / DOCKERFILE):
        if word != "COPY" or args.startswith("--from"):
            continue
        for source in shlex.split(args)[:-1]:
            source = source.rstrip("/")
            copied.add(source)
            present = source in files or any(f.startswith(source + "/") for f in files)
            owner = OWNERS.get(source, "")
            assert present, f"{DOCKERFILE} copies {source}, not in the context " + (
                f"(owned by {owner}; expected until it lands)" if owner else ""
            )
    # ... and the packages the image installs are all copied.
    packages = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]["packages"]
    assert {p.split(".")[0] for p in packages} <= copied


# --- the example application ------------------------------------------------------------------


class _FakeOllama(http.server.BaseHTTPRequestHandler):
    """Stand-in for Ollama's /api/generate: knows two models, records what was asked."""

    known = ("llama3.2:3b", "phi3:mini")
    asked: list[str] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.asked.append(body["model"])
        if body["model"] in self.known:
            status, answer = 200, {"model": body["model"], "response": f"hi from {body['model']}"}
        else:
            status, answer = 404, {"error": f"model '{body['model']}' not found"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_example_app_reads_the_model_file_on_every_request(tmp_path: Path) -> None:
    shipped = (REPO / "examples" / "app" / "model.env").read_text(encoding="utf-8")
    model_file = tmp_path / "model.env"
    model_file.write_text(shipped, encoding="utf-8")

    class Ollama(_FakeOllama):
        asked: list[str] = []

    handler = Ollama
    ollama = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=ollama.serve_forever, daemon=True).start()
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODEL_ENV_FILE": str(model_file),
        "OLLAMA_URL": f"http://127.0.0.1:{ollama.server_address[1]}",
    }
    app = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "app" / "app.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                status, body = _get(f"{base}/healthz")
                break
            except urllib.error.URLError:
                assert app.poll() is None, f"the app exited: {app.stdout.read()!r}"  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the app did not answer within 15 s"
                time.sleep(0.1)
        # The shipped file names the top of the default ladder.
        assert (status, body) == (200, {"model": "llama3.2:3b"})
        assert _get(f"{base}/?prompt=hi") == (
            200,
            {"model": "llama3.2:3b", "response": "hi from llama3.2:3b"},
        )

        # Replaced the way the remediator writes it (new file renamed over the old one).
        staged = tmp_path / "model.env.tmp"
        staged.write_text(shipped.replace("llama3.2:3b", "phi3:mini"), encoding="utf-8")
        staged.replace(model_file)
        assert _get(f"{base}/?prompt=hi")[1]["model"] == "phi3:mini"

        model_file.write_text("OLLAMA_MODEL=qwen2.5:0.5b\n", encoding="utf-8")
        status, body = _get(f"{base}/?prompt=hi")
        assert status == 502 and "not found" in body["error"], body
        assert handler.asked == ["llama3.2:3b", "phi3:mini", "qwen2.5:0.5b"]

        model_file.write_text("# no model here\n", encoding="utf-8")
        status, body = _get(f"{base}/healthz")
        assert status == 500 and "OLLAMA_MODEL" in body["error"], body
    finally:
        app.terminate()
        app.wait(timeout=10)
        ollama.shutdown()
        ollama.server_close()


def test_start_interval_file_merges_onto_every_health_checked_service() -> None:
    """deploy/compose.start-interval.yml names only shipped services, each with a health check,
    and Compose v2 merges it (scripts/up adds it on Engine 25+)."""
    extra = load_compose("deploy/compose.start-interval.yml")
    stack = combined()["services"]
    assert set(extra["services"]) <= set(stack)
    # The example app has its check in its Dockerfile (HEALTHCHECK).
    in_image = {"app"}
    for name in extra["services"]:
        assert "healthcheck" in stack[name] or name in in_image, f"{name}: no health check"
    files = [*COMPOSE_FILES, "deploy/compose.start-interval.yml"]
    args = [a for f in files for a in ("-f", str(REPO / f))]
    env = {**os.environ, "DOCKER_GID": "999"}
    done = subprocess.run(
        [*compose_command(), *args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)["services"]
    for name in extra["services"]:
        assert merged[name]["healthcheck"]["start_interval"] == "1s", name


def test_move_file_gives_the_remediator_the_env_file_a_move_rewrites(tmp_path: Path) -> None:
    """deploy/compose.move.yml merges onto the stack (Compose v2): the remediator sees the
    project directory, .env included, at /compose, where a fleet's gpu_config names it; and the
    ollama service takes its GPU from that file's MODEL_FLEET_GPU."""
    files = [*COMPOSE_FILES, "deploy/compose.move.yml"]
    args = [a for f in files for a in ("-f", str(REPO / f))]
    env_file = tmp_path / ".env"
    env_file.write_text("DOCKER_GID=999\nMODEL_FLEET_GPU=1\n")
    done = subprocess.run(
        [*compose_command(), *args, "--env-file", str(env_file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")},
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    binds = {(v["source"], v["target"]) for v in services["remediator"]["volumes"]}
    assert (str(REPO), "/compose") in binds
    device = services["ollama"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["device_ids"] == ["1"]
    config = parse_config(
        {
            "fleets": {
                "default": {
                    "gpus": [0, 1],
                    "placement": "move_first",
                    "gpu_config": [{"path": "/compose/.env"}],
                }
            }
        }
    )
    [target] = config.fleets["default"].gpu_config
    assert (target.path, target.format, target.key) == ("/compose/.env", "env", "MODEL_FLEET_GPU")
