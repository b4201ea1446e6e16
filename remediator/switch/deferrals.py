"""Deferred alerts: judged again by the remediator itself once the reason that held them passed.

An alert refused for a reason that passes by itself (the cooldown, the hourly cap, a step-up
window not yet open, a quiet period: the decision's ``retry_at``) is kept in its fleet's state
(``FleetState.deferred``, written by :func:`remediator.switch.intake.judge`) with the moment that
reason passes. Alertmanager does not deliver an alert again before its ``repeat_interval``
(24 h as shipped) unless its group changes, so waiting for a redelivery would park the fleet on
a failing model: a chain of step-downs whose second rung fails at once would stop at the
cooldown. :class:`DeferralClock` wakes each gunicorn worker once a second; :func:`judge_due`
takes each fleet with a due alert, under the fleet's switch lock (one worker does it; the
others find the lock held or the entry gone), and judges its due alerts again exactly as a
delivery is judged. Before that it drops an alert that no longer fires: its resolution ended
the deferral already when Alertmanager delivered it, and with ``prometheus.url`` set, an alert of
a Prometheus rule (it has a ``generatorURL``) that ``ALERTS`` no longer shows firing is dropped
too; one posted to Alertmanager by hand (amtool, curl) ends only with its resolution. Because
the entries live in the state file, a restarted remediator acts on them as soon as it is back.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from remediator.domain.alerts import AlertRequest
from remediator.domain.decisions import AlertRef
from remediator.domain.loggers import DEFERRALS as log
from remediator.domain.records import DeferredAlert
from remediator.domain.state import State
from remediator.store.locks import LockTimeout
from remediator.switch import transaction
from remediator.switch.engine import Remediator
from remediator.switch.intake import judge

TICK_SECONDS = 1.0  # how often a worker looks for due alerts: the bound on their extra delay


def due(state: State, now: float) -> dict[str, list[DeferredAlert]]:
    """The deferred alerts whose reason has passed at ``now``, by fleet, oldest first."""
    out: dict[str, list[DeferredAlert]] = {}
    for name, fs in state.fleets.items():
        ready = sorted(
            (a for a in fs.deferred.values() if a.acts_at <= now), key=lambda a: a.started_at
        )
        if ready:
            out[name] = ready
    return out


def next_due(state: State) -> float | None:
    """When the first deferred alert of any fleet falls due (None: none is deferred)."""
    times = [a.acts_at for fs in state.fleets.values() for a in fs.deferred.values()]
    return min(times, default=None)


def request_of(fleet: str, alert: DeferredAlert) -> AlertRequest:
    """The switch request a deferred alert makes when it is judged again."""
    item = {
        "alertname": alert.alertname or None,
        "fleet": fleet,
        "fingerprint": alert.key.split("@", 1)[0],
        "status": "firing",
    }
    return AlertRequest(
        fleet,
        alert.direction,
        alert.trigger,
        AlertRef(alert.key, alert.started_at),
        item,
        alert.error_count,
        dict(alert.labels),
        alert.from_prometheus,
    )


@dataclass
class Pass:
    """What one look at the deferred alerts did (the counts tests assert on)."""

    judged: int = 0  # alerts judged again
    switched: int = 0  # switches they started
    dropped: int = 0  # alerts that no longer fire
    busy: int = 0  # fleets skipped: switching right now (judged once their lock is free)


def judge_due(remediator: Remediator) -> Pass:
    """Judge every due deferred alert again; a fleet that is switching now is left for later."""
    done = Pass()
    for name in due(remediator.store.snapshot(), remediator.now()):
        fleet = remediator.config.fleets.get(name)
        if fleet is None:
            continue
        try:
            with remediator.store.switch_lock(name, 0):
                _judge_fleet(remediator, name, done)
        except LockTimeout:
            done.busy += 1
    return done


def _judge_fleet(remediator: Remediator, name: str, done: Pass) -> None:
    """Under the fleet's switch lock: drop what no longer fires, judge the rest, switch."""
    fleet = remediator.config.fleets[name]
    # Read again under the lock: another worker may have judged them a moment ago.
    alerts = due(remediator.store.snapshot(), remediator.now()).get(name, [])
    gone = {
        a.key
        for a in alerts
        if a.from_prometheus and remediator.live.alert_firing(a.labels) is False
    }
    if gone:
        with remediator.store.transaction() as state:
            for key in gone:
                state.fleets[name].deferred.pop(key, None)
        for key in sorted(gone):
            log.info("fleet %s: deferred alert %s no longer fires (Prometheus): dropped", name, key)
        done.dropped += len(gone)
    left = [a for a in alerts if a.key not in gone]
    if not left:
        return
    started = time.monotonic()
    now = remediator.now()
    what = ", ".join(f"{a.key} ({a.reason}, due {now - a.acts_at:.1f} s ago)" for a in left)
    log.info("fleet %s: judging deferred alert(s) again: %s", name, what)
    verdict = judge(remediator.tools, remediator, fleet, [request_of(name, a) for a in left])
    done.judged += len(left)
    if verdict.plan is not None and verdict.decision is not None:
        plan = verdict.plan
        transaction.carry_out(
            remediator.tools, fleet, plan.direction, verdict.decision, plan, False, started
        )
        done.switched += 1


class DeferralClock:
    """A worker's thread that judges deferred alerts when they fall due.

    It parses the state file only when the file changed or an alert fell due, so an idle
    service costs one ``stat`` a second.
    """

    def __init__(self, remediator: Remediator, tick: float = TICK_SECONDS) -> None:
        self._remediator = remediator
        self._tick = tick
        self._stop = threading.Event()
        self._seen: tuple[int, int, int] | None = (-1, -1, -1)  # never looked yet
        self._next: float | None = None
        self._thread = threading.Thread(target=self._run, name="deferrals", daemon=True)

    def start(self) -> DeferralClock:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def tick(self) -> Pass | None:
        """One look: judge what is due, when the file changed or something fell due."""
        if self._signature() == self._seen and (
            self._next is None or self._remediator.now() < self._next
        ):
            return None
        done = judge_due(self._remediator)
        # The signature first, then the read: a write in between only costs one more look.
        self._seen = self._signature()
        self._next = next_due(self._remediator.store.snapshot())
        return done

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._remediator.store.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            try:
                self.tick()
            except Exception:  # a background thread has no caller to tell: log it, go on
                log.exception("deferred alerts: a pass failed; trying again in %.0f s", self._tick)
