"""Fleet configuration: one YAML file, validated at start-up; defaults are the original system.

The types and defaults are in :mod:`.model` (a fleet's ladder: :mod:`.ladder`), reading and
validation in :mod:`.parse` (where the services run, containers or systemd units:
:mod:`.placement`), and what check-config prints in :mod:`.report`; import their public names
from here (each module's ``__all__``, gathered as asyncio's package does).
"""

from remediator.config import ladder, model, parse, placement, report
from remediator.config.ladder import *  # noqa: F403
from remediator.config.model import *  # noqa: F403
from remediator.config.parse import *  # noqa: F403
from remediator.config.placement import *  # noqa: F403
from remediator.config.report import *  # noqa: F403

__all__ = ladder.__all__ + model.__all__ + parse.__all__ + placement.__all__ + report.__all__
