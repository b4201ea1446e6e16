"""Every metric both services export: name, type, labels, owner and help, in one table.

Names are the ones PromQL uses (counters end in ``_total``; prometheus_client strips and
re-adds the suffix itself). The services build their metrics from these specs, the rules' and
dashboard tests check their queries against ``METRICS``, and a test compares the services'
real ``/metrics`` output with it, so a name or label set is never typed twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from fleet_contract.labels import HOST_LABEL

Kind = Literal["counter", "gauge", "histogram"]
Service = Literal["exporter", "remediator", "both"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its PromQL name, type, label names (in order), owning service and help."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    service: Service
    help: str


# --- both -----------------------------------------------------------------------------------
BUILD_INFO: Final = "model_fleet_build_info"

# --- exporter -------------------------------------------------------------------------------
GPU_MEMORY_TOTAL: Final = "model_fleet_gpu_memory_total_bytes"
GPU_MEMORY_USED: Final = "model_fleet_gpu_memory_used_bytes"
GPU_MEMORY_FREE: Final = "model_fleet_gpu_memory_free_bytes"
GPU_PROCESS_MEMORY: Final = "model_fleet_gpu_process_memory_bytes"
NVML_UP: Final = "model_fleet_nvml_up"
VRAM_ERRORS: Final = "model_fleet_vram_errors_total"
VRAM_ERROR_LINES: Final = "model_fleet_vram_error_lines_total"
VRAM_ERRORS_SINCE_START: Final = "model_fleet_vram_errors_since_start"
VRAM_ERRORS_CONSECUTIVE: Final = "model_fleet_vram_errors_consecutive"
CONTAINER_START_INFO: Final = "model_fleet_container_start_info"
CONTAINER_START_TIME: Final = "model_fleet_container_start_time_seconds"
LOG_LINES: Final = "model_fleet_log_lines_total"
LOG_STREAM_UP: Final = "model_fleet_log_stream_up"
LOG_STREAM_RECONNECTS: Final = "model_fleet_log_stream_reconnects_total"
LOG_LINES_RECOVERED: Final = "model_fleet_log_lines_recovered_total"
LOG_GAPS: Final = "model_fleet_log_gaps_total"
EXPORTER_DOCKER_UP: Final = "model_fleet_exporter_docker_up"
EXPORTER_JOURNAL_UP: Final = "model_fleet_exporter_journal_up"
EXPORTER_SCRAPE_DURATION: Final = "model_fleet_exporter_scrape_duration_seconds"
MODEL_MEMORY: Final = "model_fleet_model_memory_bytes"
MODEL_SERVER_UP: Final = "model_fleet_model_server_up"
PROBE_SUCCESS: Final = "model_fleet_probe_success"
PROBE_DURATION: Final = "model_fleet_probe_duration_seconds"
PROBE_TOKENS_PER_SECOND: Final = "model_fleet_probe_tokens_per_second"
# --- remediator -----------------------------------------------------------------------------
CURRENT_MODEL_INFO: Final = "model_fleet_current_model_info"
FLEET_GPU_INFO: Final = "model_fleet_fleet_gpu_info"
CURRENT_MODEL_INDEX: Final = "model_fleet_current_model_index"
LADDER_SIZE: Final = "model_fleet_ladder_size"
CAN_DOWNGRADE: Final = "model_fleet_can_downgrade"
LADDER_MODEL_BYTES: Final = "model_fleet_ladder_model_bytes"
NEXT_LARGER_MODEL_BYTES: Final = "model_fleet_next_larger_model_bytes"
LAST_SWITCH_TIMESTAMP: Final = "model_fleet_last_switch_timestamp_seconds"
STEP_UP_WINDOW_OPEN: Final = "model_fleet_step_up_window_open"
OFFLOAD_TOLERANCE: Final = "model_fleet_offload_tolerance_ratio"
VRAM_ERROR_COUNTING: Final = "model_fleet_vram_error_counting_info"
SWITCHES: Final = "model_fleet_switches_total"
REMEDIATION_FAILURES: Final = "model_fleet_remediation_failures_total"
SWITCH_RECOVERIES: Final = "model_fleet_switch_recoveries_total"
WEBHOOK_REQUESTS: Final = "model_fleet_webhook_requests_total"
NOTIFICATIONS: Final = "model_fleet_notifications_total"
ALERTS_DEFERRED: Final = "model_fleet_alerts_deferred_total"

_GPU: Final = ("gpu", "uuid", "name")
_STREAM: Final = ("fleet", "container")


def _exporter(name: str, kind: Kind, labels: tuple[str, ...], help: str) -> MetricSpec:
    return MetricSpec(name, kind, labels, "exporter", help)


def _remediator(name: str, kind: Kind, labels: tuple[str, ...], help: str) -> MetricSpec:
    return MetricSpec(name, kind, labels, "remediator", help)


def _both(name: str, kind: Kind, labels: tuple[str, ...], help: str) -> MetricSpec:
    return MetricSpec(name, kind, labels, "both", help)


METRICS: Final[tuple[MetricSpec, ...]] = (
    _both(
        BUILD_INFO,
        "gauge",
        ("version", "revision"),
        "1, labelled with the running version (pyproject.toml) and the commit it was built from.",
    ),
    _exporter(GPU_MEMORY_TOTAL, "gauge", _GPU, "Total GPU memory."),
    _exporter(GPU_MEMORY_USED, "gauge", _GPU, "Used GPU memory (NVML)."),
    _exporter(GPU_MEMORY_FREE, "gauge", _GPU, "Free GPU memory (NVML)."),
    _exporter(
        GPU_PROCESS_MEMORY,
        "gauge",
        ("gpu", "pid", "container"),
        "GPU memory used by a process, with the container that runs it.",
    ),
    _exporter(NVML_UP, "gauge", (), "1 when NVML answered this scrape, 0 when it could not."),
    _exporter(
        VRAM_ERRORS,
        "counter",
        ("fleet", "container", "kind"),
        "VRAM errors of the model server: incidents (its matching log lines within "
        "exporter.incident_window_seconds of the first), by the kind of their first line.",
    ),
    _exporter(
        VRAM_ERROR_LINES,
        "counter",
        ("fleet", "container", "kind"),
        "Log lines of the model server classified as VRAM errors, by kind.",
    ),
    _exporter(
        VRAM_ERRORS_SINCE_START,
        "gauge",
        _STREAM,
        "VRAM errors (incidents) since the container last started (exact across exporter "
        "restarts).",
    ),
    _exporter(
        VRAM_ERRORS_CONSECUTIVE,
        "gauge",
        _STREAM,
        "VRAM errors (incidents) since the model server last served a request (a 2xx of a "
        "generate, chat or embed endpoint) or, when it has served none, since it started.",
    ),
    _exporter(
        CONTAINER_START_INFO,
        "gauge",
        ("fleet", "container", "started_at"),
        "1 for the container's current run; started_at is Docker's StartedAt of the run "
        "that model_fleet_vram_errors_since_start counts.",
    ),
    _exporter(
        CONTAINER_START_TIME,
        "gauge",
        _STREAM,
        "Start of the container's current run (Docker's StartedAt, or the unit's start under "
        "systemd) in seconds since the epoch: the run model_fleet_container_start_info names.",
    ),
    _exporter(LOG_LINES, "counter", _STREAM, "Log lines read from the container."),
    _exporter(LOG_STREAM_UP, "gauge", _STREAM, "1 while the container's log stream is attached."),
    _exporter(
        LOG_STREAM_RECONNECTS,
        "counter",
        _STREAM,
        "Log streams that ended while their container kept running, and were attached again.",
    ),
    _exporter(
        LOG_LINES_RECOVERED,
        "counter",
        _STREAM,
        "Log lines (of model_fleet_log_lines_total) that Docker's follow skipped at a log "
        "rotation and a re-read of the retained log files found.",
    ),
    _exporter(
        LOG_GAPS,
        "counter",
        _STREAM,
        "Times the container's retained log no longer reached back to where the exporter "
        "resumed it (Docker rotated files away unread, or the journal was vacuumed): lines may "
        "be lost, how many is unknown.",
    ),
    _exporter(
        EXPORTER_DOCKER_UP,
        "gauge",
        (),
        "1 while the exporter is connected to Docker's events stream "
        "(0 with logs.source journald).",
    ),
    _exporter(
        EXPORTER_JOURNAL_UP,
        "gauge",
        (),
        "1 while the exporter follows the journal (logs.source journald; 0 with Docker's logs).",
    ),
    _exporter(EXPORTER_SCRAPE_DURATION, "histogram", (), "Time to answer a /metrics request."),
    _exporter(
        MODEL_MEMORY,
        "gauge",
        ("fleet", "model", "location"),
        "Memory of a loaded model as the model server lists it (Ollama's /api/ps): "
        'location="vram" on the GPU, location="system" offloaded to system memory.',
    ),
    _exporter(
        MODEL_SERVER_UP,
        "gauge",
        ("fleet",),
        "1 when the fleet's model server answered the last poll of its loaded models, else 0.",
    ),
    _exporter(
        PROBE_SUCCESS,
        "gauge",
        ("fleet", "model"),
        "1 when the last synthetic probe of the fleet's current model got an answer, else 0.",
    ),
    _exporter(
        PROBE_DURATION,
        "gauge",
        ("fleet", "model"),
        "Wall time of the last synthetic probe request.",
    ),
    _exporter(
        PROBE_TOKENS_PER_SECOND,
        "gauge",
        ("fleet", "model"),
        "Tokens per second the server measured for the last probe (eval_count over "
        "eval_duration); absent when the probe failed.",
    ),
    _remediator(CURRENT_MODEL_INFO, "gauge", ("fleet", "model"), "The model a fleet runs now."),
    _remediator(
        FLEET_GPU_INFO,
        "gauge",
        ("fleet", "gpu"),
        "The GPU a fleet's model server runs on now (a move changes it).",
    ),
    _remediator(
        CURRENT_MODEL_INDEX, "gauge", ("fleet",), "Rung of the current model (0 = largest)."
    ),
    _remediator(LADDER_SIZE, "gauge", ("fleet",), "Rungs on the ladder."),
    _remediator(CAN_DOWNGRADE, "gauge", ("fleet",), "1 when a smaller rung remains."),
    _remediator(
        LADDER_MODEL_BYTES, "gauge", ("fleet", "model", "rung"), "Size of each rung's model."
    ),
    _remediator(
        NEXT_LARGER_MODEL_BYTES,
        "gauge",
        ("fleet", "gpu"),
        "Size of the model one rung up: what a step up needs (0 at the top).",
    ),
    _remediator(
        LAST_SWITCH_TIMESTAMP, "gauge", ("fleet",), "When the fleet last switched (0: never)."
    ),
    _remediator(
        STEP_UP_WINDOW_OPEN,
        "gauge",
        ("fleet",),
        "1 while auto_upgrade.windows allow the automatic step up (always 1 without windows).",
    ),
    _remediator(
        OFFLOAD_TOLERANCE,
        "gauge",
        ("fleet",),
        "fleets.*.offload_tolerance: the fraction of the current model's bytes that may be "
        "offloaded to system memory before ModelFleetCPUOffload fires.",
    ),
    _remediator(
        VRAM_ERROR_COUNTING,
        "gauge",
        ("fleet", "counting"),
        "1 for the fleet's fleets.*.counting: consecutive (the errors since the model server "
        "last served a request) or since_start; ModelFleetVRAMErrors counts that way.",
    ),
    _remediator(
        SWITCHES, "counter", ("fleet", "direction", "trigger"), "Model switches committed."
    ),
    _remediator(
        REMEDIATION_FAILURES,
        "counter",
        ("fleet", "step"),
        "Switches that failed and were rolled back, by the step that failed.",
    ),
    _remediator(
        SWITCH_RECOVERIES,
        "counter",
        ("fleet", "outcome"),
        "Interrupted switches found open in the switch journal and resolved: rolled_forward, "
        "rolled_back, or failed (the entry stays open and is tried again).",
    ),
    _remediator(
        ALERTS_DEFERRED,
        "counter",
        ("fleet", "reason"),
        "Alerts refused for a reason that passes (cooldown, rate_limited, quiet_period, "
        "outside_window) and kept to be judged again when it has passed.",
    ),
    _remediator(
        WEBHOOK_REQUESTS, "counter", ("outcome",), "Alertmanager webhook deliveries, by outcome."
    ),
    _remediator(
        NOTIFICATIONS,
        "counter",
        ("outcome",),
        "Alertmanager deliveries to /webhook/notify: forwarded to the configured webhook, "
        "failed to forward, or only logged (no webhook configured).",
    ),
)

# Labels every sample of both services carries besides its spec's: each service adds them in
# one place where it renders /metrics (fleet_exposition.HostRegistry), so a spec never lists them.
COMMON_LABELS: Final = (HOST_LABEL,)


def exposed_labels(metric: MetricSpec) -> tuple[str, ...]:
    """The label names ``metric``'s samples carry on /metrics: the common ones, then its own."""
    return (*COMMON_LABELS, *metric.labels)


BY_NAME: Final[Mapping[str, MetricSpec]] = {m.name: m for m in METRICS}
# Series Prometheus makes itself, which rules and dashboards may use besides ours.
BUILTIN: Final = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})


def spec(name: str) -> MetricSpec:
    """The spec of the metric called ``name``; KeyError names the metric when it has none."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name} is not a metric of the contract (fleet_contract.metrics)") from None


def of_service(service: Service) -> tuple[MetricSpec, ...]:
    """The metrics ``service`` exports (those of ``both`` included)."""
    return tuple(m for m in METRICS if m.service in (service, "both"))
