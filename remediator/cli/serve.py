"""``model-fleet serve``: the service under gunicorn with the project's gunicorn.conf.py."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from fleet_contract import env as contract_env
from remediator.config import Config, effective_config
from remediator.domain.loggers import SERVE as log
from remediator.report.queries import ExitCode, TokenError, load_token

GUNICORN_CONF = Path(__file__).parent.parent / "http" / "gunicorn.conf.py"


def gunicorn_argv(bind: str, workers: int | None) -> list[str]:
    """The gunicorn command line ``serve`` executes."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(GUNICORN_CONF),
        "--bind",
        bind,
    ]
    if workers is not None:
        argv += ["--workers", str(workers)]
    # Each worker judges deferred alerts when they fall due (remediator/switch/deferrals.py).
    return [*argv, "remediator.app.service:create_app(judge_deferred=True)"]


def serve(config: Config, args: argparse.Namespace) -> int:
    """Check what the service needs, then replace this process with gunicorn."""
    try:
        token = load_token()
    except TokenError as exc:
        print(f"model-fleet: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if token is None and not args.no_auth:
        print(
            f"model-fleet: no bearer token: set {contract_env.TOKEN_FILE} "
            f"(or {contract_env.TOKEN}); "
            "--no-auth serves without one (only on a trusted network)",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    if shutil.which("gunicorn") is None and not _has_module("gunicorn"):
        print("model-fleet: gunicorn is not installed", file=sys.stderr)
        return ExitCode.USAGE
    env = os.environ
    env[contract_env.LOG_FORMAT] = args.log_format  # the workers' and gunicorn's own logs
    if config.source != "<defaults>":
        env[contract_env.CONFIG] = str(Path(config.source).resolve())
    env[contract_env.STATE_FILE] = str(Path(config.state_file).resolve())
    if args.no_auth:
        env[contract_env.NO_AUTH] = "1"
        log.warning(
            "serving WITHOUT authentication: anyone who reaches %s can switch models", args.bind
        )
    if not env.get(contract_env.PROMETHEUS_MULTIPROC_DIR):
        # Removed when gunicorn exits (on_exit, remediator/http/gunicorn.conf.py).
        env[contract_env.PROMETHEUS_MULTIPROC_DIR] = tempfile.mkdtemp(prefix="model-fleet-metrics-")
    log.info("effective configuration: %s", json.dumps(effective_config(config), sort_keys=True))
    argv = gunicorn_argv(args.bind, args.workers)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, dict(env))
    return ExitCode.OK  # pragma: no cover - execve does not return


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
