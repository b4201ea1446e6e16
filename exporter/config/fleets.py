"""What the exporter reads of model-fleet.yaml's ``fleets:`` section: each fleet's model
server containers (``containers.server``, or its old name ``ollama``; ``containers.use_labels``),
its systemd unit (``server.unit``), its API's URL (``server.url``, or its old name
``ollama_url``) and its synthetic probe. The rest is the remediator's to validate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from exporter.config.model import DEFAULT_SERVER_URL, DEFAULT_UNIT, ProbeSettings, ServerTarget
from exporter.config.reader import Reader
from fleet_contract.systemd import unit_problem

_PROBE_KEYS: Final = frozenset({"enabled", "interval_seconds", "num_predict", "prompt", "model"})
# Of the fleets, how their model servers' containers are found, where their APIs answer, and
# the synthetic probe.
FLEET_KEYS: Final = (
    "containers.server",
    "containers.ollama",
    "containers.use_labels",
    "server.url",
    "server.unit",  # a model server run by systemd: its unit's journal (logs.source journald)
    "ollama_url",  # the deprecated name of server.url
    *(f"probe.{key}" for key in sorted(_PROBE_KEYS)),
)


@dataclass
class Fleets:
    """What the exporter reads of the ``fleets:`` section."""

    names: dict[str, str] = field(default_factory=dict)  # container name -> fleet
    units: dict[str, str] = field(default_factory=dict)  # unit -> fleet (logs.source journald)
    use_labels: list[bool] = field(default_factory=list)  # each fleet's containers.use_labels
    servers: list[ServerTarget] = field(default_factory=list)


def parse_fleets(r: Reader, value: Any) -> Fleets:
    """The ``fleets:`` section (None: there is none)."""
    fleets = Fleets()
    for fleet, settings in r.mapping(value, "fleets").items():
        where = f"fleets.{fleet}"
        m = r.mapping(settings, where)
        fleets.servers.append(_parse_server(r, str(fleet), m, where))
        unit = r.mapping(m.get("server"), f"{where}.server").get("unit")
        if unit is not None:
            fleets.units[unit_name(r, unit, f"{where}.server.unit")] = str(fleet)
        containers = r.mapping(m.get("containers"), f"{where}.containers")
        for key in ("server", "ollama"):  # ollama: the deprecated name of server
            for name in r.names(containers.get(key), f"{where}.containers.{key}"):
                fleets.names[name] = str(fleet)
        use = containers.get("use_labels", True)
        if not isinstance(use, bool):
            raise r.fail(f"{where}.containers.use_labels", f"must be true or false, got {use!r}")
        fleets.use_labels.append(use)
    return fleets


def _parse_server(r: Reader, fleet: str, m: Mapping[str, Any], where: str) -> ServerTarget:
    server = r.mapping(m.get("server"), f"{where}.server")  # server.kind: the remediator's
    url: Any = DEFAULT_SERVER_URL
    if "url" in server and "ollama_url" in m:
        raise r.fail(
            f"{where}.ollama_url",
            f"is the deprecated name of {where}.server.url, which is set too: keep only one",
        )
    if "url" in server:
        url = r.url(server["url"], f"{where}.server.url")
    elif "ollama_url" in m:
        url = r.url(m["ollama_url"], f"{where}.ollama_url")
    return ServerTarget(fleet=fleet, url=url, probe=_parse_probe(r, m.get("probe"), where))


def unit_name(r: Reader, value: Any, where: str) -> str:
    """A systemd unit's name (``where`` in the error)."""
    if not isinstance(value, str):
        raise r.fail(where, f"must be a unit name such as {DEFAULT_UNIT}, got {value!r}")
    problem = unit_problem(value)
    if problem is not None:
        raise r.fail(where, problem)
    return value


def _parse_probe(r: Reader, value: Any, fleet_where: str) -> ProbeSettings:
    where = f"{fleet_where}.probe"
    p = r.mapping(value, where, _PROBE_KEYS)
    d = ProbeSettings()
    interval = r.number(p, "interval_seconds", where, d.interval_seconds)
    if interval <= 0:
        raise r.fail(f"{where}.interval_seconds", f"must be more than 0, got {interval:g}")
    num_predict = p.get("num_predict", d.num_predict)
    if isinstance(num_predict, bool) or not isinstance(num_predict, int) or num_predict < 1:
        raise r.fail(f"{where}.num_predict", f"must be an integer >= 1, got {num_predict!r}")
    model = p.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise r.fail(f"{where}.model", f"must be a model name or null, got {model!r}")
    return ProbeSettings(
        enabled=r.boolean(p, "enabled", where, d.enabled),
        interval_seconds=interval,
        num_predict=num_predict,
        prompt=r.string(p, "prompt", where, d.prompt),
        model=model,
    )
