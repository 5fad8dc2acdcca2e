"""
Typed access to a twisted.web request's status and headers.

``IRequest``'s methods carry no annotations, so every call from typed code needed a
``# type: ignore``; routes call these instead, which also take ``str`` names and values
(latin-1, as HTTP headers are).
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

__all__ = ["header", "set_header", "set_status"]


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def set_header(request: IRequest, name: str | bytes, value: str | bytes) -> None:
    """Set response header ``name`` to ``value`` (replacing any earlier value)."""
    request.setHeader(_bytes(name), _bytes(value))  # type: ignore[no-untyped-call]


def set_status(request: IRequest, code: int) -> None:
    """Set the response status."""
    request.setResponseCode(code)  # type: ignore[no-untyped-call]


def header(request: IRequest, name: str | bytes) -> bytes | None:
    """The first value of request header ``name``, or None."""
    value: bytes | None = request.getHeader(_bytes(name))  # type: ignore[no-untyped-call]
    return value
