"""Which model-fleet this is: the version (pyproject.toml, the one source) and the revision.

The version is the installed package's (``importlib.metadata``: pip wrote it from
pyproject.toml). The revision is the commit it was built from: ``MODEL_FLEET_REVISION`` (the
image sets it from its build argument), else the checkout's git HEAD when it runs from one
(read from the files: no git needed), else ``unknown``. ``--version`` of both commands and
``model_fleet_build_info{version,revision}`` of both services print these.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Final

from fleet_contract.env import REVISION as REVISION_ENV

PACKAGE: Final = "model-fleet"
UNKNOWN: Final = "unknown"
SHORT: Final = 12  # hex digits of a commit shown
_CHECKOUT: Final = Path(__file__).resolve().parent.parent


def version() -> str:
    """The installed package's version (``0+unknown`` when it is not installed)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def revision(checkout: Path = _CHECKOUT) -> str:
    """The commit this runs from: the environment's, else the checkout's HEAD, else unknown."""
    given = os.environ.get(REVISION_ENV, "").strip()
    if given:
        return given[:SHORT]
    return _git_head(checkout) or UNKNOWN


def describe(prog: str) -> str:
    """What ``prog --version`` prints."""
    return f"{prog} {version()} (revision {revision()})"


def _git_head(checkout: Path) -> str | None:
    """The commit HEAD names in ``checkout``'s git directory (a worktree's too), or None."""
    git = checkout / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            git = (checkout / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:SHORT] or None
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").is_file():  # a worktree keeps its refs in the main git dir
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()[:SHORT]
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(f" {ref}"):
                return line.split(" ", 1)[0][:SHORT]
    except (OSError, IndexError):
        return None
    return None
