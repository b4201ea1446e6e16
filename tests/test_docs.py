"""The docs match the code: every metric, label, environment variable, config key and Docker
label the docs name exists, every one the code has is documented, every alert has its runbook,
every relative link resolves, and the README stays a front page.

The names come from the code itself (``fleet_contract``, the two ``CONFIG_KEYS``, the alert
rules), never from a copy; the docs' tables are parsed as GitHub renders them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import CONFIG_KEYS as EXPORTER_KEYS
from fleet_contract import labels
from fleet_contract.env import ENV_VARS
from fleet_contract.errors import ERROR_KINDS
from fleet_contract.metrics import COMMON_LABELS, METRICS
from remediator.config import CONFIG_KEYS as REMEDIATOR_KEYS
from remediator.config import DEPRECATED_KEYS, default_config
from remediator.report import queries
from remediator.store.state import StateStore
from simulator.prom_env import (
    RULES_FILE,
    render_prometheus_config,
    start_prometheus,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
ALL_DOCS = [README, *sorted(DOCS.glob("*.md"))]
ARCHITECTURE = DOCS / "architecture.md"
CONFIGURATION = DOCS / "configuration.md"
OPERATIONS = DOCS / "operations.md"
PROMETHEUS_CONFIG = REPO / "monitoring" / "prometheus.yml"

README_MAX_LINES = 250
RUNBOOK_BASE = "{{ $externalLabels.runbook_base_url }}"
RUNBOOK_PATH = "/docs/operations.md#"
# Words shaped like metric names that are not metrics: the compose secret holding the token.
NOT_METRICS = {"model_fleet_token"}
# File extensions: `app.env`, `docker.sock`, `server.py` are files, not config keys.
# (and systemd: ollama.service, the polkit rule model-fleet.rules, sysusers, sudoers, conf)
FILE_SUFFIXES = {
    "env",
    "json",
    "yaml",
    "yml",
    "txt",
    "py",
    "md",
    "lock",
    "toml",
    "sock",
    "so",
    "service",
    "rules",
    "sysusers",
    "sudoers",
    "conf",
}
CONFIG_KEYS = REMEDIATOR_KEYS | EXPORTER_KEYS


# --- reading markdown as GitHub renders it ---------------------------------------------------


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _without_code(markdown: str) -> str:
    """The markdown with fenced code blocks blanked (a `#` comment there is no heading)."""
    return re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)


def _code_blocks(markdown: str, lang: str | None = None) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)
    return [body for kind, body in blocks if lang is None or kind == lang]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", _without_code(markdown), flags=re.MULTILINE)
    return {_slug(h) for h in headings}


def _section(path: Path, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    lines = _without_code(_text(path)).splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(#{1,6})\s+(.+?)\s*$", line)
        if match and match.group(2) == heading:
            level = len(match.group(1))
            body = []
            for rest in lines[i + 1 :]:
                found = re.match(r"^(#{1,6})\s", rest)
                if found and len(found.group(1)) <= level:
                    break
                body.append(rest)
            return "\n".join(body)
    raise AssertionError(f"{path.relative_to(REPO)} has no heading {heading!r}")


def _table(section: str) -> list[list[str]]:
    """The first table of ``section``: its body rows, as cells (an escaped `\\|` stays a `|`)."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        rows.append(cells)
    assert rows, "no table"
    return rows[1:]  # without the header


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _all_docs() -> Iterator[tuple[Path, str]]:
    for path in ALL_DOCS:
        yield path, _text(path)


# --- the README ------------------------------------------------------------------------------


def _commands(block: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    return [line for line in lines if line]


def test_readme_is_a_short_front_page() -> None:
    lines = _text(README).splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_readme_opens_with_the_two_commands_then_the_gpu_host_command() -> None:
    first, second, *_ = _code_blocks(_text(README))
    assert _commands(first) == ["scripts/demo", "scripts/test"]
    assert _commands(second) == ["scripts/up"]


def test_readme_links_every_doc() -> None:
    readme = _text(README)
    for path in sorted(DOCS.glob("*.md")):
        assert f"(docs/{path.name})" in readme, f"README.md does not link docs/{path.name}"


# --- metrics ---------------------------------------------------------------------------------


def _kind(spec: Any) -> str:
    return str(getattr(spec.kind, "value", spec.kind))


def _exposed(spec: Any) -> str:
    """The name Prometheus sees: counters end in _total."""
    if _kind(spec) == "counter" and not spec.name.endswith("_total"):
        return f"{spec.name}_total"
    return str(spec.name)


def _metric_names() -> dict[str, Any]:
    """Every name a query may use, to its spec (a histogram's series included)."""
    names = {}
    for spec in METRICS:
        names[_exposed(spec)] = spec
        if _kind(spec) == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[f"{spec.name}{suffix}"] = spec
    return names


def test_metric_table_is_the_contract() -> None:
    documented = {}
    for row in _table(_section(ARCHITECTURE, "Metrics")):
        [name] = _ticked(row[0])
        assert name not in documented, f"{name} is in the table twice"
        documented[name] = (row[1], set(_ticked(row[2])), row[3])
    expected = {
        _exposed(s): (_kind(s), set(s.labels), str(getattr(s.service, "value", s.service)))
        for s in METRICS
    }
    assert documented.keys() == expected.keys(), (
        f"missing from docs/architecture.md: {sorted(expected.keys() - documented.keys())}; "
        f"not in fleet_contract.metrics: {sorted(documented.keys() - expected.keys())}"
    )
    for name, row in documented.items():
        assert row == expected[name], f"{name}: docs say {row}, the code {expected[name]}"


def test_docs_name_only_metrics_and_labels_the_code_has() -> None:
    known = _metric_names()
    pattern = re.compile(r"\b(model_fleet_[a-z0-9_]+)(?![a-z0-9_]|\.json)(\{[^}]*\})?")
    for path, text in _all_docs():
        for match in pattern.finditer(text):
            name, selector = match.group(1), match.group(2)
            if name in NOT_METRICS:
                continue
            where = f"{path.relative_to(REPO)}: {match.group(0)}"
            assert name in known, f"{where}: no such metric"
            if selector:
                used = set(re.findall(r"(?:^|,)\s*([A-Za-z_]\w*)", selector[1:-1]))
                labels = {*known[name].labels, *COMMON_LABELS}  # host: on every sample
                assert used <= labels, f"{where}: labels {sorted(used)}"


# --- environment variables -------------------------------------------------------------------


def _script_variables() -> set[str]:
    """MODEL_FLEET_* names the scripts and compose files read (not the services' contract)."""
    files = [*REPO.glob("scripts/**/*"), *REPO.glob("docker-compose*.yml")]
    found: set[str] = set()
    for path in files:
        if path.is_file():
            found |= set(re.findall(r"\bMODEL_FLEET_[A-Z0-9_]+", _text(path)))
    return found


def test_env_table_is_the_contract() -> None:
    rows = _table(_section(ARCHITECTURE, "Environment variables"))
    documented = {_ticked(row[0])[0]: {r.strip() for r in row[1].split(",")} for row in rows}
    assert len(documented) == len(rows), "a variable is in the table twice"
    assert documented == {v.name: set(v.used_by) for v in ENV_VARS}


def test_docs_name_only_env_variables_the_code_reads() -> None:
    known = {v.name for v in ENV_VARS} | _script_variables()
    for path, text in _all_docs():
        unknown = set(re.findall(r"\bMODEL_FLEET_[A-Z0-9_]+", text)) - known
        assert not unknown, f"{path.relative_to(REPO)} names unknown variables {sorted(unknown)}"


# --- configuration keys ----------------------------------------------------------------------


def _segments(key: str) -> tuple[str, ...]:
    """``fleets.*.ladder[].name`` -> (fleets, *, ladder, [], name)."""
    return tuple(s for s in re.split(r"\.|(\[\])", key) if s)


def _closure(keys: Iterable[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """Every key with all its parents: a doc may show a parent, a code set only the leaves."""
    return {key[:n] for key in keys for n in range(1, len(key) + 1)}


def _flatten(value: Any, prefix: tuple[str, ...], code: set[tuple[str, ...]]) -> Iterator[tuple]:
    """Key paths of the reference YAML, named as CONFIG_KEYS names them.

    Where the code names a key ``*`` (a fleet's name, a container name) the document's own
    name becomes ``*``; where the code stops (a free-form mapping such as ``exporter.labels``)
    the document's keys below are examples, not keys.
    """
    if prefix:
        yield prefix
    if prefix and not any(len(k) > len(prefix) and k[: len(prefix)] == prefix for k in code):
        return
    if isinstance(value, dict):
        wildcard = (*prefix, "*") in code
        for key, item in value.items():
            yield from _flatten(item, (*prefix, "*" if wildcard else str(key)), code)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) or (*prefix, "[]") in code:
                yield from _flatten(item, (*prefix, "[]"), code)


def _deprecated_keys() -> dict[str, str]:
    rows = _table(_section(CONFIGURATION, "Deprecated keys"))
    return {_ticked(row[0])[0]: _ticked(row[1])[0] for row in rows}


def test_deprecated_key_table_is_the_parsers() -> None:
    assert _deprecated_keys() == dict(DEPRECATED_KEYS)


def _dotted(keys: Iterable[tuple[str, ...]]) -> list[str]:
    return sorted(".".join(k).replace(".[]", "[]") for k in keys)


def test_config_reference_lists_every_key_the_code_accepts() -> None:
    code = _closure(_segments(k) for k in CONFIG_KEYS)
    [reference, *_] = _code_blocks(_text(CONFIGURATION), "yaml")
    documented = set(_flatten(yaml.safe_load(reference), (), code))
    deprecated = {_segments(k) for k in _deprecated_keys()}
    assert not documented & deprecated, "the reference block shows deprecated keys"
    documented = _closure(documented | deprecated)
    assert not documented - code, (
        f"docs/configuration.md: unknown keys {_dotted(documented - code)}"
    )
    assert not code - documented, f"docs/configuration.md misses keys {_dotted(code - documented)}"


def test_docs_name_only_config_keys_the_code_accepts() -> None:
    """A dotted key in backticks (`auto_upgrade.quiet_seconds`) is a run of some key's path."""
    paths = {tuple(s for s in _segments(k) if s != "[]") for k in CONFIG_KEYS}
    segments = {s for path in paths for s in path}

    def known(parts: tuple[str, ...]) -> bool:
        n = len(parts)
        return any(p[i : i + n] == parts for p in paths for i in range(len(p) - n + 1))

    for path, text in _all_docs():
        for token in re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", text):
            parts = tuple(token.split("."))
            module = REPO / parts[0] / f"{parts[1]}.py"
            if parts[0] not in segments or parts[-1] in FILE_SUFFIXES or module.exists():
                continue
            assert known(parts), f"{path.relative_to(REPO)}: `{token}` is no configuration key"


# --- Docker labels and error kinds -----------------------------------------------------------


def test_label_table_is_the_contract() -> None:
    rows = _table(_section(ARCHITECTURE, "Docker labels"))
    documented = {_ticked(row[0])[0]: row[1] for row in rows}
    assert set(documented) == {
        f"{labels.FLEET_LABEL}=<name>",
        f"{labels.ROLE_LABEL}={labels.ROLE_SERVER}",
        f"{labels.ROLE_LABEL}={labels.ROLE_APP}",
    }
    assert f"`{labels.DEFAULT_FLEET}`" in documented[f"{labels.FLEET_LABEL}=<name>"]


def test_docs_name_only_the_contracts_docker_labels() -> None:
    names = {labels.FLEET_LABEL, labels.ROLE_LABEL}
    roles = {labels.ROLE_SERVER, labels.ROLE_APP}
    for path, text in _all_docs():
        where = path.relative_to(REPO)
        for name in re.findall(r"\bmodel-fleet\.[a-z]+(?![a-z.])", text):
            if name.rsplit(".", 1)[1] not in FILE_SUFFIXES:
                assert name in names, f"{where}: unknown Docker label {name}"
        for role in re.findall(rf"{re.escape(labels.ROLE_LABEL)}[=:] ?(\w+)", text):
            assert role in roles, f"{where}: unknown role {role}"


def test_error_kind_table_is_the_contract() -> None:
    rows = _table(_section(ARCHITECTURE, "Error kinds"))
    documented = {_ticked(row[0])[0]: set(_ticked(row[1])) for row in rows}
    expected = {kind.name: set(kind.default_patterns) for kind in ERROR_KINDS}
    assert documented == expected


# --- the status JSON -------------------------------------------------------------------------


def test_status_table_and_example_name_every_key_the_status_has(tmp_path: Path) -> None:
    config = dataclasses.replace(default_config(), state_file=tmp_path / "state.json")
    keys = set(queries.status(config, StateStore(config), None))
    rows = _table(_section(ARCHITECTURE, "Status JSON"))
    documented = {key for row in rows for key in _ticked(row[0])}
    assert documented == keys
    [example] = [b for b in _code_blocks(_text(OPERATIONS), "json") if '"current_model"' in b]
    assert set(json.loads(example)) == keys


# --- runbooks --------------------------------------------------------------------------------


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES_FILE.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_links_its_runbook_section(rule: dict[str, Any]) -> None:
    url = rule["annotations"]["runbook_url"]
    anchor = f"runbook-{rule['alert'].lower()}"
    assert url == f"{RUNBOOK_BASE}{RUNBOOK_PATH}{anchor}"
    assert anchor in _anchors(_text(OPERATIONS)), f"docs/operations.md has no #{anchor}"


def test_every_runbook_is_for_an_alert_that_exists() -> None:
    alerts = {rule["alert"] for rule in _alert_rules()}
    runbooks = re.findall(r"^### Runbook: (\S+)\s*$", _text(OPERATIONS), flags=re.MULTILINE)
    assert sorted(runbooks) == sorted(alerts)


def test_runbook_base_url_is_one_external_label() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    base = config["global"]["external_labels"]["runbook_base_url"]
    assert re.fullmatch(r"https?://[^\s]+[^/]", base), base


def test_a_real_prometheus_fills_in_the_runbook_base_url(tmp_path: Path) -> None:
    """promtool 2.42 has no external labels in its unit tests: check the template for real."""
    rules = [
        {
            "alert": rule["alert"],
            "expr": "vector(1)",
            "labels": rule.get("labels", {}),
            "annotations": {"runbook_url": rule["annotations"]["runbook_url"]},
        }
        for rule in _alert_rules()
    ]
    rule_file = tmp_path / "runbooks.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "runbooks", "rules": rules}]}))
    config = render_prometheus_config(exporter="127.0.0.1:1", remediator="127.0.0.1:1")
    base = config["global"]["external_labels"]["runbook_base_url"]
    with start_prometheus(config, [rule_file]) as prom:

        def all_firing() -> list[dict[str, Any]] | None:
            alerts = prom.firing_alerts()
            return alerts if len(alerts) == len(rules) else None

        firing = wait_for(all_firing, 30, "every rule firing")
    urls = {a["labels"]["alertname"]: a["annotations"]["runbook_url"] for a in firing}
    assert urls == {r["alert"]: f"{base}{RUNBOOK_PATH}runbook-{r['alert'].lower()}" for r in rules}


# --- links and citations ---------------------------------------------------------------------


def test_every_relative_link_resolves() -> None:
    for path, text in _all_docs():
        for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(text)):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO)}: ({target})"
            assert linked.exists(), f"{where}: no such file"
            assert linked.is_relative_to(REPO), f"{where}: outside the repository"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(_text(linked)), f"{where}: no such anchor"


def _project_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [REPO / name for name in listed.split("\0") if name and (REPO / name).is_file()]


def test_no_file_cites_the_retired_design_document() -> None:
    retired = "DESIGN" + ".md"  # spelled apart, so that this file does not cite it either
    citing = []
    for path in _project_files():
        try:
            if retired in path.read_text(encoding="utf-8"):
                citing.append(str(path.relative_to(REPO)))
        except UnicodeDecodeError:
            continue
    assert not citing, f"cite {retired} (its content is in docs/): {citing}"


# --- Windows ---------------------------------------------------------------------------------

WINDOWS = "Windows (Docker Desktop with WSL 2)"


def _windows_section() -> str:
    text = _text(README)
    start = text.index(f"## {WINDOWS}")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_windows_section_runs_what_the_linux_quick_start_runs() -> None:
    section = _windows_section()
    [block] = _code_blocks(section, "sh")
    commands = _commands(block)
    # The same GPU checks as on Linux: the driver in WSL, then the GPU in a container.
    linux = _section(README, "Quick start on a GPU host")
    check = "docker run --rm --gpus all ubuntu nvidia-smi"
    assert check in linux and check in commands and "nvidia-smi" in commands
    # Every scripts/ command exists, with only options the script's usage line accepts.
    usage = (REPO / "scripts" / "up").read_text().split("# usage: scripts/up ", 1)[1]
    accepted = set(re.findall(r"--[a-z]+", usage.splitlines()[0]))
    scripts = [c for c in commands if c.startswith("scripts/")]
    assert scripts, commands
    for command in scripts:
        name, *options = command.split()
        assert (REPO / name).is_file(), name
        assert set(options) <= accepted, command
    # Run from the WSL shell, cloned inside the WSL filesystem.
    assert "WSL shell" in section and "/mnt/c" in section
    assert not any("/mnt/" in c for c in commands)


def test_readme_windows_section_names_only_settings_that_exist() -> None:
    section = _windows_section()
    compose = "".join(
        (REPO / f).read_text() for f in ("docker-compose.gpu.yml", "docker-compose.monitoring.yml")
    )
    env_writer = (REPO / "scripts" / "up").read_text()
    names = set(re.findall(r"`([A-Z][A-Z0-9_]+)[`=]", section))
    names |= set(re.findall(r"\b([A-Z][A-Z0-9_]+)=\$", section))
    assert {"MODEL_FLEET_GPU", "DOCKER_GID"} <= names
    for name in names:
        # A compose variable the .env that scripts/up writes sets.
        assert "${" + name in compose and f"\n{name}=" in env_writer, name
    # What the GPU-process note says is how the compose file runs the exporter.
    assert "pid: host" in section and "pid: host" in compose
    assert "/var/run/docker.sock:/var/run/docker.sock" in compose
    # DOCKER_GID given in the environment wins over the socket's group (scripts/up --help).
    assert "DOCKER_GID                    used for .env instead of the socket's group" in env_writer
