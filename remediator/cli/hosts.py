"""``model-fleet render-monitoring`` and ``model-fleet check-config --inventory`` (the CLI's
side of remediator/hosts/inventory.py and remediator/hosts/render.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from fleet_contract.env import CONFIG as CONFIG_ENV
from remediator.config import ConfigError, load_config
from remediator.hosts.inventory import Inventory, load_inventory
from remediator.hosts.render import write_files
from remediator.report.queries import ExitCode


def _err(message: str) -> None:
    print(f"model-fleet: {message}", file=sys.stderr)


def summary(inventory: Inventory) -> dict[str, object]:
    """What check-config prints for a valid inventory."""
    return {
        "source": inventory.source,
        "hosts": {
            name: {
                "exporter": h.exporter,
                "remediator": h.remediator,
                "fleets": list(h.fleets),
                "credentials_file": h.credentials_file,
            }
            for name, h in inventory.hosts.items()
        },
        "alertmanagers": list(inventory.alertmanagers),
        "rules": inventory.rules,
        "notify_url": inventory.notify_url,
        "runbook_base_url": inventory.runbook_base_url,
    }


def check_config_against(inventory: Inventory, config_file: str) -> None:
    """ConfigError unless the config's host is in the inventory with exactly its fleets."""
    config = load_config(config_file)
    entry = inventory.hosts.get(config.host)
    if entry is None:
        raise ConfigError(
            f"{config.source}: host {config.host!r} is not in the inventory {inventory.source} "
            f"(hosts: {', '.join(inventory.hosts)})"
        )
    mine, listed = sorted(config.fleets), sorted(entry.fleets)
    if mine != listed:
        raise ConfigError(
            f"{config.source}: fleets {', '.join(mine)} of host {config.host} differ from "
            f"those {inventory.source} lists for it ({', '.join(listed)})"
        )


def run_inventory_command(args: argparse.Namespace) -> int:
    """Run render-monitoring or check-config --inventory; the exit code."""
    try:
        inventory = load_inventory(args.inventory)
        if args.command == "check-config":
            config_file = args.config or os.environ.get(CONFIG_ENV)
            if config_file:
                check_config_against(inventory, config_file)
            print(json.dumps(summary(inventory), indent=2))
            return ExitCode.OK
        if args.command != "render-monitoring":
            _err("--inventory is an option of check-config and render-monitoring only")
            return ExitCode.USAGE
    except ConfigError as exc:
        _err(f"invalid inventory: {exc}")
        return ExitCode.USAGE
    try:
        changed = write_files(inventory, args.out)
    except OSError as exc:
        _err(f"cannot write under {args.out}: {exc.strerror or exc}")
        return ExitCode.USAGE
    for path in changed:
        print(f"wrote {path}")
    if not changed:
        print(f"{args.out}: up to date")
    return ExitCode.OK
