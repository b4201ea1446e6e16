"""What the remediator and the exporter agree on: labels, env variables, metrics, error kinds.

Both services import this package and never each other. It imports nothing that talks to the
outside (no Docker, HTTP, NVML or Prometheus client), so either side, the docs test and the
rules' tests can read the contract without starting anything.
"""
