"""``model-fleet``'s command line: its sub-commands and flags, and the original system's flags
kept working as aliases of the sub-commands."""

from __future__ import annotations

import argparse
from typing import Final

from fleet_contract import completion, logformat
from fleet_contract.env import PROMETHEUS_URL as PROMETHEUS_URL_ENV
from fleet_contract.env import URL as URL_ENV
from fleet_contract.version import describe
from fleet_contract.yamlfile import config_options
from remediator.adapters.prometheus import DEFAULT_URL as PROMETHEUS_URL
from remediator.report import queries

__all__ = ["LEGACY_FLAGS", "build_parser", "translate_legacy"]

# The original system's flags, kept working as aliases of the subcommands.
LEGACY_FLAGS: Final = {
    "--status": "status",
    "--reset": "reset",
    "--downgrade": "downgrade",
    "--upgrade": "upgrade",
    "--monitor": "watch",
}


def _common() -> argparse.ArgumentParser:
    # SUPPRESS lets the same options appear before or after the subcommand.
    p = config_options()
    p.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"act through a running remediator at this URL (default: ${URL_ENV})",
    )
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    p.add_argument(
        "--log-format",
        default=argparse.SUPPRESS,
        choices=logformat.FORMATS,
        help="text, or json: one object a line, `serve`'s gunicorn included "
        "(default: $MODEL_FLEET_LOG_FORMAT, else text)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="model-fleet",
        description="Step a local LLM fleet down (or up) a ladder of models when VRAM runs short.",
        parents=[common],
        epilog="exit codes:\n"
        + "\n".join(f"  {int(code)}  {what}" for code, what in queries.EXIT_MEANINGS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=describe("model-fleet"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _fleet_commands(sub, common)
    _watch_command(sub, common)
    _setup_commands(sub, common)
    return parser


def _fleet_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """What is asked of the fleets, here or through ``--url``: status, switches, history."""
    p = sub.add_parser(
        "status", parents=[common], help="the status: a table on a terminal, else its JSON"
    )
    p.add_argument("--fleet", help="only this fleet")
    p.add_argument("--json", action="store_true", help="the status JSON even on a terminal")
    for name, what in (
        ("downgrade", "step one fleet down its ladder"),
        ("upgrade", "step one fleet up one rung"),
        ("reset", "go back to the top of the ladder"),
    ):
        p = sub.add_parser(name, parents=[common], help=what)
        p.add_argument("--fleet", help="the fleet (default: the only one)")
        p.add_argument("--reason", default="", help="recorded in the history")
        p.add_argument(
            "--dry-run", action="store_true", help="say what would happen, change nothing"
        )
    p = sub.add_parser(
        "history", parents=[common], help="the switch history: a table on a terminal, else JSON"
    )
    p.add_argument("--json", action="store_true", help="the history JSON even on a terminal")
    p.add_argument("--fleet", help="only this fleet")
    p.add_argument("--limit", type=int, default=20, help="newest N entries (default 20)")


def _watch_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """The live view."""
    p = sub.add_parser("watch", parents=[common], help="a live view: model, errors, VRAM, alerts")
    p.add_argument("--fleet", help="only this fleet (default: all)")
    p.add_argument(
        "--prometheus",
        default=None,
        help=f"live figures from here (default: ${PROMETHEUS_URL_ENV}, else prometheus.url "
        f"of the config, else {PROMETHEUS_URL})",
    )
    p.add_argument(
        "--interval", type=_seconds, default=2.0, help="seconds between frames (default 2)"
    )
    p.add_argument("--once", action="store_true", help="print one frame and exit")


def _setup_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """What sets a deployment up: the config's check, the monitoring files, shell completion and
    the service itself."""
    p = sub.add_parser(
        "check-config", parents=[common], help="validate and print the configuration"
    )
    p.add_argument(
        "--inventory",
        help="validate this inventory instead (with --config: that the config's fleets are "
        "those the inventory lists for its host)",
    )
    p = sub.add_parser(
        "render-monitoring",
        parents=[common],
        help="write Prometheus' targets and config and Alertmanager's config for an inventory",
    )
    p.add_argument("--inventory", required=True, help="the inventory YAML (docs/multi-host.md)")
    p.add_argument("--out", required=True, help="the directory to write into")
    p = sub.add_parser(
        "completion", help="print the shell completion script (bash: source <(model-fleet ...))"
    )
    p.add_argument("shell", choices=completion.SHELLS)
    p = sub.add_parser("serve", parents=[common], help="run the HTTP service under gunicorn")
    p.add_argument("--bind", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
    p.add_argument("--workers", type=int, default=None, help="gunicorn workers (default 3)")
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without a bearer token (only on a trusted network)",
    )


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def translate_legacy(argv: list[str]) -> list[str]:
    """``argv`` with an original system's flag (``--status``, ...) made its sub-command."""
    for i, arg in enumerate(argv):
        if arg in LEGACY_FLAGS:
            # The original --status printed its JSON, on a terminal too: scripts read it.
            extra = ["--json"] if arg == "--status" else []
            return [*argv[:i], LEGACY_FLAGS[arg], *extra, *argv[i + 1 :]]
    return argv
