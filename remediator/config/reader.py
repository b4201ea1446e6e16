"""Typed reads out of parsed YAML, each error naming the file and the key path."""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from remediator.config.model import ConfigError


class Reader:
    """Reads typed values out of a mapping and names the file and key path in every error.

    It also notes the deprecated keys it read (:meth:`renamed`), for check-config to name.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.deprecated: list[tuple[str, str]] = []

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str, allowed: Set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where or "top level", f"must be a mapping, got {type_name(value)}")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise self.fail(
                where or "top level",
                f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})",
            )
        return value

    def renamed(
        self, new: tuple[dict[str, Any], str, str], old: tuple[dict[str, Any], str, str]
    ) -> tuple[dict[str, Any], str, str]:
        """Where to read a renamed setting, each side given as (mapping, where, key).

        The new key unless only the old one is set (then noted as deprecated); both set is an
        error, since the file would then say two things about one setting.
        """
        new_path, old_path = key_path(new[1], new[2]), key_path(old[1], old[2])
        if old[2] not in old[0]:
            return new
        if new[2] in new[0]:
            raise self.fail(
                old_path, f"is the deprecated name of {new_path}, which is set too: keep only one"
            )
        self.deprecated.append((old_path, new_path))
        return old

    def number(
        self, m: dict[str, Any], key: str, where: str, default: float, *, lo: float = 0.0
    ) -> float:
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
            raise self.fail(key_path(where, key), f"must be a number >= {lo:g}, got {value!r}")
        return float(value)

    def integer(self, m: dict[str, Any], key: str, where: str, default: int, *, lo: int = 0) -> int:
        value = m.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(key_path(where, key), f"must be an integer >= {lo}, got {value!r}")
        return value

    def boolean(self, m: dict[str, Any], key: str, where: str, default: bool) -> bool:
        value = m.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key_path(where, key), f"must be true or false, got {value!r}")
        return value

    def string(self, m: dict[str, Any], key: str, where: str, default: str | None) -> str:
        value = m.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # e.g. gpu: 0
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key_path(where, key), f"must be a non-empty string, got {value!r}")
        return value

    def url(self, m: dict[str, Any], key: str, where: str, default: str) -> str:
        value = self.string(m, key, where, default)
        if not value.startswith(("http://", "https://")):
            raise self.fail(key_path(where, key), f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def strings(self, m: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = m.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key_path(where, key), f"must be a list of names, got {value!r}")
        return tuple(value)


def type_name(value: Any) -> str:
    """The name of ``value``'s type, for an error ("must be a mapping, got list")."""
    return type(value).__name__


def key_path(where: str, key: str) -> str:
    """``key`` under ``where`` as an error names it: ``fleets.default.server``."""
    return f"{where}.{key}" if where else key
