"""A second Docker engine on this machine, for tests that need two "hosts".

``second_engine()`` starts a dockerd of its own next to the machine's engine and removes it
again: its own API socket, data root, exec root (where dockerd also puts the containerd it
starts, with its own socket and state), pid file, config file (an empty one, so the machine's
/etc/docker/daemon.json is not read) and log, all under one temporary directory.

Its own bridge: a Linux bridge made here (``ip link add NAME type bridge`` with an address in
an unused private /24) and handed to dockerd with ``--bridge``. A second engine started on the
default ``docker0`` would share it, and when it stops it deletes ``docker0``: the first
engine's containers lose their network. ``--iptables=false --ip-masq=false`` keep its hands off
the first engine's firewall rules; containers still start and reach the bridge's address (no
NAT to the outside, which no test needs). The bridge is deleted here after the engine stops.

Stopping: every container of the engine is removed, dockerd gets SIGTERM (SIGKILL after a
grace period), then whatever it left behind is cleaned up: processes still naming the engine's
directory (its containerd, container shims), mounts under it, the bridge, the directory.
``leftovers()`` lists what would remain, for the tests to assert nothing does.

With ``gpu_hook=True`` its dockerd finds a stand-in for the NVIDIA Container Toolkit's hook
first on its PATH (simulator.nvidia_hook): it registers its ``nvidia`` device driver, so a
container with an NVIDIA device request (``--gpus device=1``, a fleet's move) starts here
without a GPU, and ``hook_starts()`` says which GPUs each start was given.

Needs root, dockerd and ip; ``why_not_available()`` says which is missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from simulator import nvidia_hook

# Where the bridges' subnets are taken from: private, and far from Docker's default pools
# (172.17.0.0/16 and up, 192.168.0.0/16).
SUBNET_POOL = ipaddress.IPv4Network("10.213.0.0/16")
BRIDGE_PREFIX = "mfbr"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


class EngineError(RuntimeError):
    """The second engine could not be started."""


def why_not_available() -> str | None:
    """Why this machine cannot run a second dockerd here, or None when it can."""
    if os.geteuid() != 0:
        return "a second dockerd needs root (its own bridge, mounts, containerd)"
    for binary in ("dockerd", "containerd", "ip"):
        if shutil.which(binary) is None:
            return f"{binary} is not on PATH"
    return None


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine has an address or a route in."""
    nets: list[ipaddress.IPv4Network] = []
    for entry in json.loads(_ip("-j", "-4", "addr").stdout or "[]"):
        for addr in entry.get("addr_info", []):
            nets.append(ipaddress.IPv4Interface(f"{addr['local']}/{addr['prefixlen']}").network)
    for route in json.loads(_ip("-j", "-4", "route").stdout or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of SUBNET_POOL that overlaps nothing on this machine (picked at random)."""
    used = used_networks()
    candidates: list[ipaddress.IPv4Network] = list(SUBNET_POOL.subnets(new_prefix=24))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(other) for other in used):
            return net
    raise EngineError(f"no free /24 left in {SUBNET_POOL}")


def bridge_exists(name: str) -> bool:
    """True when a network device called ``name`` exists."""
    return _ip("link", "show", "dev", name).returncode == 0


def _processes_naming(text: str) -> list[int]:
    """PIDs whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


@dataclass
class SecondEngine:
    """A running second dockerd: its paths, its bridge, a client for it."""

    root: Path
    bridge: str
    subnet: ipaddress.IPv4Network
    proc: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0  # seconds from the start of dockerd until it answered
    # The stand-in NVIDIA hook on dockerd's PATH (simulator.nvidia_hook): GPU requests start.
    gpu_hook: bool = False
    _clients: list[docker.DockerClient] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        """The engine's API socket."""
        return self.root / "docker.sock"

    @property
    def docker_host(self) -> str:
        """The engine's address as DOCKER_HOST takes it."""
        return f"unix://{self.socket}"

    @property
    def gateway(self) -> str:
        """The bridge's address: the host, as the engine's containers reach it."""
        return str(next(self.subnet.hosts()))

    @property
    def log(self) -> Path:
        """dockerd's log (its containerd logs here too)."""
        return self.root / "dockerd.log"

    @property
    def hook_log(self) -> Path:
        """Where the stand-in NVIDIA hook records each start (with ``gpu_hook``)."""
        return self.root / "nvidia-hook.log"

    def hook_starts(self) -> list[nvidia_hook.HookStart]:
        """The container starts the stand-in NVIDIA hook saw, oldest first."""
        return nvidia_hook.read_log(self.hook_log)

    def client(self, timeout: int = 60) -> docker.DockerClient:
        """A Docker SDK client for this engine (closed when the engine stops)."""
        client = docker.DockerClient(base_url=self.docker_host, timeout=timeout)
        self._clients.append(client)
        return client

    def info(self) -> dict[str, Any]:
        """``docker info`` of this engine."""
        return dict(self.client().info())

    def log_tail(self, lines: int = 40) -> str:
        """The end of dockerd's log, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    # -- start and stop ---------------------------------------------------------------------

    def start(self, storage_driver: str | None = None) -> None:
        """Make the bridge, start dockerd, wait until it answers."""
        for sub in ("data", "exec"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "daemon.json").write_text("{}\n")
        self._add_bridge()
        argv = [
            "dockerd",
            f"--host={self.docker_host}",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'docker.pid'}",
            f"--config-file={self.root / 'daemon.json'}",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-masq=false",
        ]
        if storage_driver:
            argv.append(f"--storage-driver={storage_driver}")
        env = None
        if self.gpu_hook:
            # On PATH when dockerd starts: it looks for the hook once, as it starts.
            hook_dir = self.root / "hook-bin"
            nvidia_hook.write_hook(hook_dir)
            env = nvidia_hook.dockerd_env(hook_dir, self.hook_log)
        began = time.monotonic()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        while not self._answers():
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() - began > START_TIMEOUT:
                raise EngineError(
                    f"dockerd did not answer in {START_TIMEOUT:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self.started_in = time.monotonic() - began

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            client = docker.DockerClient(base_url=self.docker_host, timeout=5)
        except (docker.errors.DockerException, OSError):
            return False
        try:
            return bool(client.ping())
        except (docker.errors.DockerException, OSError):
            return False
        finally:
            client.close()

    def _add_bridge(self) -> None:
        steps = [
            ("link", "add", self.bridge, "type", "bridge"),
            ("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge),
            ("link", "set", self.bridge, "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                raise EngineError(f"ip {' '.join(step)}: {done.stderr.strip()}")

    def stop(self) -> None:
        """Remove the engine's containers, stop dockerd, clean up what it left behind."""
        if self.proc is not None and self.proc.poll() is None:
            self._remove_containers()
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.proc is not None:
            _terminate(self.proc)
        # Its containerd and shims normally go with it; after a SIGKILL they may not.
        for pid in _processes_naming(str(self.root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for point in _mounts_under(self.root):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        if bridge_exists(self.bridge):
            _ip("link", "del", self.bridge)
        shutil.rmtree(self.root, ignore_errors=True)

    def _remove_containers(self) -> None:
        with contextlib.suppress(docker.errors.DockerException, OSError):
            client = docker.DockerClient(base_url=self.docker_host, timeout=30)
            try:
                for container in client.containers.list(all=True):
                    with contextlib.suppress(docker.errors.APIError):
                        container.remove(force=True)
            finally:
                client.close()

    def leftovers(self) -> list[str]:
        """What of this engine is still there (empty after stop())."""
        found = [f"process {pid}" for pid in _processes_naming(str(self.root))]
        found += [f"mount {point}" for point in _mounts_under(self.root)]
        if bridge_exists(self.bridge):
            found.append(f"bridge {self.bridge}")
        if self.root.exists():
            found.append(f"directory {self.root}")
        return found


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def second_engine(
    storage_driver: str | None = None, *, gpu_hook: bool = False
) -> Iterator[SecondEngine]:
    """A second dockerd with its own bridge (and, with ``gpu_hook``, the stand-in NVIDIA hook on
    its PATH), stopped and removed on exit."""
    reason = why_not_available()
    if reason:
        raise EngineError(reason)
    # /tmp keeps the socket's path short (a unix socket's path has at most 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="mf-engine-", dir="/tmp"))
    engine = SecondEngine(
        root=root,
        bridge=f"{BRIDGE_PREFIX}{uuid.uuid4().hex[:8]}",
        subnet=free_subnet(),
        gpu_hook=gpu_hook,
    )
    try:
        engine.start(storage_driver)
        yield engine
    finally:
        engine.stop()
