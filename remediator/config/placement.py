"""Where a fleet's model server and application run, and how the remediator finds them.

The model server runs in a Docker container (``server.runtime: docker``, the default and the
original system) or as a systemd unit (``runtime: systemd`` with ``server.unit``); the
application in containers (``containers.app``, or Docker labels) or as units (``units.app``).
The parsing here refuses the combinations that would say two things about one service, and
:func:`placement_of` turns a parsed fleet into what one role's runtime is asked to find.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from fleet_contract.labels import ROLE_SERVER
from remediator.config.model import (
    RUNTIMES,
    Containers,
    FleetConfig,
    RuntimeKind,
    ServerSettings,
    Units,
)
from remediator.config.reader import Reader, key_path
from remediator.ports.model_server import SERVER_KINDS

__all__ = ["UNIT_SUFFIX", "Placement", "placement_of", "service_problem"]

SERVER_KEYS: Final = frozenset({"kind", "url", "runtime", "unit"})
CONTAINER_KEYS: Final = frozenset(
    {
        "use_labels",
        "server",
        "ollama",  # deprecated: server
        "app",
        "restart_server",
        "restart_ollama",  # deprecated: restart_server
        "stop_timeout_seconds",
        "ready_timeout_seconds",
        "settle_seconds",
        "app_health_url",
    }
)
UNIT_KEYS: Final = frozenset({"app"})

# The remediator restarts services.
UNIT_SUFFIX: Final = ".service"
# systemd's unit name rules (unit_name_is_valid): these characters, an optional "@instance",
# at most 255 characters.
_UNIT_NAME: Final = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.service")
_UNIT_NAME_MAX: Final = 255
_OTHER_UNIT_TYPES: Final = frozenset(
    {"socket", "target", "timer", "mount", "automount", "swap", "path", "slice", "scope", "device"}
)


@dataclass(frozen=True)
class Placement:
    """Where one role of a fleet runs and what its runtime is asked to find there."""

    runtime: RuntimeKind
    names: tuple[str, ...] = ()
    use_labels: bool = False

    @property
    def finds_nothing(self) -> bool:
        """Nothing names the role: there is nothing to look up, restart or wait for."""
        return not self.names and not self.use_labels


def placement_of(fleet: FleetConfig, role: str) -> Placement:
    """Where ``role`` (runtime.ROLE_SERVER or ROLE_APP) of ``fleet`` runs, by its config.

    An application that nothing names is not restarted; it then takes the model server's
    runtime, so that a fleet all under systemd never asks Docker for anything.
    """
    c, server = fleet.containers, fleet.server
    if role == ROLE_SERVER:
        if server.runtime == "systemd":
            return Placement("systemd", (server.unit,) if server.unit else ())
        return Placement("docker", c.server_names, c.use_labels)
    if fleet.units.app:
        return Placement("systemd", fleet.units.app)
    if c.app_names or c.use_labels:
        return Placement("docker", c.app_names, c.use_labels)
    return Placement(server.runtime)


def service_problem(name: str) -> str | None:
    """Why ``name`` is not a service the remediator can restart, or None when it is one.

    The name is taken whole, with its type (``ollama.service``), as the exporter reads
    ``server.unit``: a name valid for one reader of the file is valid for both.
    """
    if "/" in name:
        return "a unit name has no '/': name the unit (ollama.service), not its file"
    suffix = name.rpartition(".")[2] if "." in name else ""
    if suffix in _OTHER_UNIT_TYPES:
        return f"it is a .{suffix} unit: the remediator restarts services (.service)"
    if suffix != "service":
        return f"a unit is named with its type: {name}{UNIT_SUFFIX}"
    if len(name) > _UNIT_NAME_MAX:
        return f"systemd unit names have at most {_UNIT_NAME_MAX} characters"
    if not _UNIT_NAME.fullmatch(name):
        return "systemd unit names use letters, digits and :-_.\\ (and one '@' before an instance)"
    if name.endswith("@" + UNIT_SUFFIX):
        return "it is a template: name an instance of it (name@instance.service)"
    return None


def _unit(r: Reader, name: str, key: str) -> str:
    problem = service_problem(name)
    if problem is not None:
        raise r.fail(key, f"{name!r} is not a systemd service's name: {problem}")
    return name


def parse_server(r: Reader, fleet: dict[str, Any], where: str) -> ServerSettings:
    """``server``: the kind, the API's URL (or the deprecated ``ollama_url``) and the runtime."""
    here = key_path(where, "server")
    m = r.mapping(fleet.get("server"), here, SERVER_KEYS)
    d = ServerSettings()
    kind = r.string(m, "kind", here, d.kind)
    if kind not in SERVER_KINDS:
        raise r.fail(
            key_path(here, "kind"),
            f"unknown server kind {kind!r} (known kinds: {', '.join(SERVER_KINDS)})",
        )
    url_in, url_where, url_key = r.renamed((m, here, "url"), (fleet, where, "ollama_url"))
    runtime = r.string(m, "runtime", here, d.runtime)
    if runtime not in RUNTIMES:
        raise r.fail(
            key_path(here, "runtime"), f"must be one of {', '.join(RUNTIMES)}, got {runtime!r}"
        )
    return ServerSettings(
        kind=kind,
        url=r.url(url_in, url_key, url_where, d.url),
        runtime=runtime,  # type: ignore[arg-type]
        unit=_server_unit(r, m, here, runtime),
    )


def _server_unit(r: Reader, m: dict[str, Any], here: str, runtime: str) -> str | None:
    key = key_path(here, "unit")
    if m.get("unit") is None:
        if runtime == "systemd":
            raise r.fail(
                key,
                "is required with server.runtime systemd: the model server's unit "
                "(e.g. ollama.service)",
            )
        return None
    if runtime != "systemd":
        default = "" if "runtime" in m else " (the default)"
        raise r.fail(
            key,
            f"names a systemd unit, but server.runtime is {runtime}{default}: set "
            "server.runtime: systemd, or remove server.unit",
        )
    return _unit(r, r.string(m, "unit", here, None), key)


def parse_containers(r: Reader, value: Any, where: str, server: ServerSettings) -> Containers:
    """``containers``: how containers are found and restarted, and the readiness timings.

    Under systemd the model server is its unit: naming its containers too is refused, and
    labels (which find Docker containers) are off unless set, when they find the app's.
    """
    m = r.mapping(value, where, CONTAINER_KEYS)
    d = Containers()
    health_url = m.get("app_health_url")
    if health_url is not None and (
        not isinstance(health_url, str) or not health_url.startswith(("http://", "https://"))
    ):
        raise r.fail(
            key_path(where, "app_health_url"), f"must be an http(s) URL, got {health_url!r}"
        )
    _, _, names_key = r.renamed((m, where, "server"), (m, where, "ollama"))
    _, _, restart_key = r.renamed((m, where, "restart_server"), (m, where, "restart_ollama"))
    server_names = r.strings(m, names_key, where)
    if server_names and server.runtime == "systemd":
        raise r.fail(
            key_path(where, names_key),
            f"names the model server's containers, but server.runtime is systemd: the model "
            f"server is the unit {server.unit} (server.unit); remove containers.{names_key}",
        )
    use_labels_default = d.use_labels and server.runtime == "docker"
    return Containers(
        use_labels=r.boolean(m, "use_labels", where, use_labels_default),
        server_names=server_names,
        app_names=r.strings(m, "app", where),
        restart_server=r.boolean(m, restart_key, where, d.restart_server),
        stop_timeout_seconds=r.integer(m, "stop_timeout_seconds", where, d.stop_timeout_seconds),
        ready_timeout_seconds=r.number(
            m, "ready_timeout_seconds", where, d.ready_timeout_seconds, lo=1
        ),
        settle_seconds=r.number(m, "settle_seconds", where, d.settle_seconds),
        app_health_url=health_url,
    )


def parse_units(
    r: Reader, value: Any, where: str, server: ServerSettings, containers: Containers
) -> Units:
    """``units``: the application's systemd units, instead of its containers."""
    m = r.mapping(value, where, UNIT_KEYS)
    key = key_path(where, "app")
    apps: list[str] = []
    for i, text in enumerate(r.strings(m, "app", where)):
        name = _unit(r, text, f"{key}[{i}]")
        if name in apps:
            raise r.fail(f"{key}[{i}]", f"{name} is listed twice")
        if name == server.unit:
            raise r.fail(
                f"{key}[{i}]",
                f"{name} is the model server's unit (server.unit): list only the application's",
            )
        apps.append(name)
    if apps and containers.app_names:
        raise r.fail(
            key,
            "the application runs either in containers (containers.app) or as systemd units "
            "(units.app), not both: keep units.app if it runs under systemd, containers.app if "
            "it runs in Docker",
        )
    return Units(app=tuple(apps))
