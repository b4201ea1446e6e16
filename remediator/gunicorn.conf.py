"""gunicorn settings for ``model-fleet serve`` (read by gunicorn, not imported by the package)."""

import os
import shutil

from prometheus_client import multiprocess

from fleet_contract import env as contract_env

# Several workers so that a slow request never blocks the webhook; gthread threads so that
# 50 concurrent Alertmanager deliveries are served without queueing behind each other. A
# client that sends half a request holds a thread while gunicorn reads the rest (gunicorn
# defers only connections that sent nothing): 3 x 64 threads keep /healthz answering under
# 100 such slow clients (issue 13). An idle thread costs a stack mapping, not memory in use.
workers = int(os.environ.get(contract_env.WORKERS, "3"))
worker_class = "gthread"
threads = int(os.environ.get(contract_env.THREADS, "64"))
worker_connections = 1000  # open connections per worker, slow ones included
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
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get(contract_env.LOG_LEVEL, "info")


def on_starting(server):  # type: ignore[no-untyped-def]
    """Start with an empty multiprocess directory: old workers' files would be summed in."""
    path = os.environ.get(contract_env.PROMETHEUS_MULTIPROC_DIR)
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """Let prometheus_client drop the live-gauge files of a worker that exited."""
    multiprocess.mark_process_dead(worker.pid)
