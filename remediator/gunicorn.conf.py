"""gunicorn settings for ``model-fleet serve`` (read by gunicorn, not imported by the package)."""

import os
import shutil

from prometheus_client import multiprocess

from fleet_contract import env as contract_env

# Several workers so that a slow request never blocks the webhook; threads so that 50
# concurrent Alertmanager deliveries are served without queueing behind each other.
workers = int(os.environ.get(contract_env.WORKERS, "3"))
worker_class = "gthread"
threads = int(os.environ.get(contract_env.THREADS, "8"))
# Manual POSTs wait for the switch (pull + restarts): allow it; the webhook answers at once.
timeout = int(os.environ.get(contract_env.HTTP_TIMEOUT, "1800"))
graceful_timeout = 30
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
