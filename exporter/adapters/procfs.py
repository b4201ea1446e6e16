"""Which container owns a process: read from /proc/<pid>/cgroup (needs the host PID namespace).

A process of a systemd service outside any container (Ollama's own install runs it as
``ollama.service``) is owned by its unit: the unit's name stands for the container ID, as the
journald log source names units (exporter.adapters.journald).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

# Docker (cgroupfs: /docker/<id>; systemd: docker-<id>.scope), containerd, CRI-O and podman
# all put the 64-hex container ID in the cgroup path; nested setups list the outer one first.
_CONTAINER_ID: Final = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")
_SERVICE: Final = re.compile(r"/([^/]+\.service)(?:/[^/]*)?$")  # .../ollama.service[/sub]


def container_id_from_cgroup(text: str) -> str | None:
    """The innermost container ID named in a /proc/<pid>/cgroup file, else the systemd
    service the process runs in, or None."""
    unit = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ids = _CONTAINER_ID.findall(parts[2])
        if ids:
            return str(ids[-1])
        found = _SERVICE.search(parts[2])
        if found is not None and unit is None:
            unit = found.group(1)
    return unit


def container_id_of(pid: int, proc_root: str = "/proc") -> str | None:
    """The ID of the container process ``pid`` runs in; None for a host process or no access."""
    try:
        text = (Path(proc_root) / str(pid) / "cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return container_id_from_cgroup(text)
