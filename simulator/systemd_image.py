"""The systemd test bed's image: Debian bookworm with systemd as PID 1, made locally.

Made as the python base is (simulator.base_image): ``debootstrap --variant=minbase bookworm``
with systemd, dbus, polkitd (JavaScript rules, polkit 122), python3.11, python3-systemd and sudo
(``visudo`` checks the shipped sudoers file), cached as a tarball under base_image's cache_dir
and imported as SYSTEMD_IMAGE with base_image's test-only label. Used by simulator.systemd_host.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Final

import docker

from simulator.base_image import (
    SUITE,
    TEST_BASE_LABEL,
    build_rootfs_tarball,
    cache_dir,
    has_image,
    import_rootfs,
)

log = logging.getLogger(__name__)

SYSTEMD_IMAGE: Final = "model-fleet-test/systemd-host:bookworm"
# libpam-systemd: polkitd needs "default-logind | logind", an alternative debootstrap does not
# resolve (it provides both).
PACKAGES: Final = (
    "systemd",
    "systemd-sysv",
    "libpam-systemd",
    "dbus",
    "polkitd",
    "python3.11",
    "python3-systemd",
    "sudo",
)
_CHANGES: Final = (
    f"LABEL {TEST_BASE_LABEL}=1",
    "ENV container=docker",  # systemd's way of knowing it runs in a container
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    # On a host, systemd makes / shared; in a container it leaves Docker's private mounts. A
    # unit's credentials (LoadCredential=) are mounted from a child namespace and must
    # propagate back to /run, else the unit finds an empty root-only directory.
    'CMD ["/bin/sh", "-c", "mount --make-rshared / && exec /lib/systemd/systemd"]',
)
# A new package list makes a new tarball, a new list or image a new import: never a stale bed.
_ROOTFS_DIGEST: Final = hashlib.sha256("\n".join(PACKAGES).encode()).hexdigest()[:12]
_IMAGE_DIGEST: Final = hashlib.sha256("\n".join(PACKAGES + _CHANGES).encode()).hexdigest()[:12]
_DIGEST_LABEL: Final = "model-fleet.systemd-host.digest"


def ensure_systemd_image(client: docker.DockerClient) -> str:
    """Return SYSTEMD_IMAGE, importing the cached rootfs (or a new one) when it is missing."""
    if has_image(client, SYSTEMD_IMAGE):
        labels = client.images.get(SYSTEMD_IMAGE).labels or {}
        if labels.get(_DIGEST_LABEL) == _IMAGE_DIGEST:
            return SYSTEMD_IMAGE
        log.info("%s is of another package list or settings: importing it again", SYSTEMD_IMAGE)
    tarball = cache_dir() / f"rootfs-{SUITE}-systemd-{_ROOTFS_DIGEST}.tar"
    if not tarball.exists():
        started = time.monotonic()
        build_rootfs_tarball(tarball, PACKAGES)
        log.info("built %s in %.0f s", tarball.name, time.monotonic() - started)
    import_rootfs(tarball, SYSTEMD_IMAGE, (*_CHANGES, f"LABEL {_DIGEST_LABEL}={_IMAGE_DIGEST}"))
    return SYSTEMD_IMAGE
