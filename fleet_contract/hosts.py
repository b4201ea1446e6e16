"""The host a service runs for: model-fleet.yaml's ``host``, $MODEL_FLEET_HOST, the machine.

Both services and the inventory (``model-fleet render-monitoring``) name hosts the same way, so
the ``host`` label of a metric, of an alert and of an Alertmanager route always agree.
"""

from __future__ import annotations

import re
import socket
from typing import Any, Final

from fleet_contract.env import HOST as HOST_ENV
from fleet_contract.yamlfile import ConfigError

# A Prometheus label value that is also safe in a file name, a receiver name and a regex.
HOST_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
HOST_NAME_RULE: Final = "letters, digits, '_', '.' and '-', starting with a letter or digit"


def is_host_name(value: Any) -> bool:
    """True when ``value`` is a valid host name for the ``host`` label."""
    return isinstance(value, str) and HOST_NAME.fullmatch(value) is not None


def resolve_host(configured: Any, source: str, from_env: str | None) -> str:
    """The host: ``from_env`` ($MODEL_FLEET_HOST, which each service reads), else
    ``configured`` (the file's ``host``), else the machine's name; ConfigError naming where the
    value came from when it is no valid name."""
    if from_env:
        value: Any = from_env
        where = f"${HOST_ENV}"
    elif configured is not None:
        value, where = configured, f"{source}: host"
    else:
        value = socket.gethostname()
        where = f"{source}: host (unset; the machine's name)"
    if not is_host_name(value):
        raise ConfigError(f"{where}: must be a host name ({HOST_NAME_RULE}), got {value!r}")
    return str(value)


def default_host() -> str:
    """The machine's name as a host (what an unset ``host`` gives without the variable)."""
    name = socket.gethostname()
    return name if is_host_name(name) else "localhost"
