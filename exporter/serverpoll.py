"""What each fleet's model server shows: the loaded models' memory, and a synthetic probe.

Two kinds of background loops, one thread per fleet each, so that a slow or dead server never
delays another fleet or a scrape:

- the poller asks the server which models are loaded (Ollama's ``/api/ps``) every
  ``exporter.server_poll_seconds`` and keeps, per model, the bytes in VRAM and the bytes
  offloaded to system memory. A server that does not answer is ``model_server_up 0`` and has no
  memory series (the exporter cannot vouch for them); a model no longer listed loses its series.
- the probe (opt-in per fleet, ``fleets.*.probe``) asks the current model for a few tokens every
  ``interval_seconds`` and keeps whether it answered, how long the request took and the
  tokens per second the server itself measured. The current model is ``probe.model`` when set,
  else the model the server lists as most recently used (latest ``expires_at``); when none is
  loaded and none is configured, the round is skipped and the fleet has no probe series.

The HTTP side is a :class:`ModelServerApi` (exporter.serverapi; Ollama's in
exporter.adapters.model_server); this module holds the scheduling, the state and the
collector, and talks to nothing itself.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.config import ProbeSettings, ServerTarget
from exporter.metrics import gauge
from exporter.serverapi import ApiFactory, LoadedModel, ModelServerApi, ServerError
from fleet_contract import metrics as m

log = logging.getLogger(__name__)

_PS_TIMEOUT_MAX: Final = 10.0  # one /api/ps request, at most
_JOIN_SECONDS: Final = 1.0  # stop() waits this long for a loop (they are daemon threads)


@dataclass(frozen=True)
class ProbeResult:
    """The last probe of a fleet: which model, whether it answered, how long it took."""

    model: str
    success: bool
    duration_seconds: float
    tokens_per_second: float | None


@dataclass
class _Fleet:
    up: bool = False
    models: dict[str, LoadedModel] = field(default_factory=dict)
    polled: bool = False  # the poller runs for this fleet
    probe: ProbeResult | None = None


@dataclass
class ServerStore:
    """Per fleet: the last poll's answer and the last probe; read at scrape time."""

    _fleets: dict[str, _Fleet] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, fleet: str) -> None:
        """The fleet's server is polled: ``model_server_up`` exists (0 until it answers)."""
        with self._lock:
            self._fleets.setdefault(fleet, _Fleet()).polled = True

    def report_poll(self, fleet: str, models: Sequence[LoadedModel] | None) -> None:
        """The models the server listed, or None when it did not answer."""
        with self._lock:
            state = self._fleets.setdefault(fleet, _Fleet())
            state.polled = True
            state.up = models is not None
            state.models = {model.name: model for model in models or ()}

    def report_probe(self, fleet: str, result: ProbeResult | None) -> None:
        """The probe's last round (None: skipped, nothing to probe)."""
        with self._lock:
            self._fleets.setdefault(fleet, _Fleet()).probe = result

    def last_probe(self, fleet: str) -> ProbeResult | None:
        """The fleet's last probe result, if any."""
        with self._lock:
            state = self._fleets.get(fleet)
            return state.probe if state is not None else None

    def snapshot(self) -> dict[str, tuple[bool | None, list[LoadedModel], ProbeResult | None]]:
        """fleet -> (up, or None when not polled; loaded models; last probe)."""
        with self._lock:
            return {
                fleet: (
                    s.up if s.polled else None,
                    sorted(s.models.values(), key=lambda x: x.name),
                    s.probe,
                )
                for fleet, s in sorted(self._fleets.items())
            }


class ServerCollector(Collector):
    """Exports a ServerStore (names and labels: fleet_contract.metrics)."""

    def __init__(self, store: ServerStore) -> None:
        self._store = store

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """The model-server metrics, one consistent snapshot per scrape."""
        up = gauge(m.MODEL_SERVER_UP)
        memory = gauge(m.MODEL_MEMORY)
        success = gauge(m.PROBE_SUCCESS)
        duration = gauge(m.PROBE_DURATION)
        speed = gauge(m.PROBE_TOKENS_PER_SECOND)
        for fleet, (is_up, models, probe) in self._store.snapshot().items():
            if is_up is not None:
                up.add_metric([fleet], 1 if is_up else 0)
            for model in models:
                memory.add_metric([fleet, model.name, "vram"], model.size_vram)
                memory.add_metric([fleet, model.name, "system"], model.system_bytes)
            if probe is not None:
                success.add_metric([fleet, probe.model], 1 if probe.success else 0)
                duration.add_metric([fleet, probe.model], probe.duration_seconds)
                if probe.tokens_per_second is not None:
                    speed.add_metric([fleet, probe.model], probe.tokens_per_second)
        return [up, memory, success, duration, speed]


def current_model(models: Sequence[LoadedModel]) -> str | None:
    """The model used most recently: the latest ``expires_at`` (ties and unknowns: by name)."""
    if not models:
        return None

    def key(model: LoadedModel) -> tuple[bool, float, str]:
        at = model.expires_at
        return (at is not None, at.timestamp() if at is not None else 0.0, model.name)

    return max(models, key=key).name


def _every(interval: float, stop: threading.Event, work: Callable[[], None], what: str) -> None:
    """Run ``work`` every ``interval`` seconds (at a fixed rate) until ``stop`` is set."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            work()
        except Exception:  # a bug in one round must not end the loop
            log.exception("%s: round failed", what)
        stop.wait(max(0.0, interval - (time.monotonic() - started)))


class _Poller:
    def __init__(self, target: ServerTarget, api: ModelServerApi, store: ServerStore) -> None:
        self.target, self.api, self.store = target, api, store
        self.up: bool | None = None

    def round(self, timeout: float) -> None:
        try:
            models: list[LoadedModel] | None = self.api.loaded(timeout)
        except ServerError as exc:
            models = None
            if self.up is not False:
                log.warning(
                    "fleet %s: model server %s: %s", self.target.fleet, self.target.url, exc
                )
        else:
            if self.up is False:
                log.info(
                    "fleet %s: model server %s answers again", self.target.fleet, self.target.url
                )
        self.up = models is not None
        self.store.report_poll(self.target.fleet, models)


class _Prober:
    def __init__(self, target: ServerTarget, api: ModelServerApi, store: ServerStore) -> None:
        self.target, self.api, self.store = target, api, store
        self.settings: ProbeSettings = target.probe
        self.last_model: str | None = None
        self.last_success: bool | None = None

    def round(self) -> None:
        fleet, p = self.target.fleet, self.settings
        budget = p.interval_seconds  # a round never takes longer than its interval
        started = time.monotonic()
        model = p.model
        if model is None:
            try:
                model = current_model(self.api.loaded(min(budget / 2, _PS_TIMEOUT_MAX)))
            except ServerError:
                model = self.last_model  # the server is away: its last model fails below
            if model is None:
                if self.last_model is not None:
                    log.info("fleet %s: no model loaded, probe skipped", fleet)
                self.last_model = self.last_success = None
                self.store.report_probe(fleet, None)
                return
        remaining = max(budget - (time.monotonic() - started), 0.001)
        request_started = time.monotonic()
        try:
            generation = self.api.generate(model, p.prompt, p.num_predict, remaining)
        except ServerError as exc:
            result = ProbeResult(model, False, time.monotonic() - request_started, None)
            if self.last_success is not False or self.last_model != model:
                log.warning("fleet %s: probe of %s failed: %s", fleet, model, exc)
        else:
            elapsed = time.monotonic() - request_started
            result = ProbeResult(model, True, elapsed, generation.tokens_per_second)
        self.last_model, self.last_success = model, result.success
        self.store.report_probe(fleet, result)


class ServerWatch:
    """The poll and probe loops of every fleet, feeding one ServerStore."""

    def __init__(
        self,
        targets: Sequence[ServerTarget],
        poll_seconds: float,
        api_for: ApiFactory,
        store: ServerStore,
    ) -> None:
        self.store = store
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pollers = [_Poller(t, api_for(t.url), store) for t in targets] if poll_seconds else []
        self._probers = [_Prober(t, api_for(t.url), store) for t in targets if t.probe.enabled]
        for poller in self._pollers:
            store.register(poller.target.fleet)

    def start(self) -> None:
        """Start every loop (each runs its first round at once)."""
        timeout = min(max(self._poll_seconds, 1.0), _PS_TIMEOUT_MAX)
        for poller in self._pollers:
            work = functools.partial(poller.round, timeout)
            self._spawn(f"poll-{poller.target.fleet}", self._poll_seconds, work)
        for prober in self._probers:
            self._spawn(
                f"probe-{prober.target.fleet}", prober.settings.interval_seconds, prober.round
            )

    def _spawn(self, name: str, interval: float, work: Callable[[], None]) -> None:
        thread = threading.Thread(
            target=_every, args=(interval, self._stop, work, name), name=name, daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        """Stop the loops; a request in flight is left to its own timeout (daemon threads)."""
        self._stop.set()
        deadline = time.monotonic() + _JOIN_SECONDS
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
