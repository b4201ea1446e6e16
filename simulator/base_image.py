"""The ``python:3.11-slim`` base the shipped Dockerfiles build on, made locally when none exists.

The shipped images start ``FROM python:3.11-slim``. Where a registry answers, Docker pulls it
and nothing here runs. Where none does (CI machines without registry access), this module
makes an equivalent from Debian packages: ``debootstrap --variant=minbase bookworm`` with
python3.11, venv support and ``python`` on PATH, imported as ``python:3.11-slim``, so the
shipped Dockerfiles build unchanged.

Test-only, and it says so: the image carries the label ``model-fleet.test-base=1``, and the
machine's CA bundle is copied in (with ``PIP_CERT`` pointing at it) because outgoing TLS may
be re-signed by a proxy on build machines. Nothing of this goes into the shipped Dockerfiles.

A real image is never replaced: an existing ``python:3.11-slim`` is used as it is. The root
filesystem is cached as a tarball (``$XDG_CACHE_HOME/model-fleet``), so a fresh engine on the
same machine imports it in seconds instead of bootstrapping again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import docker
import docker.errors

log = logging.getLogger(__name__)

BASE_IMAGE = "python:3.11-slim"
TEST_BASE_LABEL = "model-fleet.test-base"
SUITE = "bookworm"
# python3-distutils: debootstrap does not resolve python3.11-venv's alternative dependency.
PACKAGES = (
    "python3.11",
    "python3.11-venv",
    "python3-distutils",
    "python-is-python3",
    "ca-certificates",
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
_BASE_CHANGES = (
    f"LABEL {TEST_BASE_LABEL}=1",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    f"ENV PIP_CERT={HOST_CA_BUNDLE}",
    'CMD ["python3"]',
)


def cache_dir() -> Path:
    """Where the root filesystem tarball is kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "model-fleet"


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (debootstrap must reach the same one)."""
    files = [*sorted(sources.glob("sources.list.d/*.sources")), sources / "sources.list"]
    files += sorted(sources.glob("sources.list.d/*.list"))
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for url in re.findall(r"(?m)^(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+)", text):
            if url.rstrip("/").endswith("/debian") and "security" not in url:
                return str(url).rstrip("/")
    return _DEFAULT_MIRROR


def has_image(client: docker.DockerClient, tag: str) -> bool:
    """True when the engine holds ``tag``."""
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_base_image(client: docker.DockerClient, tag: str = BASE_IMAGE) -> str:
    """Make sure ``tag`` exists: keep it, else pull it, else import the cached or a new rootfs."""
    if has_image(client, tag):
        return tag
    repository, _, version = tag.partition(":")
    try:
        client.images.pull(repository, tag=version or "latest")
        log.info("pulled %s", tag)
        return tag
    except docker.errors.APIError as exc:
        log.info("cannot pull %s (%s): making it locally from Debian packages", tag, exc)
    tarball = cache_dir() / f"rootfs-{SUITE}-python3.11.tar"
    if not tarball.exists():
        build_rootfs_tarball(tarball)
    import_rootfs(tarball, tag, _BASE_CHANGES)
    return tag


def build_rootfs_tarball(out: Path, packages: Sequence[str] = PACKAGES) -> None:
    """debootstrap a minimal bookworm with ``packages`` into a tarball at ``out``."""
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing: install it (scripts/bootstrap does)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mf-rootfs-") as tmp:
        root = Path(tmp) / "root"
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            SUITE,
            str(root),
            apt_mirror(),
        ]
        log.info("running %s", " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({done.returncode}): {done.stdout[-2000:]}")
        # Test-only trust: the build machine's CA bundle, for pip behind a re-signing proxy.
        if HOST_CA_BUNDLE.exists():
            (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
            shutil.copy2(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = out.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.replace(out)  # the cache holds a whole tarball or none


def import_rootfs(tarball: Path, tag: str, changes: Sequence[str]) -> None:
    """``docker import`` a rootfs tarball as ``tag``, with Dockerfile ``changes`` applied."""
    cmd = ["docker", "import"]
    for change in changes:
        cmd += ["--change", change]
    cmd += [str(tarball), tag]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"docker import of {tarball} failed: {done.stderr.strip()}")
    log.info("imported %s from %s", tag, tarball)
