"""gunicorn settings for ``model-fleet serve`` (read by gunicorn, not imported by the package)."""

import gc
import logging
import os
import shutil
import tempfile

from prometheus_client import multiprocess

from fleet_contract import env as contract_env
from fleet_contract import logformat

# Several workers so that a slow request never blocks the webhook; gthread threads so that
# 50 concurrent Alertmanager deliveries are served without queueing behind each other. An
# idle thread costs a stack mapping, not memory in use.
# Read timeout: gunicorn's gthread gives a connection a thread as soon as its first bytes
# arrive, and that thread then waits for the rest with no timeout: a client that sent half a
# request and stalled held it until it hung up. ReadTimeoutWorker (remediator/http/worker.py)
# gives a thread only to a request that is here whole (head and a body up to 64 KiB); until
# then the connection waits in the poller and is dropped after `keepalive` seconds of silence
# or 10 s (READ_TIMEOUT_SECONDS) without becoming whole. A thread's reads and writes (a larger
# body, the answer) time out after those 10 s too. 1,000 stalled clients hold no thread.
workers = int(os.environ.get(contract_env.WORKERS, "3"))
worker_class = "remediator.http.worker.ReadTimeoutWorker"
threads = int(os.environ.get(contract_env.THREADS, "64"))
# Open connections per worker, stalled ones included; each is a descriptor, so the process's
# limit (ulimit -n) must be above workers x this (the image's default, 1048576, is).
worker_connections = 1000
# Manual POSTs wait for the switch (pull + restarts): allow it; the webhook answers at once.
# gthread workers heartbeat from their main loop, so this does not cut a request short.
timeout = int(os.environ.get(contract_env.HTTP_TIMEOUT, "1800"))
graceful_timeout = 30
# Short keep-alive: an idle kept-alive connection is dropped after 2 s, and a refused body
# (413) is drained for at most a few seconds before its connection closes.
keepalive = 2
# Request line and headers: what Alertmanager, Prometheus and the CLI send is far below these
# (a bearer token and a dozen headers); larger ones are refused by gunicorn before the app.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
# No control socket (gunicorn 25.1 on opens one for gunicornc at one path per user:
# $XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl). A second remediator on the host
# would take it over and either one stopping would remove it; model-fleet does not use it.
control_socket_disable = True
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get(contract_env.LOG_LEVEL, "info")
# --log-format json: gunicorn's own lines and its access log as JSON objects too
# (fleet_contract/logformat.py); its handlers stay where they were (stdout and stderr).
# gunicorn's dictConfig defaults stay for the handlers (access on stdout, the rest on
# stderr); its loggers must not also propagate to the root, or each line came twice.
if logformat.chosen() == "json":
    _level = loglevel.upper() if loglevel.upper() in logging.getLevelNamesMapping() else "INFO"
    logconfig_dict = {
        "root": {"level": _level, "handlers": ["error_console"]},  # the service's own log
        "loggers": {
            "gunicorn.error": {"level": _level, "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
        "formatters": {"generic": {"()": "fleet_contract.logformat.JsonFormatter"}},
    }


def on_starting(server):  # type: ignore[no-untyped-def]
    """Start with an empty multiprocess directory: old workers' files would be summed in."""
    path = os.environ.get(contract_env.PROMETHEUS_MULTIPROC_DIR)
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the multiprocess directory ``model-fleet serve`` made for this run (a temporary
    ``model-fleet-metrics-*``): each start makes a new one, and nothing else would remove it.
    A directory named by the user stays where it is."""
    path = os.environ.get(contract_env.PROMETHEUS_MULTIPROC_DIR)
    if (
        path
        and os.path.dirname(os.path.abspath(path)) == tempfile.gettempdir()
        and os.path.basename(path).startswith("model-fleet-metrics-")
    ):
        shutil.rmtree(path, ignore_errors=True)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Keep the objects of the loaded app (Flask, the Docker SDK, ...: a few hundred thousand)
    out of the garbage collector's full collections: each one walked them all and stopped the
    worker for 14-16 ms in a webhook storm; with them frozen it takes 0.1-0.2 ms."""
    gc.freeze()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """Let prometheus_client drop the live-gauge files of a worker that exited."""
    multiprocess.mark_process_dead(worker.pid)
