"""Every environment variable the services, the ``model-fleet`` CLI and the scripts read.

``used_by`` names the readers: ``remediator`` (the HTTP service under gunicorn), ``exporter``,
``cli`` (``model-fleet`` commands other than ``serve``) and ``scripts`` (scripts/up, scripts/down
and the compose files they run). The constants are the names; code reads them through these,
and the docs test checks the documentation against ``ENV_VARS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

CONFIG: Final = "MODEL_FLEET_CONFIG"
STATE_FILE: Final = "MODEL_FLEET_STATE_FILE"
TOKEN_FILE: Final = "MODEL_FLEET_TOKEN_FILE"
TOKEN: Final = "MODEL_FLEET_TOKEN"
NO_AUTH: Final = "MODEL_FLEET_NO_AUTH"
NOTIFY_URL: Final = "MODEL_FLEET_NOTIFY_URL"
URL: Final = "MODEL_FLEET_URL"
PROMETHEUS_URL: Final = "MODEL_FLEET_PROMETHEUS_URL"
WORKERS: Final = "MODEL_FLEET_WORKERS"
THREADS: Final = "MODEL_FLEET_THREADS"
HTTP_TIMEOUT: Final = "MODEL_FLEET_HTTP_TIMEOUT"
LOG_LEVEL: Final = "MODEL_FLEET_LOG_LEVEL"
LOG_FORMAT: Final = "MODEL_FLEET_LOG_FORMAT"
REVISION: Final = "MODEL_FLEET_REVISION"
VERSION: Final = "MODEL_FLEET_VERSION"
PROMETHEUS_MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"
GPU: Final = "MODEL_FLEET_GPU"
COMPOSE_OVERRIDE: Final = "MODEL_FLEET_COMPOSE_OVERRIDE"
ENV_FILE: Final = "MODEL_FLEET_ENV_FILE"
ALLOW_NO_GPU: Final = "MODEL_FLEET_ALLOW_NO_GPU"
SKIP_PULL: Final = "MODEL_FLEET_SKIP_PULL"
CDI_DIRS: Final = "MODEL_FLEET_CDI_DIRS"
HOST: Final = "MODEL_FLEET_HOST"
TEST_CRASH_AFTER: Final = "MODEL_FLEET_TEST_CRASH_AFTER"


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: its name, who reads it, and what it means."""

    READERS: ClassVar[frozenset[str]] = frozenset({"remediator", "exporter", "cli", "scripts"})

    name: str
    used_by: tuple[str, ...]
    meaning: str


_SERVICES: Final = ("remediator", "exporter", "cli")

ENV_VARS: Final[tuple[EnvVar, ...]] = (
    EnvVar(CONFIG, _SERVICES, "the model-fleet.yaml to read (else ./model-fleet.yaml)"),
    EnvVar(
        HOST,
        ("remediator", "exporter", "cli", "scripts"),
        "the GPU host the services run for (the `host` label); overrides host "
        "(compose: also the containers' hostname, default model-fleet)",
    ),
    EnvVar(STATE_FILE, ("remediator", "cli"), "the state file; overrides state_file"),
    EnvVar(
        TOKEN_FILE,
        ("remediator", "cli", "scripts"),
        "a file holding the webhook's bearer token (wins over MODEL_FLEET_TOKEN)",
    ),
    EnvVar(TOKEN, ("remediator", "cli"), "the webhook's bearer token itself"),
    EnvVar(
        NO_AUTH,
        ("remediator",),
        "1: serve without a token (set by `model-fleet serve --no-auth` for its workers)",
    ),
    EnvVar(
        NOTIFY_URL,
        ("remediator",),
        "where alerts for people are forwarded; overrides notifications.webhook_url",
    ),
    EnvVar(URL, ("cli",), "act through the remediator at this URL instead of the state file"),
    EnvVar(
        PROMETHEUS_URL,
        ("remediator", "cli"),
        "the Prometheus live figures are read from; overrides prometheus.url "
        "(`model-fleet watch`: else 127.0.0.1:9090)",
    ),
    EnvVar(WORKERS, ("remediator",), "gunicorn worker processes (default 3)"),
    EnvVar(THREADS, ("remediator",), "threads per gunicorn worker (default 64)"),
    EnvVar(
        HTTP_TIMEOUT,
        ("remediator",),
        "seconds a request may take, a manual switch included (default 1800)",
    ),
    EnvVar(LOG_LEVEL, ("remediator",), "log level of the service and gunicorn (default info)"),
    EnvVar(
        LOG_FORMAT,
        ("remediator", "exporter", "cli"),
        "text (default) or json: one JSON object a line, gunicorn's access log included",
    ),
    EnvVar(
        REVISION,
        ("remediator", "exporter", "cli", "scripts"),
        "the commit the build came from (the image sets it; else read from a git checkout)",
    ),
    EnvVar(
        VERSION,
        ("scripts",),
        "the version the image is built as (scripts/up: from pyproject.toml): tag and OCI label",
    ),
    EnvVar(
        PROMETHEUS_MULTIPROC_DIR,
        ("remediator",),
        "where the workers' counters are kept and summed (serve makes one when unset)",
    ),
    EnvVar(GPU, ("scripts",), "the NVML index of the GPU Ollama reserves in compose (default 0)"),
    EnvVar(
        COMPOSE_OVERRIDE,
        ("scripts",),
        "extra compose files, colon-separated, added after the shipped ones",
    ),
    EnvVar(ENV_FILE, ("scripts",), "the compose env file to create and read (default .env)"),
    EnvVar(ALLOW_NO_GPU, ("scripts",), "1: skip the NVIDIA driver and runtime checks"),
    EnvVar(SKIP_PULL, ("scripts",), "1: do not pull the ladder's models"),
    EnvVar(
        CDI_DIRS,
        ("scripts",),
        "where CDI specs are looked for (default /etc/cdi:/var/run/cdi)",
    ),
    EnvVar(
        TEST_CRASH_AFTER,
        ("remediator", "cli"),
        "tests only: SIGKILL the process group once the switch journal records this step "
        "(docs/development.md); never set it in production",
    ),
)
