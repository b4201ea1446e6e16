"""What the systemd tests share: the shipped deploy/systemd files, where they put things, and a
poll. The tests install the shipped files as docs/operations.md says."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, TypeVar

import pytest

from simulator.systemd_host import REPO_ROOT

DEPLOY: Final = REPO_ROOT / "deploy" / "systemd"
USER: Final = "model-fleet"
VENV: Final = "/opt/model-fleet/venv"  # the units' fixed path; in the bed, a link to this venv
UNITS: Final = ("model-fleet-exporter.service", "model-fleet-remediator.service")
T = TypeVar("T")


def shipped(name: str) -> str:
    """A file of deploy/systemd, as shipped."""
    return (DEPLOY / name).read_text(encoding="utf-8")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 30) -> T:
    """Poll ``probe`` until it returns a value; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout:.0f} s")
