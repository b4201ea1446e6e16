"""The exporter's part of model-fleet.yaml read into its types: the ``exporter:`` section, and
what it needs of the fleets (exporter.config.fleets). Errors name the file and the key.

The exporter parses the file itself (it never imports the remediator; both read it with
fleet_contract.yamlfile); command-line flags override the result (exporter.cli).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Final

from exporter.classifier import DEFAULT_PATTERNS, PatternError
from exporter.config.fleets import FLEET_KEYS, parse_fleets, unit_name
from exporter.config.model import (
    DEFAULT_UNIT,
    LOG_SOURCES,
    ContainerSelection,
    ExporterConfig,
    parse_bind,
)
from exporter.config.reader import Reader
from fleet_contract.env import HOST as HOST_ENV
from fleet_contract.hosts import resolve_host
from fleet_contract.yamlfile import config_path, load_yaml

__all__ = ["CONFIG_KEYS", "load_config", "parse_config"]

_EXPORTER_KEYS: Final = frozenset(
    {
        "bind",
        "labels",
        "use_labels",
        "containers",
        "fleet_label",
        "default_fleet",
        "patterns",
        "default_patterns",
        "case_sensitive",
        "incident_window_seconds",
        "nvml",
        "docker",
        "logs",
        "proc_root",
        "server_poll_seconds",
    }
)
_LOGS_KEYS: Final = frozenset({"source", "unit"})
# Every key path this parser reads ("*": a fleet name); the docs test checks the docs against it.
CONFIG_KEYS: Final = frozenset(
    {"host"}  # the `host` label of every metric (fleet_contract.hosts)
    | {f"exporter.{key}" for key in _EXPORTER_KEYS}
    | {f"exporter.logs.{key}" for key in _LOGS_KEYS}
    | {f"fleets.*.{key}" for key in FLEET_KEYS}
)
_KIND_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_config(data: Any, source: str = "<config>") -> ExporterConfig:
    """Build the exporter's config from a parsed model-fleet.yaml; raise ConfigError."""
    r = Reader(source)
    top = r.mapping(data, "top level")
    ex = r.mapping(top.get("exporter"), "exporter", _EXPORTER_KEYS)
    d = ExporterConfig()
    bind = r.string(ex, "bind", "exporter", d.bind)
    try:
        parse_bind(bind)
    except ValueError as exc:
        raise r.fail("exporter.bind", str(exc)) from exc
    fleets = parse_fleets(r, top.get("fleets"))
    default_fleet = r.string(ex, "default_fleet", "exporter", d.selection.default_fleet)
    names = _parse_containers(r, ex.get("containers"), fleets.names, default_fleet)
    log_source = _parse_logs(r, ex.get("logs"), fleets.units, default_fleet)
    if log_source == "journald":  # units are selected by name: no labels
        names = fleets.units
        ex = {**ex, "use_labels": False}
    # Labels are on by default; fleets that all turned them off turn them off here too.
    labels_default = not fleets.use_labels or any(fleets.use_labels)
    selection = _parse_selection(r, ex, names, default_fleet, labels_default=labels_default)
    patterns = _parse_patterns(
        r, ex.get("patterns"), keep_defaults=r.boolean(ex, "default_patterns", "exporter", True)
    )
    config = ExporterConfig(
        bind=bind,
        selection=selection,
        patterns=patterns,
        case_sensitive=r.boolean(ex, "case_sensitive", "exporter", d.case_sensitive),
        incident_window_seconds=_window(
            r, ex.get("incident_window_seconds", d.incident_window_seconds)
        ),
        nvml=r.boolean(ex, "nvml", "exporter", d.nvml),
        docker=r.boolean(ex, "docker", "exporter", d.docker),
        log_source=log_source,
        proc_root=r.string(ex, "proc_root", "exporter", d.proc_root),
        servers=tuple(fleets.servers) if top.get("fleets") is not None else d.servers,
        server_poll_seconds=r.number(ex, "server_poll_seconds", "exporter", d.server_poll_seconds),
        source=source,
        host=resolve_host(top.get("host"), source, os.environ.get(HOST_ENV)),
    )
    try:
        config.classifier()
    except PatternError as exc:
        raise r.fail("exporter.patterns", f"invalid regular expression {exc}") from exc
    return config


def _parse_containers(
    r: Reader, extra: Any, names: dict[str, str], default_fleet: str
) -> dict[str, str]:
    """``exporter.containers`` (names, or name -> fleet) added to the fleets' ``names``."""
    if isinstance(extra, dict):
        for name, fleet in extra.items():
            if not isinstance(name, str) or not isinstance(fleet, str) or not fleet:
                raise r.fail(
                    f"exporter.containers.{name}", f"must map a name to a fleet, got {fleet!r}"
                )
            names[name] = fleet
    else:
        for name in r.names(extra, "exporter.containers"):
            names[name] = default_fleet
    return names


def _parse_selection(
    r: Reader,
    ex: Mapping[str, Any],
    names: dict[str, str],
    default_fleet: str,
    *,
    labels_default: bool,
) -> ContainerSelection:
    d = ContainerSelection()
    labels = r.mapping(ex.get("labels", dict(d.labels)), "exporter.labels")
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str | int | bool):
            raise r.fail(f"exporter.labels.{k}", f"must map a label to a value, got {v!r}")
    return ContainerSelection(
        labels={
            str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in labels.items()
        },
        use_labels=r.boolean(ex, "use_labels", "exporter", labels_default),
        names=names,
        fleet_label=r.string(ex, "fleet_label", "exporter", d.fleet_label),
        default_fleet=default_fleet,
    )


def _parse_logs(r: Reader, value: Any, units: dict[str, str], default_fleet: str) -> str:
    """``exporter.logs``: where the model servers' logs come from. For ``journald``, ``units``
    (unit -> fleet, from the fleets' ``server.unit``) gains ``logs.unit`` (the default fleet's;
    ``ollama.service`` when no unit is named anywhere)."""
    logs = r.mapping(value, "exporter.logs", _LOGS_KEYS)
    source = logs.get("source", "docker")
    if source not in LOG_SOURCES:
        raise r.fail(
            "exporter.logs.source", f"must be one of {', '.join(LOG_SOURCES)}, got {source!r}"
        )
    named = logs.get("unit")
    if source != "journald":
        if named is not None:
            raise r.fail("exporter.logs.unit", "is read only with logs.source: journald")
        return str(source)
    for unit in r.names(named, "exporter.logs.unit"):
        units.setdefault(unit_name(r, unit, "exporter.logs.unit"), default_fleet)
    if not units:
        units[DEFAULT_UNIT] = default_fleet
    return str(source)


def _window(r: Reader, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise r.fail(
            "exporter.incident_window_seconds",
            f"must be a number of seconds from 0 to 3600, got {value!r}",
        )
    return float(value)


def _parse_patterns(r: Reader, value: Any, *, keep_defaults: bool) -> dict[str, tuple[str, ...]]:
    user = r.mapping(value, "exporter.patterns")
    patterns: dict[str, tuple[str, ...]] = dict(DEFAULT_PATTERNS) if keep_defaults else {}
    for kind, items in user.items():
        where = f"exporter.patterns.{kind}"
        if not isinstance(kind, str) or not _KIND_NAME.match(kind):
            raise r.fail(where, "kinds are lower-case names: letters, digits and '_'")
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not items:
            raise r.fail(where, f"must be a non-empty list of regular expressions, got {items!r}")
        for i, p in enumerate(items):
            if not isinstance(p, str) or not p:
                raise r.fail(f"{where}[{i}]", f"must be a non-empty string, got {p!r}")
            try:
                re.compile(p)
            except re.error as exc:
                raise r.fail(f"{where}[{i}]", f"invalid regular expression {p!r}: {exc}") from exc
        patterns[kind] = tuple(patterns.get(kind, ())) + tuple(items)
    if not patterns:
        raise r.fail("exporter.patterns", "no patterns left (default_patterns is false)")
    return patterns


def load_config(path: str | os.PathLike[str] | None = None) -> ExporterConfig:
    """Load ``path``, else $MODEL_FLEET_CONFIG, else ./model-fleet.yaml, else the defaults."""
    chosen = config_path(path)
    if chosen is None:
        return parse_config({}, "<defaults>")
    return parse_config(load_yaml(chosen), str(chosen))
