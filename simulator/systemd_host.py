"""A test bed where systemd runs as PID 1: journald, units, D-Bus and polkit in a container.

Ollama as a systemd service (issue 20) means an exporter that reads journald and a remediator
that restarts units through D-Bus and polkit; a plain container has none of these. The image
(simulator.systemd_image) is Debian bookworm's systemd, dbus, polkitd, python3-systemd and sudo.

The host's Python runs inside unchanged: the repository, ``sys.prefix`` (the venv) and
``sys.base_prefix`` (where not under /usr) are mounted read-only at the same paths, and the
manager's environment holds ``PYTHONPATH=<repository>``, so units run the code under test even
from a worktree. Boot needs CAP_SYS_ADMIN, no seccomp filter, the cgroup tree and a tmpfs /run;
``--privileged`` is refused on the CI hosts and is not needed. Each container names the process
that started it (loop_setup's owner label): a later run removes what an interrupted one left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import docker
import docker.errors

from simulator.loop_setup import OWNER_LABEL, owner_gone, process_owner
from simulator.systemd_image import SYSTEMD_IMAGE, ensure_systemd_image

log = logging.getLogger(__name__)

HOST_LABEL: Final = "model-fleet.systemd-host"  # on every bed container, for the clean-up
REPO_ROOT: Final = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT_SECONDS: Final = 120.0  # a boot takes about a second; a loaded CI host, more
# A leftover whose owner cannot be judged (another host's, or none named) goes after this long;
# a test module holds its bed for a minute or two.
LEFTOVER_AGE_SECONDS: Final = 30 * 60.0
HOME_DIRS: Final = ("/home", "/root", "/run/user")  # hidden by ProtectHome=; see the drop-in
TMP_DIRS: Final = ("/tmp", "/var/tmp")  # replaced by PrivateTmp=; see the drop-in

_BOOTED: Final = ("running", "degraded")
_CGROUP: Final = "/sys/fs/cgroup"

__all__ = [
    "BOOT_TIMEOUT_SECONDS",
    "HOST_LABEL",
    "LEFTOVER_AGE_SECONDS",
    "REPO_ROOT",
    "SYSTEMD_IMAGE",
    "SystemdHost",
    "SystemdHostError",
    "cgroup_setup",
    "ensure_systemd_image",
    "home_python_dropin",
    "is_leftover",
    "python_mounts",
    "remove_leftovers",
]


class SystemdHostError(RuntimeError):
    """The bed could not be built or booted, or a command inside it failed."""


def python_mounts() -> tuple[str, ...]:
    """The host paths the bed mounts read-only so that this Python runs inside unchanged."""
    paths = [str(REPO_ROOT), sys.prefix]
    if not Path(sys.base_prefix).is_relative_to("/usr"):
        paths.append(sys.base_prefix)
    return tuple(dict.fromkeys(paths))


def cgroup_setup(v2: bool | None = None) -> tuple[str | None, str]:
    """(cgroup namespace mode, mount mode of the cgroup tree) for a host of cgroup ``v2`` or v1.

    v1 (the CI hosts, verified): Docker's default namespace, the host's tree read-only. v2:
    systemd must create its cgroups in the tree, which takes the host's cgroup namespace and a
    writable tree (the known recipe for systemd in Docker without --privileged; not yet run on
    a v2 host by this project).
    """
    if v2 is None:
        v2 = Path(_CGROUP, "cgroup.controllers").exists()
    return ("host", "rw") if v2 else (None, "ro")


def is_leftover(labels: dict[str, str], created: float, now: float) -> bool:
    """True when a bed container may go: its owner has ended, or it is unjudgeable and old."""
    owner = labels.get(OWNER_LABEL, "")
    if owner.partition(":")[0] == socket.gethostname():
        return owner_gone(owner)
    return now - created > LEFTOVER_AGE_SECONDS


def remove_leftovers(client: docker.DockerClient) -> list[str]:
    """Remove the bed containers an interrupted run left; return their names."""
    removed = []
    now = time.time()
    for c in client.containers.list(all=True, filters={"label": HOST_LABEL}):
        # "2024-05-01T10:00:00.123456789Z": seconds are enough to judge the age.
        created = datetime.fromisoformat(c.attrs["Created"][:19]).replace(tzinfo=UTC)
        if is_leftover(c.labels, created.timestamp(), now):
            with contextlib.suppress(docker.errors.APIError):  # another run may remove it too
                c.remove(force=True)
                removed.append(c.name)
                log.info("removed %s, a systemd bed an earlier run left", c.name)
    return removed


class SystemdHost:
    """One booted systemd container, removed on stop() (or leaving the ``with`` block)."""

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        name_prefix: str = "mf-systemd",
        labels: dict[str, str] | None = None,
    ) -> None:
        self._client = client
        self._name = f"{name_prefix}-{uuid.uuid4().hex[:10]}"
        self._labels = {**(labels or {}), HOST_LABEL: "1", OWNER_LABEL: process_owner()}
        self._container: Any = None

    def __enter__(self) -> SystemdHost:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def container(self) -> Any:
        """The docker container (started by start())."""
        if self._container is None:
            raise SystemdHostError(f"{self._name} is not started")
        return self._container

    @property
    def ip(self) -> str:
        """The container's bridge address, reachable from the host."""
        self.container.reload()
        networks = self.container.attrs["NetworkSettings"]["Networks"].values()
        return str(next(n["IPAddress"] for n in networks if n.get("IPAddress")))

    def start(self) -> None:
        """Boot the container and wait until systemd reports running (or degraded)."""
        remove_leftovers(self._client)
        image = ensure_systemd_image(self._client)
        cgroupns, cgroup_mode = cgroup_setup()
        mounts = {p: {"bind": p, "mode": "ro"} for p in python_mounts()}
        self._container = self._client.containers.run(
            image,
            name=self._name,
            hostname=self._name,
            labels=self._labels,
            detach=True,
            cap_add=["SYS_ADMIN"],
            security_opt=["seccomp=unconfined"],
            tmpfs={"/run": "", "/run/lock": ""},
            cgroupns=cgroupns,
            volumes={_CGROUP: {"bind": _CGROUP, "mode": cgroup_mode}, **mounts},
        )
        try:
            self._wait_booted()
            self._share_python()
        except BaseException:
            self.stop()
            raise

    def _wait_booted(self) -> None:
        started = time.monotonic()
        deadline = started + BOOT_TIMEOUT_SECONDS
        state = ""
        while time.monotonic() < deadline:
            left = max(1.0, deadline - time.monotonic())
            done = self.exec("systemctl", "is-system-running", "--wait", check=False, timeout=left)
            state = done.stdout.strip()
            if state in _BOOTED:
                break
            time.sleep(0.2)  # the manager's bus is not up yet
        else:
            raise SystemdHostError(
                f"{self._name}: systemd did not boot within {BOOT_TIMEOUT_SECONDS:.0f} s "
                f"(state {state!r}); its console: {self.container.logs(tail=30)!r}"
            )
        took = time.monotonic() - started
        if state == "degraded":
            failed = self.systemctl("list-units", "--failed", "--plain", "--no-legend")
            log.warning("%s booted degraded in %.1f s; failed: %s", self._name, took, failed)
        else:
            log.info("%s booted in %.1f s", self._name, took)

    def _share_python(self) -> None:
        # Docker creates a mount's missing parents 0755, but the image's /root is 0700: an
        # unprivileged user could not reach a Python under it. Read-only mounts keep theirs.
        parents = {str(p) for m in python_mounts() for p in Path(m).parents if str(p) != "/"}
        self.exec("chmod", "o+x", *sorted(parents), check=False)
        self.systemctl("set-environment", f"PYTHONPATH={REPO_ROOT}")

    def exec(
        self,
        *argv: str,
        user: str | None = None,
        check: bool = True,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the container, with the units' PYTHONPATH; a timeout exits 124."""
        cmd = ["docker", "exec"]
        if user is not None:
            cmd += ["--user", user]
        for key, value in {"PYTHONPATH": str(REPO_ROOT), **(env or {})}.items():
            cmd += ["--env", f"{key}={value}"]
        # `timeout` inside: a docker exec client killed on the host leaves its process running.
        cmd += [self.container.id, "timeout", "--kill-after=5", f"{timeout:.1f}", *argv]
        done = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", timeout=timeout + 30
        )
        if check and done.returncode != 0:
            raise SystemdHostError(
                f"{self._name}: {' '.join(argv)} exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        return done

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write ``text`` to ``path`` in the container (root-owned), making its directories.

        Through a shell in the container, not Docker's archive API: on Docker 20.10 that
        writes beneath a tmpfs mounted over the directory (/run), where no process sees it.
        The file is written beside ``path`` and renamed over it: a reader never sees it half.
        """
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1.mf-new" && chmod "$2" "$1.mf-new"'
        script += ' && mv -f "$1.mf-new" "$1"'
        cmd = ["docker", "exec", "-i", self.container.id, "sh", "-c", script, "sh", path]
        done = subprocess.run(
            [*cmd, f"{mode:o}"], input=text, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise SystemdHostError(f"{self._name}: could not write {path}: {done.stderr.strip()}")

    def install_unit(self, name: str, text: str) -> None:
        """Write /etc/systemd/system/``name`` (a drop-in too: ``x.service.d/y.conf``), reload."""
        self.write_file(f"/etc/systemd/system/{name}", text)
        self.systemctl("daemon-reload")

    def systemctl(self, *args: str) -> str:
        """``systemctl args...`` as root; its standard output (a failure raises)."""
        return self.exec("systemctl", *args).stdout

    def journal(self, *matches: str) -> list[dict[str, Any]]:
        """``journalctl -o json matches...``: one dict per entry, oldest first."""
        out = self.exec("journalctl", "--no-pager", "-o", "json", *matches).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        """Remove the container; safe to call twice."""
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


def home_python_dropin() -> str:
    """A unit drop-in that shows the mounted Python to a unit with ProtectHome=yes and
    PrivateTmp=yes.

    The bed's interpreter may live under a home (pyenv's ~/.pyenv), which a shipped unit
    hides, as it should on a host whose venv is under /opt. An empty tmpfs with read-only binds
    shows these paths alone and keeps every other home hidden. A checkout under /tmp (CI's
    clean clone, with its venv) would be hidden by the unit's private /tmp: it is bound
    read-only into it, the rest of that /tmp staying private. Test-only: the shipped units keep
    both settings.
    """
    mounts = python_mounts()
    homes = [p for p in mounts if any(Path(p).is_relative_to(h) for h in HOME_DIRS)]
    tmps = [p for p in mounts if any(Path(p).is_relative_to(t) for t in TMP_DIRS)]
    lines = ["[Service]"]
    if homes:
        lines.append("ProtectHome=tmpfs")
    if homes or tmps:
        lines.append(f"BindReadOnlyPaths={' '.join(homes + tmps)}")
    return "\n".join(lines) + "\n"
