"""``model-fleet-exporter``: parse the command line, then hand over to main.

model-fleet-exporter serve [--bind HOST:PORT] [--config FILE] [--label KEY=VALUE]...
                           [--container NAME[=FLEET]]... [--no-nvml] [--no-docker]
                           [--proc-root DIR]
model-fleet-exporter scan FILE|- [--config FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from exporter.config import ConfigError, ExporterConfig, load_config, parse_bind
from fleet_contract import completion, logformat
from fleet_contract.version import describe
from fleet_contract.yamlfile import config_options

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # could not listen, or the log file could not be read
EXIT_USAGE: Final = 2  # bad arguments or invalid configuration

log = logging.getLogger("model-fleet-exporter")


def _parser() -> argparse.ArgumentParser:
    common = config_options()
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: INFO)",
    )
    common.add_argument(
        "--log-format",
        default=argparse.SUPPRESS,
        choices=logformat.FORMATS,
        help="text, or json: one object a line (default: $MODEL_FLEET_LOG_FORMAT, else text)",
    )
    p = argparse.ArgumentParser(
        prog="model-fleet-exporter",
        description="VRAM from NVML and VRAM-error counters from container logs, for Prometheus.",
        parents=[common],
        epilog=f"exit codes:\n  {EXIT_OK}  done (serve: stopped by SIGTERM or SIGINT)\n"
        f"  {EXIT_FAILED}  failed (serve: cannot listen; scan: cannot read the file)\n"
        f"  {EXIT_USAGE}  bad arguments or configuration",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=describe("model-fleet-exporter"))
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", parents=[common], help="serve /metrics and /healthz")
    s.add_argument("--bind", help="HOST:PORT to listen on (default: exporter.bind, 0.0.0.0:9842)")
    s.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also require this label on watched containers (repeatable)",
    )
    s.add_argument(
        "--container",
        action="append",
        default=[],
        metavar="NAME[=FLEET]",
        help="also watch the container called NAME (repeatable)",
    )
    s.add_argument("--no-nvml", action="store_true", help="do not export GPU metrics")
    s.add_argument("--no-docker", action="store_true", help="do not watch container logs")
    s.add_argument("--proc-root", help="where the host's /proc is mounted (default: /proc)")
    c = sub.add_parser(
        "scan", parents=[common], help="count the VRAM errors (incidents and lines) in a log file"
    )
    c.add_argument("file", help="log file, or - for standard input")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c = sub.add_parser("completion", help="print the shell completion script (bash or zsh)")
    c.add_argument("shell", choices=completion.SHELLS)
    return p


def _apply_flags(config: ExporterConfig, args: argparse.Namespace) -> ExporterConfig:
    if args.bind:
        try:
            parse_bind(args.bind)
        except ValueError as exc:
            raise ConfigError(f"--bind: {exc}") from exc
        config = replace(config, bind=args.bind)
    selection = config.selection
    if args.label:
        labels = dict(selection.labels)
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--label: expected KEY=VALUE, got {item!r}")
            labels[key] = value
        selection = replace(selection, labels=labels, use_labels=True)
    if args.container:
        names = dict(selection.names)
        for item in args.container:
            name, _, fleet = item.partition("=")
            if not name:
                raise ConfigError(f"--container: expected NAME[=FLEET], got {item!r}")
            names[name] = fleet or selection.default_fleet
        selection = replace(selection, names=names)
    config = replace(config, selection=selection)
    if args.no_nvml:
        config = replace(config, nvml=False)
    if args.no_docker:
        config = replace(config, docker=False)
    if args.proc_root:
        config = replace(config, proc_root=args.proc_root)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``model-fleet-exporter``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        print(completion.script(parser, args.shell), end="")
        return EXIT_OK
    try:
        fmt = logformat.chosen(getattr(args, "log_format", None))
    except ValueError as exc:
        print(f"model-fleet-exporter: {exc}", file=sys.stderr)
        return 2
    logformat.configure(getattr(args, "log_level", "INFO"), fmt)
    try:
        config = load_config(getattr(args, "config", None))
        if args.command == "serve":
            config = _apply_flags(config, args)
    except ConfigError as exc:
        print(f"model-fleet-exporter: {exc}", file=sys.stderr)
        return EXIT_USAGE

    # imported here: `scan` and config errors need no Docker or NVML machinery
    from exporter.main import scan, serve

    if args.command == "serve":
        return serve(config)
    try:
        if args.file == "-":
            result = scan(config, sys.stdin.buffer)
        else:
            with open(args.file, "rb", buffering=0) as f:
                result = scan(config, f)
    except OSError as exc:
        print(f"model-fleet-exporter: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        doc = {
            "lines": result.lines,
            "incident_window_seconds": result.window_seconds,
            "incidents": result.incidents,
            "error_lines": result.error_lines,
            # the incidents after the last served request, and the served requests that ended
            # a run of errors (docs/architecture.md, "Consecutive errors")
            "consecutive": result.consecutive,
            "successes": result.successes,
        }
        print(json.dumps(doc, indent=2))
    else:
        # One error is an incident: a kind's lines within the window of its first line.
        width = max([len("log lines"), *(len(k) for k in result.incidents)])
        print(f"{'kind':<{width}}  {'incidents':>10}  {'lines':>10}")
        for kind, n in result.incidents.items():
            print(f"{kind:<{width}}  {n:>10}  {result.error_lines[kind]:>10}")
        print(f"{'log lines':<{width}}  {'':>10}  {result.lines:>10}")
        print(f"consecutive (after the last served request): {result.consecutive}")
        print(f"served requests that ended a run of errors: {result.successes}")
        print(f"incident window: {result.window_seconds:g} s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
