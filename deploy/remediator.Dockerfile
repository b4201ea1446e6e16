# model-fleet remediator: receives Alertmanager's webhook and steps a fleet down (or up) its
# ladder of models; serves :8080 (POST /webhook/alertmanager, /reset, /downgrade, /upgrade;
# GET /status, /history, /healthz, /metrics). The `model-fleet` CLI is in the image too.
# Build from the repository root:  docker build -f deploy/remediator.Dockerfile -t model-fleet/remediator .
#
# What it needs at run time (docker-compose.monitoring.yml grants each):
# - The Docker socket, read-write: a switch finds the fleet's containers by their
#   model-fleet.* labels and restarts them through the Docker API. Whoever can use that socket
#   is root on the host; that is the price of restarting containers, see the README.
# - A volume for /var/lib/model-fleet: the state file (current model, history, processed
#   alerts) must outlive the container, or a restart would forget a downgrade.
# - The configuration (MODEL_FLEET_CONFIG) and the bearer token (MODEL_FLEET_TOKEN_FILE).

FROM python:3.11-slim AS build
# A virtual environment is one directory, so the runtime stage copies it without pip.
RUN python -m venv /opt/model-fleet
WORKDIR /src
# Only what the package build needs (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY remediator/ remediator/
COPY exporter/ exporter/
RUN /opt/model-fleet/bin/pip install --no-cache-dir .

FROM python:3.11-slim
COPY --from=build /opt/model-fleet /opt/model-fleet
ENV PATH=/opt/model-fleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_FLEET_CONFIG=/etc/model-fleet/model-fleet.yaml \
    MODEL_FLEET_STATE_FILE=/var/lib/model-fleet/model_fleet_state.json
# Unprivileged by default. The state directory belongs to that user, and a named volume mounted
# there starts with the same owner. (docker-compose.monitoring.yml runs it as root: see there.)
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin model-fleet \
    && mkdir -p /var/lib/model-fleet /etc/model-fleet \
    && chown model-fleet:model-fleet /var/lib/model-fleet
VOLUME ["/var/lib/model-fleet"]
USER 10001:10001
EXPOSE 8080
# The slim image has no curl or wget: the check uses Python's urllib (non-2xx raises, exit 1).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["model-fleet"]
CMD ["serve", "--bind", "0.0.0.0:8080"]
