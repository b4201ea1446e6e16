"""The Docker adapters' one error, and the engine's exceptions it is made from: shared by the
runtime (:mod:`remediator.adapters.docker_engine`) and the GPU move
(:mod:`remediator.adapters.docker_gpu`)."""

from __future__ import annotations

from typing import Final

import docker.errors
import requests

from remediator.ports.runtime import ContainerError

__all__ = ["ENGINE_ERRORS", "DockerError", "cause_of"]

# What a call to the engine raises: the SDK's errors, or the HTTP client's when it is gone.
ENGINE_ERRORS: Final = (docker.errors.DockerException, requests.exceptions.RequestException)


class DockerError(ContainerError):
    """A Docker operation failed (the message starts "docker <step>")."""

    def __init__(self, step: str, cause: str, *, container: str | None = None) -> None:
        super().__init__(step, cause, container=container, runtime="docker")


def cause_of(exc: BaseException) -> str:
    """The engine's failure in a few words."""
    if isinstance(exc, requests.exceptions.RequestException):
        return f"Docker engine unreachable: {type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"
