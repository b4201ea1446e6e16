"""One SystemdRuntime call inside the systemd bed, its answer printed as one JSON line.

tests/test_systemd_runtime.py runs this with the host's venv Python inside the bed
(simulator.systemd_host), where systemd is PID 1: the real systemctl against a real unit. An
error the runtime raises is an answer too (``{"error": ...}``), so the test reads its words;
``seconds`` is how long the call took, measured where it ran.

    python -m tests.support.systemd_steps find|state|restart|wait|restart-wait|still-up UNIT...
        [--url URL --model NAME] [--timeout S] [--before STATE_JSON]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

from remediator.adapters.ollama import OllamaServer
from remediator.adapters.systemd_units import SystemdRuntime
from remediator.ports.runtime import (
    ROLE_SERVER,
    ContainerError,
    ContainerRef,
    ContainerState,
    Probe,
)
from remediator.switch.readiness import lists_model

FLEET = "bed"


def state_json(state: ContainerState) -> dict[str, Any]:
    """A state as JSON (the start time in ISO 8601)."""
    started = state.started_at.isoformat() if state.started_at else None
    return {**state.__dict__, "started_at": started}


def state_from_json(data: dict[str, Any]) -> ContainerState:
    """The state state_json printed, back."""
    started = datetime.fromisoformat(data["started_at"]) if data["started_at"] else None
    return ContainerState(**{**data, "started_at": started})


def server_probe(url: str, model: str) -> Probe:
    """The model server's readiness as the switch asks it: its API answers and lists ``model``."""
    return lists_model(OllamaServer(url), model)


def _call(runtime: SystemdRuntime, args: argparse.Namespace) -> dict[str, Any]:
    if args.op == "find":
        return {"found": [r.name for r in runtime.find(FLEET, ROLE_SERVER, args.units)]}
    ref = ContainerRef(args.units[0], args.units[0], FLEET, ROLE_SERVER)
    if args.op == "state":
        return {"state": state_json(runtime.state(ref))}
    if args.op == "restart":
        started = runtime.restart(ref)
        return {"started_at": started.isoformat() if started else None}
    if args.op in ("wait", "restart-wait"):
        answer: dict[str, Any] = {}
        if args.op == "restart-wait":  # the switch's order: restart, then wait for the probe
            started = runtime.restart(ref)
            answer["started_at"] = started.isoformat() if started else None
        probe = server_probe(args.url, args.model) if args.url else None
        deadline = time.monotonic() + args.timeout
        return {**answer, "state": state_json(runtime.wait_ready(ref, deadline, probe))}
    before = state_from_json(json.loads(args.before))
    return {"state": state_json(runtime.still_up(ref, before))}


def main(argv: list[str] | None = None) -> int:
    """Make the call, print the answer; exit 0 whatever the runtime said."""
    parser = argparse.ArgumentParser(prog="systemd_steps")
    ops = ("find", "state", "restart", "wait", "restart-wait", "still-up")
    parser.add_argument("op", choices=ops)
    parser.add_argument("units", nargs="+")
    parser.add_argument("--url")
    parser.add_argument("--model")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--before")
    args = parser.parse_args(argv)
    runtime = SystemdRuntime(poll_interval=0.1)
    started = time.monotonic()
    try:
        answer = _call(runtime, args)
    except ContainerError as exc:
        answer = {"error": str(exc), "step": exc.step}
    answer["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
