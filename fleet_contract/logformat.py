"""How both services write their logs: text for people, or one JSON object a line for pipelines.

``--log-format json`` (or ``MODEL_FLEET_LOG_FORMAT=json``) gives, per record, ``time`` (RFC
3339, UTC, milliseconds), ``level``, ``logger`` and ``message``, then the fields the record
carries: those a call passed in ``extra=`` (``fleet``, ``alert_key``, ``reason``, ...), an
exception's traceback as ``exception``, and for gunicorn's access log the request's own fields
(``remote``, ``request``, ``status``, ``bytes``, ``duration_ms``, ``user_agent``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import Any, Final

from fleet_contract.env import LOG_FORMAT as LOG_FORMAT_ENV

FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What a LogRecord holds of its own: every other attribute came in through ``extra=``.
_RECORD_KEYS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
# gunicorn's access-log atoms (its ``access_log_format`` keys) -> the JSON field.
_ACCESS_ATOMS: Final = {
    "h": "remote",
    "r": "request",
    "s": "status",
    "b": "bytes",
    "M": "duration_ms",
    "a": "user_agent",
}


def chosen(value: str | None = None) -> str:
    """The format asked for: ``value`` (a flag), else the environment, else text."""
    name = (value or os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if name not in FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV}={name!r}: expected one of {', '.join(FORMATS)}")
    return name


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the record's own fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        out["message"] = record.getMessage()
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            out.update(_access_fields(record.args))
        for key, value in vars(record).items():
            if key not in _RECORD_KEYS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def formatter(name: str) -> logging.Formatter:
    """The formatter of format ``name`` (``text`` or ``json``)."""
    return JsonFormatter() if name == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: int | str, name: str, stream: Any = None) -> None:
    """The root logger: one handler on ``stream`` (stderr) in format ``name``, at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _access_fields(atoms: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for atom, field in _ACCESS_ATOMS.items():
        value = atoms.get(atom)
        if value in (None, "-"):
            continue
        if field in ("status", "bytes", "duration_ms"):
            with contextlib.suppress(TypeError, ValueError):  # else kept as gunicorn wrote it
                value = int(value)
        fields[field] = value
    return fields


def _rfc3339(created: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{stamp}.{int(created % 1 * 1000):03d}Z"
