"""Adapters: the only modules of the exporter that talk to the outside (NVML, the Docker
engine, /proc)."""
