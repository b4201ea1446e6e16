"""The one YAML loader both services read model-fleet.yaml with, and its error type."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Final

import yaml

from fleet_contract.env import CONFIG

DEFAULT_CONFIG_NAME: Final = "model-fleet.yaml"


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message names file and key."""


def config_options() -> argparse.ArgumentParser:
    """A parent parser (no help) holding the ``--config`` option both CLIs share."""
    parser = argparse.ArgumentParser(add_help=False)
    # SUPPRESS lets the same option appear before or after a subcommand.
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help=f"{DEFAULT_CONFIG_NAME} (default: ${CONFIG}, else ./{DEFAULT_CONFIG_NAME})",
    )
    return parser


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The file to read: ``explicit``, else $MODEL_FLEET_CONFIG, else ./model-fleet.yaml.

    None when neither is given and ./model-fleet.yaml does not exist: the defaults apply. A
    file that was asked for (argument or variable) is returned even when missing, so that
    :func:`load_yaml` says so instead of silently running on defaults.
    """
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(CONFIG):
        return Path(os.environ[CONFIG])
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.exists() else None


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """The parsed document at ``path`` ({} when empty); ConfigError naming the file otherwise."""
    chosen = Path(path)
    if not chosen.exists():
        raise ConfigError(f"{chosen}: configuration file not found")
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{chosen}: not valid YAML: {exc}") from exc
    return data if data is not None else {}
