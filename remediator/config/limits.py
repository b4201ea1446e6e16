"""The ``http`` section: what one request may cost (:class:`~.model.HttpLimits`)."""

from __future__ import annotations

from typing import Any, Final

from remediator.config.model import HttpLimits
from remediator.config.reader import Reader

HTTP_KEYS: Final = frozenset({"max_body_bytes", "max_alerts", "max_json_depth"})


def parse_http(r: Reader, value: Any, where: str = "http") -> HttpLimits:
    """The limits, each at least what a real client needs (4 KiB, 1 alert, 4 levels)."""
    m = r.mapping(value, where, HTTP_KEYS)
    d = HttpLimits()
    return HttpLimits(
        max_body_bytes=r.integer(m, "max_body_bytes", where, d.max_body_bytes, lo=4096),
        max_alerts=r.integer(m, "max_alerts", where, d.max_alerts, lo=1),
        max_json_depth=r.integer(m, "max_json_depth", where, d.max_json_depth, lo=4),
    )
