"""scripts/demo as a subprocess: its output, its containers and its process groups.

The demo runs in a session of its own, as under a terminal: the terminal's signals (Ctrl-C's
SIGINT, a closed terminal's SIGHUP) go to its process group, ``kill``'s SIGTERM to its PID.
Its process groups are its own and those of its children (the remediator and the exporter
run in sessions of their own), collected while it runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from simulator.loop_setup import OWNER_LABEL, process_owner

REPO = Path(__file__).resolve().parents[2]


def _stat(pid: str) -> list[str] | None:
    """/proc/<pid>/stat's fields from the state on (field 3), or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def live_groups(pgids: set[int]) -> dict[int, list[int]]:
    """The processes, not zombies, still in each of ``pgids``."""
    alive: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields and fields[0] != "Z" and int(fields[2]) in pgids:
            alive.setdefault(int(fields[2]), []).append(int(entry.name))
    return alive


@dataclass
class DemoRun:
    """One ``python -m simulator.demo`` run."""

    proc: subprocess.Popen[str]
    owner: str  # its containers' owner label
    lines: list[str] = field(default_factory=list)
    groups: set[int] = field(default_factory=set)

    def output(self) -> str:
        """stdout and stderr so far."""
        return "".join(self.lines)

    def children(self) -> dict[int, str]:
        """The demo's child processes now: PID -> command name (Prometheus: ``prometheus``)."""
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            fields = _stat(entry.name) if entry.name.isdigit() else None
            if fields and int(fields[1]) == self.proc.pid:
                with contextlib.suppress(OSError):
                    found[int(entry.name)] = (entry / "comm").read_text().strip()
                self.groups.add(int(fields[2]))
        return found

    def collect_groups(self) -> set[int]:
        """Add the process groups of the demo's children now; all seen so far."""
        self.groups.add(self.proc.pid)
        self.children()
        return self.groups

    def containers(self, client: docker.DockerClient) -> list[docker.models.containers.Container]:
        """Its containers, running or not."""
        return list(
            client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={self.owner}"})
        )

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready()`` (collecting groups meanwhile); fail with the output if it exits."""
        deadline = time.monotonic() + timeout
        while not ready():
            self.collect_groups()
            if self.proc.poll() is not None and not ready():
                raise AssertionError(f"the demo exited ({self.proc.returncode}):\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout:g} s:\n{self.output()}")
            time.sleep(0.1)
        self.collect_groups()

    def wait_for_line(self, text: str, timeout: float) -> None:
        """Wait until the output holds ``text``."""
        self.wait_for(repr(text), lambda: text in self.output(), timeout)

    def send(self, signum: int) -> None:
        """SIGTERM as ``kill`` sends it (the PID); others as a terminal does (the group)."""
        self.collect_groups()
        if signum == signal.SIGTERM:
            os.kill(self.proc.pid, signum)
        else:
            os.killpg(self.proc.pid, signum)

    def wait_exit(self, timeout: float) -> int:
        """Its exit status, collecting groups until it has exited."""
        self.wait_for("exit", lambda: self.proc.poll() is not None, timeout)
        return self.proc.wait()

    def kill(self, client: docker.DockerClient) -> None:
        """After a failed test: SIGKILL what is left of it and remove its containers."""
        for pgid in live_groups(self.collect_groups()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(10)
        for c in self.containers(client):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)


# The demo as a terminal starts it: Ctrl-C and a hang-up reach it. A test run started in the
# background (a non-interactive shell's ``cmd &``, as some CI runners do) inherits SIGINT
# ignored, which the demo rightly keeps ignored (simulator/stop_signals.py): the tests of what a
# terminal's signals do must not inherit that.
AS_FROM_A_TERMINAL = (
    "import runpy, signal; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "signal.signal(signal.SIGHUP, signal.SIG_DFL); "
    "runpy.run_module('simulator.demo', run_name='__main__', alter_sys=True)"
)


def start_demo(*args: str) -> DemoRun:
    """Start ``python -m simulator.demo *args`` in a session of its own, with a terminal's
    signal dispositions; read its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", AS_FROM_A_TERMINAL, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    run = DemoRun(proc, process_owner(proc.pid))
    assert proc.stdout is not None
    stdout = proc.stdout

    def read() -> None:
        for line in stdout:
            run.lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return run
