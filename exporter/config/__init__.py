"""The exporter's configuration: the ``exporter:`` section of model-fleet.yaml and the fleets'
container names, overridden by command-line flags; errors name the file and the key.

The types and defaults are in :mod:`.model`, reading and validation in :mod:`.parse` (what it
reads of the fleets: :mod:`.fleets`; each value checked by :mod:`.reader`); import their public
names from here (each module's ``__all__``), as the remediator's configuration package does.
"""

from exporter.config import model, parse
from exporter.config.model import *  # noqa: F403
from exporter.config.parse import *  # noqa: F403

__all__ = model.__all__ + parse.__all__
