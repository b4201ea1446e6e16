"""The live demo: VRAM fills up, the model server fails, model-fleet steps the fleet down.

Runs the whole loop of simulator/loop.py on this machine (no GPU needed: the exporter reads a
simulated GPU through the fake NVML library) and prints a timeline of what happened, with the
seconds between each step. Then it leaves Prometheus, Alertmanager and the remediator up until
Ctrl-C (or exits at once with --exit, as the tests run it).

However it ends (the timeline's end, --exit, Ctrl-C, SIGTERM, a closed terminal's SIGHUP, an
error; during start-up too) it stops what it started: its processes' groups and its
containers. Each run has a fleet of its own (demo-<6 hex digits>), and with it container names,
labels, ports and a work dir of its own, so that two demos run side by side on one engine. The
containers of an earlier demo that was killed outright (SIGKILL) are removed at start, once
the process that made them is gone.

Exit status: 0 when the fleet settled (also when stopped after that, as it asks to be); 1 when
it did not settle in time; 128 + the signal's number when a signal stopped it before that.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from simulator.loop import MODEL_MIB, Loop, LoopOptions, sample_values
from simulator.loop_setup import remove_orphans
from simulator.stop_signals import Stopped, StopSignals

DEMO_FLEET = "demo"  # each run's fleet is demo-<6 hex digits>


@dataclass
class Timeline:
    """Timestamped events, printed as they happen."""

    started: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)

    def event(self, what: str) -> None:
        """Print one line: seconds since start, seconds since the previous event, what."""
        now = time.monotonic()
        print(f"  t+{now - self.started:6.1f}s  (+{now - self.last:5.1f}s)  {what}", flush=True)
        self.events.append((now - self.started, what))
        self.last = now


def _say(line: str) -> None:
    """A line on stderr; a closed terminal (SIGHUP) must not stop the clean-up."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _started(workdir: Path, options: LoopOptions, signals: StopSignals) -> Iterator[Loop]:
    """A started Loop, stopped however the demo ends; no signal cuts that clean-up short."""
    loop = Loop(workdir, options)
    try:
        removed, unknown = remove_orphans(loop.docker, DEMO_FLEET)
        if removed:
            print(f"model-fleet demo: removed {', '.join(removed)}, left by a demo that was killed")
        if unknown:
            names = " ".join(unknown)
            print(f"model-fleet demo: an older demo's, left alone (docker rm -f {names})")
        loop.start()
        yield loop
    except Stopped as stop:
        _say(f"model-fleet demo: {stop.name}, stopping everything it started ...")
        raise
    finally:
        try:
            signals.stopping()
        finally:  # even if a signal came just before stopping() took effect
            loop.close()


def run_demo(workdir: Path, signals: StopSignals, *, exit_at_end: bool, max_seconds: float) -> int:
    """Run the scenario; return 0 when the fleet settled on a model that fits."""
    options = LoopOptions(
        fleet=f"{DEMO_FLEET}-{secrets.token_hex(3)}",
        simulate_vram=True,
        cooldown_seconds=5,
        gpu_total_mib=4096,
        other_used_mib=1024,
    )
    print("model-fleet demo: starting Docker containers, the exporter, the remediator,")
    print("Prometheus and Alertmanager on 127.0.0.1 (about 20 s) ...", flush=True)
    with _started(workdir, options, signals) as loop:
        assert loop.prometheus is not None
        print()
        print(f"  fleet         {loop.fleet} (containers {loop.server.name}, {loop.app.name})")
        print(f"  Prometheus    {loop.prometheus.url}/alerts")
        print(f"  Alertmanager  {loop.alertmanagers[0].url}")
        print(f"  remediator    {loop.remediator_url}/status")
        print(f"  exporter      {loop.exporter_url}/metrics")
        print(f"  work dir      {workdir}")
        print()
        tl = Timeline()
        other = options.other_used_mib
        model = loop.current_model_in_config()
        tl.event(
            f"fleet on {model} ({MODEL_MIB[model]} MiB); simulated GPU: "
            f"{options.gpu_total_mib} MiB, {other} MiB used by other work"
        )
        seen_errors = 0.0
        switches = 0
        alerts_seen: set[str] = set()
        alert_on = False
        third_error_at: float | None = None
        settled_since: float | None = None
        deadline = time.monotonic() + max_seconds
        fill_at = time.monotonic() + 5
        target_other = 2300  # leaves 1796 MiB: llama3.2:3b and phi3:mini no longer fit
        while time.monotonic() < deadline:
            if other < target_other and time.monotonic() >= fill_at:
                other = min(target_other, other + 400)
                fill_at = time.monotonic() + 2
                left = options.gpu_total_mib - other
                tl.event(f"other work now uses {other} MiB: {left} MiB left for the model")
            loop.set_vram(other)
            # One error per failed load, however many lines it prints (two here).
            metrics = loop.exporter_metrics()
            found = sample_values(metrics, "model_fleet_vram_errors_since_start", fleet=loop.fleet)
            errors = max(found, default=-1.0)
            if errors > seen_errors:
                lines = sample_values(
                    metrics, "model_fleet_vram_error_lines_total", fleet=loop.fleet
                )
                tl.event(
                    f"model server logged VRAM error #{errors:.0f} since it started (exporter, "
                    f"one per failed load; {sum(lines):.0f} matching log lines in all)"
                )
                if errors >= 3 and third_error_at is None:
                    third_error_at = time.monotonic()
            seen_errors = max(errors, 0.0)
            # One alert per fleet: a new one has a new activeAt.
            firing = {a.get("activeAt", "") for a in loop.firing("ModelFleetVRAMErrors")}
            for _ in sorted(firing - alerts_seen):
                tl.event(f"alert ModelFleetVRAMErrors fired for fleet {loop.fleet} (Prometheus)")
            alerts_seen |= firing
            alert_on = bool(firing)
            history = loop.history()
            for record in history[switches:]:
                took = ""
                if third_error_at is not None:
                    took = f", {time.monotonic() - third_error_at:.1f} s after the 3rd error"
                tl.event(f"switched {record['from']} -> {record['to']} (remediator{took})")
                third_error_at = None
                seen_errors = 0.0
            switches = len(history)
            model = loop.current_model_in_config()
            fits = MODEL_MIB.get(model, 10**6) <= options.gpu_total_mib - other
            if other >= target_other and fits and switches and not alert_on:
                settled_since = settled_since or time.monotonic()
                if time.monotonic() - settled_since > 10:
                    app = loop.app_log_tail()
                    tl.event(f"settled: {model} fits and runs without errors; app: {app!r}")
                    break
            else:
                settled_since = None
            time.sleep(0.25)
        else:
            print("model-fleet demo: the fleet did not settle in time", file=sys.stderr)
            print(loop.diagnostics(), file=sys.stderr)
            return 1
        print()
        print("Timeline done. State:", loop.status()["current_model"])
        if exit_at_end:
            return 0
        print(
            "Prometheus, Alertmanager and the remediator stay up; press Ctrl-C to stop.", flush=True
        )
        try:
            while True:
                # Short: a signal that another thread (the Ollama stand-in's) takes runs its
                # handler only when the main thread wakes.
                time.sleep(0.5)
        except Stopped:
            _say("stopping ...")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of scripts/demo."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exit", action="store_true", help="exit after the timeline")
    parser.add_argument("--max-seconds", type=float, default=240, help="give up after this long")
    args = parser.parse_args(argv)
    with StopSignals() as signals:
        try:
            with tempfile.TemporaryDirectory(prefix="model-fleet-demo-") as tmp:
                return run_demo(
                    Path(tmp), signals, exit_at_end=args.exit, max_seconds=args.max_seconds
                )
        except Stopped as stop:
            return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
