"""Request bodies within the ``http`` limits: 413 before reading, 400 for every bad body.

``create_app`` sets Flask's ``MAX_CONTENT_LENGTH`` to ``http.max_body_bytes`` (werkzeug then
stops reading a chunked body at the limit) and :func:`refuse_large` answers a declared
``Content-Length`` over it before anything reads the body. :func:`json_body` measures the
nesting before ``json.loads`` (which would recurse into a RecursionError, a 500), so a body
is either a parsed value or a :class:`BadBody` answered 400.
"""

from __future__ import annotations

import json
import re
from array import array
from itertools import accumulate
from typing import Any, Final

from flask import Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

_STRINGS: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS: Final = re.compile(rb"[^\[\]{}]+")
# '[' and '{' -> +1, ']' and '}' -> -1 (0xFF, read back as a signed byte)
_STEPS: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


class BadBody(ValueError):
    """The body is not within the limits or never came whole: answered 400 with this message."""


def too_large(limit: int) -> tuple[Response, int]:
    """The 413 answer; the connection closes, so the unread rest of the body is never read."""
    resp = jsonify(error=f"the request body is larger than http.max_body_bytes ({limit} bytes)")
    resp.headers["Connection"] = "close"
    return resp, 413


def refuse_large(limit: int) -> tuple[Response, int] | None:
    """413 when the declared length is over ``limit`` (a before_request hook), else None."""
    length = request.content_length
    return too_large(limit) if length is not None and length > limit else None


def alerts_within(body: Any, max_alerts: int) -> Any:
    """``body`` when its ``alerts`` list (if any) has at most ``max_alerts`` items."""
    alerts = body.get("alerts") if isinstance(body, dict) else None
    if isinstance(alerts, list) and len(alerts) > max_alerts:
        raise BadBody(f"{len(alerts)} alerts in one delivery, over http.max_alerts ({max_alerts})")
    return body


def read_body() -> bytes:
    """The whole body; RequestEntityTooLarge (413) when a body without a length fills the limit.

    werkzeug stops a chunked body at ``MAX_CONTENT_LENGTH`` and returns what it read, so a
    body that reaches the limit is refused rather than parsed cut short.
    """
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        raise RequestEntityTooLarge()
    return raw


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in ``raw`` (strings skipped), without recursion."""
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b"", raw))
    if not brackets:
        return 0
    return max(accumulate(array("b", brackets.translate(_STEPS))))


def json_body(max_depth: int) -> Any:
    """The JSON body, or None when it is not JSON (by its content type or its bytes) or empty.

    Raises BadBody (400) for nesting deeper than ``max_depth`` or a stalled body, and lets
    RequestEntityTooLarge (413) through for a chunked body over the limit.
    """
    if not request.is_json:
        return None
    try:
        raw = read_body()
    except OSError as exc:  # the client stopped sending (a socket timeout)
        raise BadBody(f"the body was not received: {exc}") from exc
    if not raw:
        return None
    # Nesting needs an opening bracket per level: a body with no more of them than the limit
    # (a delivery of a few alerts) cannot be too deep, and two counts in C cost far less than
    # the scan (about 35 us a delivery, most of what a redelivery's judgement costs).
    depth = json_depth(raw) if raw.count(b"{") + raw.count(b"[") > max_depth else 0
    if depth > max_depth:
        raise BadBody(f"the JSON nests {depth} levels deep, over http.max_json_depth ({max_depth})")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None  # as Flask's get_json(silent=True): "the body must be a JSON object"
