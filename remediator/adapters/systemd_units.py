"""systemd as the :class:`~remediator.ports.runtime.Runtime`: a unit plays the part of a container.

The only module of the remediator that talks to systemd, through ``systemctl``: a subprocess
per call, each with a timeout, each with ``--no-ask-password`` (a missing permission then fails
at once with polkit's answer instead of waiting for a password nobody types). A unit is found
by its name, the fleet's ``server.unit`` and ``units.app``: units carry no labels. Its state is
``systemctl show``'s, read by :func:`parse_show` and :func:`unit_state` (pure); a unit has no
health check, so readiness is the service's own probe, as for a container. Every failure is a
:class:`SystemdError` carrying systemctl's own words ("Access denied", "Unit ... not found").
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from fleet_contract import systemd
from remediator.ports.runtime import ContainerError, ContainerRef, ContainerState, Probe, describe

log = logging.getLogger(__name__)

SYSTEMCTL: Final = "systemctl"
# What a unit's state is read from. LoadState/LoadError tell a unit systemd does not know;
# ExecMainCode tells an exit status from a signal; InvocationID names one run of the unit.
SHOW_PROPERTIES: Final = (
    "LoadState",
    "LoadError",
    "ActiveState",
    "SubState",
    "Result",
    "ExecMainStartTimestamp",
    "ExecMainCode",
    "ExecMainStatus",
    "NRestarts",
    "InvocationID",
    "MainPID",
)
# A show answers in milliseconds; a call that takes 10 s is a hung bus, not a slow answer.
QUERY_TIMEOUT_SECONDS: Final = 10.0
# How the main process ended (ExecMainCode, waitid's si_code): exited, or killed by a signal
# (CLD_KILLED 2, CLD_DUMPED 3), reported as 128+N as shells and Docker do (SIGKILL: 137).
CLD_EXITED: Final = 1
CLD_SIGNALLED: Final = frozenset({2, 3})
SIGNAL_EXIT_BASE: Final = 128
# systemd's states as a container's status (describe() and the status read these words).
_STATUS_BY_STATES: Final[Mapping[tuple[str, str], str]] = {
    ("active", "running"): "running",
    ("active", "exited"): "exited",  # a oneshot unit that remains after its process ended
    ("activating", "auto-restart"): "restarting",  # crashed; Restart= starts it again
}
_STATUS_BY_ACTIVE: Final[Mapping[str, str]] = {
    "activating": "starting",
    "deactivating": "stopping",
    "reloading": "reloading",
    "inactive": "exited",
    "failed": "failed",
}
# Nothing starts a unit in these again by itself (Restart= shows "restarting" instead): a wait
# for it to become ready ends at once.
_FINAL: Final = frozenset({"exited", "failed"})


class SystemdError(ContainerError):
    """A systemd operation failed (the message starts "systemd <step> of unit ...")."""

    def __init__(self, step: str, cause: str, *, unit: str | None = None) -> None:
        super().__init__(step, cause, container=unit, runtime="systemd", kind="unit")


@dataclass(frozen=True)
class UnitStatus:
    """What ``systemctl show`` says about one unit (the properties of SHOW_PROPERTIES)."""

    load_state: str
    load_error: str | None
    active_state: str
    sub_state: str
    result: str | None
    started_at: datetime | None
    exit_code: int | None
    restarts: int
    invocation_id: str | None
    main_pid: int | None


def parse_show(text: str) -> UnitStatus:
    """``systemctl show --property=... --timestamp=us+utc`` output (``Key=value`` lines);
    ValueError for a timestamp in another format (a systemd older than 247)."""
    props = systemd.parse_show(text)
    return UnitStatus(
        load_state=props.get("LoadState", "") or "unknown",
        load_error=_load_error(props.get("LoadError", "")),
        active_state=props.get("ActiveState", "") or "unknown",
        sub_state=props.get("SubState", ""),
        result=props.get("Result") or None,
        started_at=parse_timestamp(props.get("ExecMainStartTimestamp", "")),
        exit_code=_exit_code(_int(props.get("ExecMainCode")), _int(props.get("ExecMainStatus"))),
        restarts=_int(props.get("NRestarts")) or 0,
        invocation_id=props.get("InvocationID") or None,
        main_pid=_int(props.get("MainPID")) or None,
    )


def parse_timestamp(value: str) -> datetime | None:
    """``Sat 2026-12-05 09:13:42.123456 UTC`` (``--timestamp=us+utc``); unset: None."""
    ns = systemd.timestamp_ns(value)
    if ns is None:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)  # integers: a float would round the microseconds
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // systemd.NS_PER_US)


def unit_state(unit: UnitStatus) -> ContainerState:
    """The unit's status in a container's words; health None: a unit has no health check."""
    status = (
        _STATUS_BY_STATES.get((unit.active_state, unit.sub_state))
        or _STATUS_BY_ACTIVE.get(unit.active_state)
        or unit.active_state
    )
    return ContainerState(
        status=status,
        health=None,
        started_at=unit.started_at,
        exit_code=None if status == "running" else unit.exit_code,
        restart_count=unit.restarts,
        run_id=unit.invocation_id,
        result=unit.result,
    )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _exit_code(code: int | None, status: int | None) -> int | None:
    if status is None or (code != CLD_EXITED and code not in CLD_SIGNALLED):
        return None  # the main process has not ended since the unit was loaded
    return status if code == CLD_EXITED else SIGNAL_EXIT_BASE + status


def _load_error(value: str) -> str | None:
    """``org.freedesktop.systemd1.NoSuchUnit "Unit x.service not found."`` -> the message."""
    name, _, message = value.partition(" ")
    return message.strip().strip('"') or name or None


class SystemdRuntime:
    """Finds, restarts and watches systemd units through ``systemctl``.

    ``start_timeout``: how long ``systemctl restart`` may wait for its job beyond the stop
    timeout (the job ends when the unit has started: for Type=simple once it is forked, for
    exec once it is executed, for notify once it says READY=1).
    """

    def __init__(
        self,
        *,
        start_timeout: float = 120.0,
        query_timeout: float = QUERY_TIMEOUT_SECONDS,
        poll_interval: float = 0.25,
    ) -> None:
        self.start_timeout = start_timeout
        self.query_timeout = query_timeout
        self.poll_interval = poll_interval

    def close(self) -> None:
        """Nothing to release: every call is its own systemctl process."""

    def find(
        self, fleet: str, role: str, names: Iterable[str] = (), *, use_labels: bool = True
    ) -> list[ContainerRef]:
        """The units ``names``, each checked to be one systemd knows; ``use_labels`` has no
        meaning here (units carry no labels: the config names them).

        Unlike a missing container (compose may create it again), a unit systemd has not
        loaded cannot start: it is an error, before the switch changes anything.
        """
        refs = []
        for name in dict.fromkeys(names):
            unit = self._show("find", name)
            if unit.load_state != "loaded":
                why = unit.load_error or "systemd has not loaded it"
                raise SystemdError("find", f"{why} (LoadState={unit.load_state})", unit=name)
            refs.append(ContainerRef(name, name, fleet, role))
        return sorted(refs, key=lambda ref: ref.name)

    def state(self, ref: ContainerRef) -> ContainerState:
        """The unit's status, start time, exit status and InvocationID."""
        return unit_state(self._show("inspect", ref.name))

    def restart(self, ref: ContainerRef, stop_timeout: int = 10) -> datetime | None:
        """``systemctl restart`` (starts a stopped unit too); the new run's start time.

        The unit's own TimeoutStopSec= decides when systemd kills it; ``stop_timeout`` only
        lengthens how long this call waits for the job.
        """
        log.info("restarting unit %s", ref.name)
        timeout = stop_timeout + self.start_timeout
        try:
            self._systemctl("restart", "restart", "--", ref.name, unit=ref.name, timeout=timeout)
        except SystemdError as exc:
            raise SystemdError("restart", self._with_state(exc.cause, ref), unit=ref.name) from exc
        return self.state(ref).started_at

    def wait_ready(
        self, ref: ContainerRef, deadline: float, probe: Probe | None = None
    ) -> ContainerState:
        """Wait until the unit is active and running and ``probe`` passes, by ``deadline``.

        A unit that failed or exited ends the wait at once: nothing starts it again by itself.
        """
        why_not: str | None = None
        while True:
            state = self.state(ref)
            if state.status == "running":
                why_not = probe() if probe is not None else None
                if why_not is None:
                    return state
            elif state.status in _FINAL:
                cause = f"stopped after it started: {describe(state)}"
                raise SystemdError("wait_ready", cause, unit=ref.name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = describe(state) + (f"; {why_not}" if why_not else "")
                cause = f"not ready before the deadline: {detail}"
                raise SystemdError("wait_ready", cause, unit=ref.name)
            time.sleep(min(self.poll_interval, remaining))

    def still_up(self, ref: ContainerRef, before: ContainerState) -> ContainerState:
        """Check that the run ``before`` described is still the unit's run and still running.

        The InvocationID names a run: a unit restarted meanwhile (by Restart= after a crash, or
        by someone) is running again, but it is another run.
        """
        now = self.state(ref)
        same = now.run_id == before.run_id if before.run_id else now.started_at == before.started_at
        if now.ready and same:
            return now
        cause = f"did not stay up after it started: {describe(now)}"
        if now.ready:
            cause += f"; another run began (InvocationID {before.run_id} -> {now.run_id})"
        raise SystemdError("wait_ready", cause, unit=ref.name)

    def _with_state(self, cause: str, ref: ContainerRef) -> str:
        """A failed job's cause with the state it left a unit systemd knows in."""
        try:
            unit = self._show("inspect", ref.name)
        except SystemdError:
            return cause
        if unit.load_state != "loaded":
            return cause  # "Unit ... not found" says it all
        return f"{cause}; the unit is now {describe(unit_state(unit))}"

    def _show(self, step: str, name: str) -> UnitStatus:
        props = f"--property={','.join(SHOW_PROPERTIES)}"
        out = self._systemctl(step, "show", props, systemd.SHOW_TIMESTAMPS, "--", name, unit=name)
        try:
            return parse_show(out)
        except ValueError as exc:
            raise SystemdError(step, f"cannot read systemctl show: {exc}", unit=name) from exc

    def _systemctl(
        self, step: str, *args: str, unit: str | None, timeout: float | None = None
    ) -> str:
        """Run ``systemctl --no-ask-password ARGS``; its stdout, or SystemdError with its words."""
        limit = self.query_timeout if timeout is None else timeout
        argv = [SYSTEMCTL, "--no-ask-password", *args]
        # C locale: systemctl's messages as documented, whatever the service's environment.
        env = {**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0"}
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=limit, env=env, check=False
            )
        except FileNotFoundError as exc:
            cause = f"{SYSTEMCTL} not found: units are restarted on their host, not in a container"
            raise SystemdError(step, cause, unit=unit) from exc
        except subprocess.TimeoutExpired as exc:
            # Killing systemctl does not cancel a job it queued: systemd may still carry it out.
            cause = f"systemctl {args[0]} did not return within {limit:g} s"
            raise SystemdError(step, cause, unit=unit) from exc
        except OSError as exc:
            raise SystemdError(step, f"cannot run {SYSTEMCTL}: {exc}", unit=unit) from exc
        if done.returncode != 0:
            # Without systemctl's closing "See ... for details.", the same for every failure.
            lines = (line.strip() for line in done.stderr.splitlines())
            said = "; ".join(line for line in lines if line and not line.startswith("See "))
            cause = f"systemctl {args[0]} exited {done.returncode}: {said[:500] or 'no message'}"
            raise SystemdError(step, cause, unit=unit)
        return done.stdout
