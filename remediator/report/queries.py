"""What ``model-fleet`` and the HTTP service both answer: status, history, the token, the codes.

The CLI reads the state file itself or asks a running remediator (``--url``); either way the
answers come from here, and :data:`CODES` maps each way a request ends to its HTTP status and
to the CLI's exit code, so that a command exits the same way on both paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Final

from fleet_contract import env
from remediator.config import Config, UnknownFleet
from remediator.report.status import build_status
from remediator.store.locks import LockTimeout, StateError
from remediator.store.state import StateStore
from remediator.switch.live import LiveReader

if TYPE_CHECKING:
    from remediator.switch.plan import Outcome

TOKEN_ENV: Final = env.TOKEN
TOKEN_FILE_ENV: Final = env.TOKEN_FILE
NO_AUTH_ENV: Final = env.NO_AUTH


class ExitCode(IntEnum):
    """The exit codes of ``model-fleet`` (documented in docs/operations.md)."""

    OK = 0
    FAILED = 1  # a switch was attempted and rolled back
    USAGE = 2  # bad arguments, invalid configuration, a missing or refused token
    UNKNOWN_FLEET = 3
    NOTHING_TO_DO = 4  # at the smallest/largest model, cooldown, ...
    LOCKED = 5  # the state lock was not obtained in time
    STATE = 6  # the state file could not be read or written
    UNREACHABLE = 7  # --url: the remediator did not answer


# What each exit code means, for --help and docs/operations.md.
EXIT_MEANINGS: Final[Mapping[ExitCode, str]] = {
    ExitCode.OK: "done",
    ExitCode.FAILED: "the switch failed and was rolled back",
    ExitCode.USAGE: "bad arguments, invalid configuration, or a missing or refused token",
    ExitCode.UNKNOWN_FLEET: "unknown fleet",
    ExitCode.NOTHING_TO_DO: "nothing to do (at the smallest or largest model, cooldown, ...)",
    ExitCode.LOCKED: "the state lock was not obtained in time",
    ExitCode.STATE: "the state file could not be read or written",
    ExitCode.UNREACHABLE: "the remediator at --url did not answer",
}


@dataclass(frozen=True)
class Code:
    """How one kind of ending is told: an HTTP status and an exit code."""

    http: int
    exit: ExitCode


# Order matters where two kinds share a status: a 503 reads back as LOCKED.
CODES: Final[Mapping[str, Code]] = {
    "switched": Code(200, ExitCode.OK),  # or, in a dry run, would switch
    "nothing_to_do": Code(409, ExitCode.NOTHING_TO_DO),
    "failed": Code(502, ExitCode.FAILED),  # a step failed; the switch was rolled back
    "invalid": Code(400, ExitCode.USAGE),
    "unauthorized": Code(401, ExitCode.USAGE),
    "unknown_fleet": Code(404, ExitCode.UNKNOWN_FLEET),
    "locked": Code(503, ExitCode.LOCKED),
    "state": Code(503, ExitCode.STATE),
}


def outcome_kind(outcome: Outcome) -> str:
    """``failed``, ``nothing_to_do`` or ``switched``: the row of :data:`CODES` for a switch."""
    if outcome.failure is not None:
        return "failed"
    if outcome.decision.target is None:
        return "nothing_to_do"
    return "switched"


def error_kind(exc: BaseException) -> str | None:
    """The row of :data:`CODES` for an error a query or a switch raises; None if not ours."""
    if isinstance(exc, UnknownFleet):  # unknown fleet, or several and none named
        return "unknown_fleet"
    if isinstance(exc, LockTimeout):
        return "locked"
    if isinstance(exc, StateError):
        return "state"
    return None


def exit_for_http(status: int) -> ExitCode | None:
    """The exit code for a remediator's HTTP status (the first row of :data:`CODES`)."""
    return next((c.exit for c in CODES.values() if c.http == status), None)


class TokenError(RuntimeError):
    """The token file is named but cannot be read, or is empty."""


def load_token(environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token from $MODEL_FLEET_TOKEN_FILE, else $MODEL_FLEET_TOKEN, else None."""
    path = environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise TokenError(f"cannot read the token file {path}: {exc.strerror}") from exc
        if not token:
            raise TokenError(f"the token file {path} is empty")
        return token
    return environ.get(TOKEN_ENV) or None


def status(
    config: Config,
    store: StateStore,
    fleet: str | None = None,
    now: float | None = None,
    live: LiveReader | None = None,
) -> dict[str, Any]:
    """The status JSON (all fleets, or ``fleet``) at ``now`` (default: the time), with the live
    figures ``live`` reads now (default: none); UnknownFleet for an unknown fleet."""
    shown = [config.fleet(fleet)] if fleet is not None else list(config.fleets.values())
    state = store.snapshot()
    here = {f.name: state.fleets[f.name].current_gpu(f) for f in shown}  # after any move
    figures = (live or LiveReader(None, host=config.host)).read_fleets(shown, here)
    return build_status(config, state, fleet, figures, now)


def history(
    config: Config, store: StateStore, fleet: str | None = None, limit: int = 0
) -> list[dict[str, Any]]:
    """The switch history, oldest first: the newest ``limit`` entries (all when ``limit`` <= 0),
    of every fleet or of ``fleet``; UnknownFleet for an unknown fleet."""
    if fleet is not None:
        config.fleet(fleet)
    state = store.snapshot()
    records = sorted(
        (
            r.to_dict()
            for name, fs in state.fleets.items()
            if fleet in (None, name)
            for r in fs.history
        ),
        key=lambda r: float(r["time"]),
    )
    return records[-limit:] if limit > 0 else records
