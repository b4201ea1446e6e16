"""Reading one mapping of model-fleet.yaml: each value checked, errors naming the file and
the key path (``<file>: exporter.bind: ...``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleet_contract.yamlfile import ConfigError


class Reader:
    """Checks values read from ``source``; each failure is a ConfigError naming the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")

    def mapping(
        self, value: Any, where: str, allowed: frozenset[str] | None = None
    ) -> dict[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping, got {type(value).__name__}")
        if allowed is not None:
            unknown = sorted(str(k) for k in value if k not in allowed)
            if unknown:
                raise self.fail(
                    where,
                    f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})",
                )
        return value

    def boolean(self, m: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{where}.{key}", f"must be true or false, got {value!r}")
        return value

    def string(self, m: Mapping[str, Any], key: str, where: str, default: str) -> str:
        value = m.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
        return value

    def number(self, m: Mapping[str, Any], key: str, where: str, default: float) -> float:
        """A number >= 0 (``where.key`` in the error)."""
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise self.fail(f"{where}.{key}", f"must be a number >= 0, got {value!r}")
        return float(value)

    def url(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise self.fail(where, f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def names(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(where, f"must be a list of container names, got {value!r}")
        return value
