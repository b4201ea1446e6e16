"""What an Alertmanager delivery leaves behind: its answer (:class:`Acceptance`) and the work
that runs after it (:class:`PendingWork`), on the service's background pools
(:class:`Background`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from remediator.domain.kinds import DeliveryOutcome

__all__ = ["Acceptance", "Background", "PendingWork"]


class PendingWork(Protocol):
    """What a delivery leaves to do after its answer."""

    waits: bool  # True: it may wait for a fleet's lock before it can start

    def run(self) -> None:
        """Do it; log what fails (no caller is left to tell)."""

    def release(self) -> None:
        """It will never run: let go of what it holds."""


@dataclass
class Acceptance:
    """What became of a delivery: the alerts accepted and those ignored (with the reason), for
    the answer, and the work that runs after it."""

    accepted: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)
    deferred: list[dict[str, Any]] = field(default_factory=list)
    pending: list[PendingWork] = field(default_factory=list)

    @property
    def outcome(self) -> DeliveryOutcome:
        """``accepted``, ``deferred`` (kept to be judged again), ``duplicate`` (every alert
        was handled already) or ``ignored``."""
        if self.accepted:
            return DeliveryOutcome.ACCEPTED
        if self.deferred:
            return DeliveryOutcome.DEFERRED
        if self.ignored and all(i["reason"] == "duplicate" for i in self.ignored):
            return DeliveryOutcome.DUPLICATE
        return DeliveryOutcome.IGNORED

    def absorb(self, other: Acceptance) -> None:
        """Add ``other``'s answers and pending work to this delivery's."""
        self.accepted += other.accepted
        self.ignored += other.ignored
        self.deferred += other.deferred
        self.pending += other.pending

    def release(self) -> None:
        """Let go of the locks held for work that will not run."""
        for work in self.pending:
            work.release()
        self.pending.clear()


class Background:
    """Runs the work deliveries leave behind, after their answers.

    Two pools, because a queued delivery may wait for a lock that a held switch, started a
    moment later, must release: had they shared threads, waiters could take them all.
    """

    def __init__(self, fleets: int) -> None:
        size = max(2, fleets)  # one switch per fleet runs at a time anyway
        self._switches = ThreadPoolExecutor(max_workers=size, thread_name_prefix="switch")
        self._waiting = ThreadPoolExecutor(max_workers=size, thread_name_prefix="queued")

    def start(self, works: Sequence[PendingWork]) -> None:
        """Run each work on its pool; what cannot be started lets go of what it holds."""
        for i, work in enumerate(works):
            try:
                (self._waiting if work.waits else self._switches).submit(work.run)
            except BaseException:
                for left in works[i:]:
                    left.release()
                raise

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the switches' pool (tests use it to wait for the pool)."""
        return self._switches.submit(fn)

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work; with ``wait``, finish what was started."""
        self._waiting.shutdown(wait=wait)
        self._switches.shutdown(wait=wait)
