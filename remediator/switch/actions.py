"""The real actions of a switch: pull (or create), unload, rewrite configs, restart, verify;
undo on failure.

Order matters. Everything that can fail without side effects comes first (pull the new
model, or create a custom rung's: remediator/switch/provision.py; find the containers), so most
failures leave nothing to undo. From the config rewrite on, a failure restores the files and
restarts the containers already touched, which then read the old model again.
"""

from __future__ import annotations

from remediator import appconfig
from remediator.appconfig import AppConfigError, ConfigSnapshot
from remediator.config import FleetConfig, placement_of
from remediator.domain.loggers import ACTIONS as log
from remediator.ports.model_server import ModelServer, ModelServerError
from remediator.ports.runtime import (
    ROLE_APP,
    ROLE_SERVER,
    ContainerError,
    ContainerRef,
    Probe,
    Runtime,
)
from remediator.switch import moving
from remediator.switch.journal import crash_point, journaled
from remediator.switch.plan import StepRecorder, SwitchFailed, SwitchPlan
from remediator.switch.provision import make_present, would_make_present
from remediator.switch.readiness import (
    AppProbe,
    Ready,
    configs_and_server_on,
    readiness_probe,
    settle,
    wait_ready,
)


def _ignore(step: str, detail: str = "") -> None:
    pass


class FleetActions:
    """Carries out switches for one fleet through its model server, its runtime and the
    app-config files; it knows them only by their protocols."""

    def __init__(
        self,
        fleet: FleetConfig,
        server: ModelServer,
        runtime: Runtime,
        *,
        app_probe: AppProbe | None,
    ) -> None:
        self.fleet = fleet
        self.server = server
        self.runtime = runtime
        self.app_probe = app_probe
        self.targets = list(fleet.app_config)

    def _readiness(self, role: str, model: str) -> Probe | None:
        """The service's own readiness check for ``role`` on ``model``, if it has one."""
        return readiness_probe(self.fleet, self.server, self.app_probe, role, model)

    # -- the transaction -----------------------------------------------------------------

    def execute(
        self, plan: SwitchPlan, dry_run: bool, record: StepRecorder | None = None
    ) -> list[str]:
        """Perform the plan, or raise SwitchFailed after putting everything back.

        ``record`` is told each completed step (the switch journal, remediator/switch/journal.py).
        """
        if plan.to_gpu is not None:  # a move: the same model on another GPU
            return self._move(plan, dry_run, record or _ignore)
        if dry_run:
            return self._dry_run(plan)
        note: StepRecorder = record or _ignore
        steps: list[str] = []
        fleet, new, old = self.fleet, plan.to_rung.name, plan.from_rung.name

        present = make_present(self.server, plan.to_rung, fleet.pull_timeout_seconds)
        steps += journaled(present, note)

        try:
            servers, apps = self._find()
        except ContainerError as exc:
            raise SwitchFailed("find_containers", str(exc)) from exc
        if not servers and not apps:
            log.warning(
                "fleet %s: no container found; the config is rewritten and the application "
                "reads it when it starts",
                fleet.name,
            )
            steps.append("no containers found")
        note("found", " ".join(ref.name for ref in servers + apps))

        try:
            freed = self.server.unload(old)
        except ModelServerError as exc:
            raise SwitchFailed("unload", str(exc)) from exc
        steps.append(f"unloaded {old}" if freed else f"{old} was not loaded")
        note("unloaded", old)

        try:
            snap = appconfig.write_all(self.targets, new)
        except AppConfigError as exc:
            raise SwitchFailed("write_config", str(exc)) from exc
        steps += [f"wrote {t.describe()}" for t in self.targets]
        note("config_written", new)

        return steps + self._restart(servers, apps, plan, snap, note)

    def _restart(
        self,
        servers: list[ContainerRef],
        apps: list[ContainerRef],
        plan: SwitchPlan,
        snap: ConfigSnapshot,
        note: StepRecorder,
    ) -> list[str]:
        """Restart the model server, then the applications that call it, each found ready on
        the new model; on a failure, roll back and raise SwitchFailed naming the step."""
        new, old = plan.to_rung.name, plan.from_rung.name
        touched: list[ContainerRef] = []
        ready: list[Ready] = []
        steps: list[str] = []
        step = "restart"
        try:
            for group, role in ((servers, ROLE_SERVER), (apps, ROLE_APP)):
                step = "restart"
                for ref in group:
                    touched.append(ref)
                    self.runtime.restart(ref, self.fleet.containers.stop_timeout_seconds)
                    note(f"restarted_{role}", ref.name)
                step = "verify"
                ready += wait_ready(self.fleet, self.runtime, group, self._readiness(role, new))
                steps += [f"restarted {ref.name}" for ref in group]
                note(f"verified_{role}", new)
            settle(self.fleet, self.runtime, ready)
            note("settled")
        except ContainerError as exc:
            problems = self._roll_back(snap, touched, old)
            raise SwitchFailed(step, str(exc), problems) from exc
        return steps

    def _move(self, plan: SwitchPlan, dry_run: bool, note: StepRecorder) -> list[str]:
        """Recreate the model server on ``plan.to_gpu`` (:mod:`remediator.switch.moving`)."""
        try:
            servers = self._find_role(ROLE_SERVER)
        except ContainerError as exc:
            raise SwitchFailed("find_containers", str(exc)) from exc
        if dry_run:
            return [f"would move {ref.name} to GPU {plan.to_gpu}" for ref in servers]
        probe = self._readiness(ROLE_SERVER, plan.from_rung.name)
        return journaled(moving.move_servers(self.fleet, self.runtime, plan, servers, probe), note)

    def resolve_move(self, model: str, gpu: str, *, forward: bool) -> list[str]:
        """Finish an interrupted move or take it back
        (:func:`remediator.switch.moving.resolve_move`), then make the fleet's GPU config name
        ``gpu``, where the model server runs now."""
        try:
            found = self._find_role(ROLE_SERVER)
        except ContainerError as exc:
            return [str(exc)]
        probe = self._readiness(ROLE_SERVER, model)
        problems = moving.resolve_move(self.fleet, self.runtime, found, probe, forward=forward)
        return problems or moving.write_gpu_config(self.fleet, gpu)

    def _find(self) -> tuple[list[ContainerRef], list[ContainerRef]]:
        """The containers a switch restarts: never one a move put aside (``<name>.moving``,
        still labelled as the model server): that one is the move's, resolved by recovery."""
        servers = self._find_role(ROLE_SERVER) if self.fleet.containers.restart_server else []
        servers, kept = moving.aside(servers)
        if kept:
            log.warning(
                "fleet %s: left alone, put aside by a move: %s",
                self.fleet.name,
                ", ".join(r.name for r in kept),
            )
        return servers, self._find_role(ROLE_APP)

    def _find_role(self, role: str) -> list[ContainerRef]:
        """The role's containers (or units) by its placement; none asked of the runtime when
        nothing names the role (a fleet all under systemd never asks Docker)."""
        where = placement_of(self.fleet, role)
        if where.finds_nothing:
            return []
        return self.runtime.find(self.fleet.name, role, where.names, use_labels=where.use_labels)

    def _roll_back(self, snap: ConfigSnapshot, touched: list[ContainerRef], old: str) -> list[str]:
        """Restore the configs and restart what was touched; return what could not be undone."""
        problems: list[str] = []
        try:
            snap.restore()
        except AppConfigError as exc:
            problems.append(str(exc))
        c = self.fleet.containers
        for ref in touched:
            try:
                self.runtime.restart(ref, c.stop_timeout_seconds)
            except ContainerError as exc:
                problems.append(str(exc))
        try:
            for role in (ROLE_SERVER, ROLE_APP):
                group = [ref for ref in touched if ref.role == role]
                settle(
                    self.fleet,
                    self.runtime,
                    wait_ready(self.fleet, self.runtime, group, self._readiness(role, old)),
                )
        except ContainerError as exc:
            problems.append(str(exc))
        log.warning(
            "fleet %s: rolled back (configs restored, %d container(s) restarted on the old model)"
            "%s",
            self.fleet.name,
            len(touched),
            f"; could not undo: {'; '.join(problems)}" if problems else "",
        )
        return problems

    # -- resolving an interrupted switch (remediator/switch/recovery.py) ---------------------------

    def inspect(self, model: str) -> list[str]:
        """Why the fleet does not run ``model`` now: the app configs name it, the model server
        lists it, every container of the fleet runs and the app's health probe names it.
        Empty when it does."""
        problems = configs_and_server_on(self.targets, self.server, model)
        try:
            servers, apps = self._find()
            for ref in servers + apps:
                state = self.runtime.state(ref)
                if state.status != "running":
                    problems.append(f"{ref.name} is {state.status}")
        except ContainerError as exc:
            problems.append(str(exc))
        app = self._readiness(ROLE_APP, model)
        if app is not None and (why := app()) is not None:
            problems.append(why)
        return problems

    def restore(self, old: str, new: str, *, restart: bool) -> list[str]:
        """Put the fleet back on ``old``: the configs name it, ``new`` is unloaded and, with
        ``restart``, every container of the fleet is restarted and found ready on ``old``.
        Returns what could not be done (empty: the fleet runs ``old``). Idempotent."""
        problems: list[str] = []
        try:
            appconfig.write_all(self.targets, old)
        except AppConfigError as exc:
            problems.append(str(exc))
        crash_point("recovery_config_written")
        if new != old:
            try:
                self.server.unload(new)
            except ModelServerError as exc:
                log.warning("fleet %s: could not unload %s: %s", self.fleet.name, new, exc)
        if not restart:
            return problems
        try:
            servers, apps = self._find()
        except ContainerError as exc:
            return [*problems, str(exc)]
        try:
            for group, role in ((servers, ROLE_SERVER), (apps, ROLE_APP)):
                for ref in group:
                    self.runtime.restart(ref, self.fleet.containers.stop_timeout_seconds)
                ready = wait_ready(self.fleet, self.runtime, group, self._readiness(role, old))
                settle(self.fleet, self.runtime, ready)
        except ContainerError as exc:
            problems.append(str(exc))
        return problems

    def _dry_run(self, plan: SwitchPlan) -> list[str]:
        """Every step the switch would take; only read-only lookups, nothing changes."""
        new, old = plan.to_rung.name, plan.from_rung.name
        steps = []
        steps.append(would_make_present(self.server, plan.to_rung))
        steps.append(f"would unload {old}")
        steps += [f"would write {new} to {t.describe()}" for t in self.targets]
        try:
            servers, apps = self._find()
            steps += [f"would restart {ref.name} ({ref.role})" for ref in servers + apps]
            if not servers and not apps:
                steps.append("no containers found to restart")
        except ContainerError as exc:
            steps.append(f"would restart the fleet's containers (could not list them: {exc})")
        for step in steps:
            log.info("fleet %s: dry run: %s", self.fleet.name, step)
        return steps
