"""The Docker labels that tie containers to a fleet and a role (values as deployed)."""

from __future__ import annotations

from typing import Final

FLEET_LABEL: Final = "model-fleet.fleet"
ROLE_LABEL: Final = "model-fleet.role"
# Role values. The model server's stays "ollama" whatever the server kind: it is what deployed
# containers carry, and renaming it would orphan them.
ROLE_SERVER: Final = "ollama"
ROLE_APP: Final = "app"
ROLES: Final = (ROLE_SERVER, ROLE_APP)
# The fleet of a selected container that has no fleet label.
DEFAULT_FLEET: Final = "default"

# The Prometheus label every metric of both services and every alert carries: the GPU host
# (model-fleet.yaml's `host`, else $MODEL_FLEET_HOST, else the machine's name).
HOST_LABEL: Final = "host"
