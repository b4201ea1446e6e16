"""model-fleet-exporter: VRAM from NVML and VRAM-error counters from container logs."""
