"""The remediator as the service and the CLI run it: the switch engine with the live figures of
the configured Prometheus (through the Prometheus adapter) unless it is given others.

The engine (:class:`remediator.switch.engine.Remediator`) knows Prometheus only by its port;
this is where the configured one is built.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from remediator.adapters.prometheus import PrometheusAPI
from remediator.config import Config, FleetConfig
from remediator.store.state import StateStore
from remediator.switch import engine
from remediator.switch.live import LiveReader
from remediator.switch.plan import Actions

__all__ = ["Remediator", "live_reader"]


def live_reader(config: Config, clock: Callable[[], float] = time.time) -> LiveReader:
    """The reader ``config`` asks for: its ``prometheus.url`` with its short timeout, or none;
    only the series of the config's host."""
    settings = config.prometheus
    if settings.url is None:
        return LiveReader(None, clock, config.host)
    api = PrometheusAPI(settings.url, settings.timeout_seconds)
    return LiveReader(api, clock, config.host)


class Remediator(engine.Remediator):
    """The switch engine reading the configured Prometheus (``live``: another reader); the
    engine's own arguments otherwise (:class:`remediator.switch.engine.Remediator`)."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        actions_for: Callable[[FleetConfig], Actions],
        **options: Any,
    ) -> None:
        if options.get("live") is None:
            options["live"] = live_reader(config, options.get("clock", time.time))
        super().__init__(config, store, actions_for, **options)
