"""``model-fleet``: status, history, manual switches, a live view, config check, the service."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from fleet_contract import completion, logformat
from fleet_contract.env import PROMETHEUS_URL as PROMETHEUS_URL_ENV
from fleet_contract.env import URL as URL_ENV
from remediator.adapters.prometheus import DEFAULT_URL as PROMETHEUS_URL
from remediator.app.remediator import Remediator, live_reader
from remediator.cli import tables
from remediator.cli.parser import build_parser, translate_legacy
from remediator.config import (
    Config,
    ConfigError,
    FleetConfig,
    UnknownFleet,
    config_warnings,
    effective_config,
    load_config,
    window_notes,
)
from remediator.domain.kinds import Direction, Trigger
from remediator.report import queries
from remediator.report.queries import (
    CODES,
    ExitCode,
    TokenError,
    error_kind,
    load_token,
    outcome_kind,
)
from remediator.store.locks import StateError
from remediator.store.state import StateStore
from remediator.switch.plan import Actions

log = logging.getLogger("model-fleet")


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _show(args: argparse.Namespace, obj: Any) -> None:
    """``status`` or ``history``: a table for a person at a terminal, else JSON."""
    if args.json or not sys.stdout.isatty():
        _print(obj)
    elif args.command == "status":
        print(tables.status_table(obj))
    else:
        print(tables.history_table(obj))


def _err(message: str) -> None:
    print(f"model-fleet: {message}", file=sys.stderr)


def _local_actions(config: Config) -> Callable[[FleetConfig], Actions]:
    """The real actions (Ollama, Docker or systemd, app-config files) performed by this process."""
    from remediator.app.wiring import fleet_actions  # Docker's SDK: only when switching here

    return fleet_actions


def _report_switch(result: dict[str, Any], code: ExitCode) -> ExitCode:
    """Print a switch's outcome JSON (and, when it did nothing or failed, why); return ``code``."""
    _print(result)
    if code == ExitCode.NOTHING_TO_DO:
        _err(f"nothing to do: {result.get('detail')}")
    elif code == ExitCode.FAILED:
        _err(str(result.get("error")))
    return code


def _run_local(args: argparse.Namespace, config: Config) -> int:
    store = StateStore(config)
    if args.command == "status":
        _show(args, queries.status(config, store, args.fleet, live=live_reader(config)))
        return ExitCode.OK
    if args.command == "history":
        _show(args, queries.history(config, store, args.fleet, args.limit))
        return ExitCode.OK
    direction = {
        "downgrade": Direction.DOWN,
        "upgrade": Direction.UP,
        "reset": Direction.RESET,
    }[args.command]
    remediator = Remediator(config, store, _local_actions(config))
    outcome = remediator.request(
        args.fleet, direction, trigger=Trigger.MANUAL, reason=args.reason, dry_run=args.dry_run
    )
    return _report_switch(outcome.to_dict(), CODES[outcome_kind(outcome)].exit)


def _run_remote(args: argparse.Namespace, url: str) -> int:
    from remediator.adapters.remote import RemediatorClient, RemoteError

    client = RemediatorClient(url, token=load_token())
    try:
        if args.command == "status":
            _show(args, client.status(args.fleet))
            return ExitCode.OK
        if args.command == "history":
            _show(args, client.history(args.fleet, args.limit))
            return ExitCode.OK
        result, code = client.switch(args.command, args.fleet, args.reason, args.dry_run)
    except RemoteError as exc:
        _err(str(exc))
        return exc.exit_code
    return _report_switch(result, code)


def _run_watch(args: argparse.Namespace, url: str | None, config: Config | None) -> int:
    from remediator.adapters.prometheus import PrometheusAPI
    from remediator.cli.watch import StatusUnavailable, Watch, run

    read_status: Callable[[], Any]
    if url:
        from remediator.adapters.remote import RemediatorClient, RemoteError

        client = RemediatorClient(url, token=load_token(), timeout=5.0)
        where = f"remediator at {client.url}"

        def read_status() -> Any:
            try:
                return client.status(args.fleet)
            except RemoteError as exc:
                raise StatusUnavailable(str(exc), exc.exit_code) from exc

    else:
        assert config is not None
        if args.fleet:
            config.fleet(args.fleet)  # an unknown fleet ends the command here (exit 3)
        store = StateStore(config)
        where = f"state file {store.path}"

        def read_status() -> Any:
            try:
                return queries.status(config, store, args.fleet, live=live_reader(config))
            except StateError as exc:
                raise StatusUnavailable(str(exc), CODES[str(error_kind(exc))].exit) from exc

    prometheus = (
        args.prometheus
        or os.environ.get(PROMETHEUS_URL_ENV)
        or (config.prometheus.url if config is not None else None)
        or PROMETHEUS_URL
    )
    # Local: only this host's figures. Through --url the remediator's host is not known here.
    host = config.host if config is not None else None
    watch = Watch(read_status, where, PrometheusAPI(prometheus), args.interval, host)
    return run(watch, sys.stdout, once=args.once)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``model-fleet``."""
    raw = translate_legacy(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(raw)
    for name, default in (("config", None), ("url", None), ("verbose", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    try:
        args.log_format = logformat.chosen(getattr(args, "log_format", None))
    except ValueError as exc:
        print(f"model-fleet: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    logformat.configure(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    if args.command == "completion":
        print(completion.script(parser, args.shell), end="")
        return ExitCode.OK
    if args.command == "render-monitoring" or getattr(args, "inventory", None):
        from remediator.cli.hosts import run_inventory_command

        return run_inventory_command(args)
    url = args.url or os.environ.get(URL_ENV)
    config: Config | None = None
    if not url or args.command in ("check-config", "serve"):
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            _err(f"invalid configuration: {exc}")
            return ExitCode.USAGE
        if args.command == "check-config":
            _print(effective_config(config))
            for warning in config_warnings(config):
                print(f"warning: {warning}", file=sys.stderr)
            for note in window_notes(config, time.time()):
                print(f"note: {note}", file=sys.stderr)
            return ExitCode.OK
        if args.command == "serve":
            from remediator.cli.serve import serve

            return serve(config, args)
    try:
        if args.command == "watch":
            return _run_watch(args, url, config)
        if url:
            return _run_remote(args, url)
        assert config is not None
        return _run_local(args, config)
    except (UnknownFleet, StateError, TokenError) as exc:
        _err(exc.message if isinstance(exc, UnknownFleet) else str(exc))
        kind = error_kind(exc)
        return CODES[kind].exit if kind else ExitCode.USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
