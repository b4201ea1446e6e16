"""The remediator's loggers, one place for their names.

The names are older than the packages (issue 22) and stay as they were: every log line carries
its logger's name (the ``logger`` field of a JSON line), and people filter on it. A module logs
through the logger of what it does, so one name can serve several modules (the switch's
``remediator.switching``: the decision and the transaction).
"""

from __future__ import annotations

import logging
from typing import Final

ALERTS: Final = logging.getLogger("remediator.alerts")
ACTIONS: Final = logging.getLogger("remediator.actions")
DEFERRALS: Final = logging.getLogger("remediator.deferrals")
INTAKE: Final = logging.getLogger("remediator.intake")
JOURNAL: Final = logging.getLogger("remediator.journal")
LIVE: Final = logging.getLogger("remediator.live")
METRICS: Final = logging.getLogger("remediator.metrics")
MOVING: Final = logging.getLogger("remediator.moving")
NOTIFICATIONS: Final = logging.getLogger("remediator.notifications")
RECOVERY: Final = logging.getLogger("remediator.recovery")
REDELIVERY: Final = logging.getLogger("remediator.redelivery")
SERVE: Final = logging.getLogger("remediator.serve")
STATE: Final = logging.getLogger("remediator.state")
SWITCHING: Final = logging.getLogger("remediator.switching")
WEBHOOKS: Final = logging.getLogger("remediator.routes.webhooks")
