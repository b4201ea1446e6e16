# model-fleet exporter: VRAM gauges from NVML and VRAM-error counters from container logs,
# served on :9842 (/metrics, /healthz).
# Build from the repository root:  docker build -f deploy/exporter.Dockerfile -t model-fleet/exporter .
#
# What it needs at run time (docker-compose.gpu.yml grants each):
# - NVML: libnvidia-ml.so is not in this image; the NVIDIA container toolkit mounts the host
#   driver's copy, and the GPU devices, when the container asks for a GPU
#   (deploy.resources.reservations.devices, or `docker run --gpus all`).
# - The host PID namespace (`pid: host`): NVML reports each GPU process by its host PID. Only
#   with the host's /proc can the exporter read /proc/<pid>/cgroup to tell which container
#   holds that VRAM; in its own PID namespace those PIDs do not exist.
# - The Docker socket, read-only: to find the model server by its labels and follow its logs.
#   It only reads, but any access to the socket is powerful: see the README's security notes.

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
    PYTHONUNBUFFERED=1
# Unprivileged: NVML works through the device nodes the toolkit mounts (world-accessible), and
# /proc/<pid>/cgroup is world-readable. Reading the Docker socket needs its group: compose adds
# it with group_add.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin model-fleet
USER 10001:10001
EXPOSE 9842
# The slim image has no curl or wget: the check uses Python's urllib (non-2xx raises, exit 1).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9842/healthz', timeout=4)"]
ENTRYPOINT ["model-fleet-exporter"]
CMD ["serve", "--bind", "0.0.0.0:9842"]
