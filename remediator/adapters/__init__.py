"""Adapters: the only modules of the remediator that talk to the outside (Ollama, the Docker
engine, systemd, HTTP endpoints, the application's config files). The core speaks to them through
the protocols in remediator.ports.model_server and remediator.ports.runtime."""
