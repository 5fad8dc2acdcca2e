"""
Reading small request bodies in Klein routes: bounded, and JSON with a 400 that names the problem.

twisted.web has buffered the whole body (in memory, or a temporary file past
100 KB) before a route runs; these helpers are for control messages (announce
requests, tag values, metainfo), not for blobs, which stream elsewhere.
"""

from __future__ import annotations

import json
from typing import Any, Final

from twisted.web.iweb import IRequest
from twisted.web.server import Request

from kraken.core import InvalidJSON, parse_json
from kraken.http.errors import APIError

__all__ = [
    "DEFAULT_MAX_BODY",
    "PayloadTooLarge",
    "json_response",
    "read_json",
    "read_request_body",
]

DEFAULT_MAX_BODY: Final = 1024 * 1024
"""Bytes: the default limit of a control request body."""


class PayloadTooLarge(APIError):
    """A request body longer than the route accepts (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


def read_request_body(request: Request | IRequest, max_bytes: int = DEFAULT_MAX_BODY) -> bytes:
    """The request body, or :class:`PayloadTooLarge` when it exceeds ``max_bytes``.

    Reads at most ``max_bytes + 1`` bytes of the buffered body.
    """
    declared = request.getHeader(b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(max_bytes)
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data = content.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(max_bytes)
    return bytes(data)


def read_json(request: Request | IRequest, max_bytes: int = DEFAULT_MAX_BODY) -> Any:
    """The request body decoded as UTF-8 JSON; 400 naming the problem if it is not (any depth)."""
    data = read_request_body(request, max_bytes)
    try:
        return parse_json(data)
    except InvalidJSON as e:
        raise APIError(400, str(e)) from None


def json_response(request: Request | IRequest, value: object) -> bytes:
    """Set ``Content-Type: application/json`` on ``request`` and return ``value`` encoded."""
    request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
    return json.dumps(value, separators=(",", ":")).encode("utf-8")
