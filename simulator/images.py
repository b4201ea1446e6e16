"""Container images built from the host's static busybox (nothing can be pulled here)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import docker

BUSYBOX_IMAGE = "model-fleet-sim/busybox:latest"


def busybox_binary() -> Path:
    """The host's static busybox, which the images are built from."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(candidate):
            return Path(candidate)
    raise RuntimeError("busybox not found: install Debian's busybox-static (scripts/bootstrap)")


def build_busybox_image(client: docker.DockerClient, tag: str = BUSYBOX_IMAGE) -> str:
    """Build a FROM-scratch image holding busybox and its applets; return the tag."""
    with tempfile.TemporaryDirectory(prefix="mf-busybox-") as ctx:
        shutil.copy2(busybox_binary(), Path(ctx) / "busybox")
        (Path(ctx) / "Dockerfile").write_text(
            "FROM scratch\n"
            "COPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
            'CMD ["/bin/sh"]\n'
        )
        client.images.build(path=ctx, tag=tag, rm=True, forcerm=True)
    return tag
