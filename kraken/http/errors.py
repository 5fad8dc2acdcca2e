"""
Error responses of Kraken's HTTP APIs: one mapping from exceptions to statuses, two renderers.

A Klein app installs the mapping once, at class level::

    class OriginAPI:
        app = Klein()
        install_error_handler(app, ORIGIN_ERRORS, render_text)

Route methods then simply raise: an :class:`APIError` (or :class:`RegistryError`)
says its own status; a domain exception (``InvalidDigest``, ``BlobNotFound``)
gets the status its :class:`ErrorMap` gives it; a failure of the daemon's own
disk (an :class:`OSError` whose ``errno`` is in :data:`DISK_FULL_ERRNOS` or
:data:`LOCAL_IO_ERRNOS`, or SQLite's equivalents) is 507 when the disk is full and
503 otherwise, with a message naming the daemon and the path; anything else is
logged with its traceback and answered 500 with a body that reveals nothing.

Two renderers share that mechanism: :func:`render_text` (status plus the message
as plain text, as the Go Kraken's ``handler`` package does for origin, tracker,
build-index and agent) and :func:`render_registry_json` (the OCI distribution
spec's ``{"errors": [{"code", "message", "detail"}]}``) for registry APIs.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from attrs import frozen
from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from kraken.core import (
    DigestMismatch,
    InvalidBitfield,
    InvalidDigest,
    InvalidJSON,
    InvalidMetaInfo,
    InvalidPeerInfo,
)

__all__ = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "CORE_ERRORS",
    "DENIED",
    "DIGEST_INVALID",
    "DISK_FULL_ERRNOS",
    "INSUFFICIENT_STORAGE",
    "LOCAL_IO_ERRNOS",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "RANGE_INVALID",
    "REGISTRY_ERROR_CODES",
    "SIZE_INVALID",
    "TOOMANYREQUESTS",
    "UNAUTHORIZED",
    "UNAVAILABLE",
    "UNKNOWN",
    "UNSUPPORTED",
    "APIError",
    "ErrorCode",
    "ErrorMap",
    "ErrorRenderer",
    "RegistryError",
    "install_error_handler",
    "render_error",
    "render_registry_json",
    "render_text",
]

log = Logger()


@frozen
class ErrorCode:
    """A registry v2 error code, the status it is sent with and its stock message."""

    name: str
    status: int
    message: str


BLOB_UNKNOWN: Final = ErrorCode("BLOB_UNKNOWN", 404, "blob unknown to registry")
BLOB_UPLOAD_INVALID: Final = ErrorCode("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BLOB_UPLOAD_UNKNOWN: Final = ErrorCode(
    "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"
)
DIGEST_INVALID: Final = ErrorCode(
    "DIGEST_INVALID", 400, "provided digest did not match uploaded content"
)
MANIFEST_BLOB_UNKNOWN: Final = ErrorCode(
    "MANIFEST_BLOB_UNKNOWN", 404, "manifest references a manifest or blob unknown to registry"
)
MANIFEST_INVALID: Final = ErrorCode("MANIFEST_INVALID", 400, "manifest invalid")
MANIFEST_UNKNOWN: Final = ErrorCode("MANIFEST_UNKNOWN", 404, "manifest unknown to registry")
NAME_INVALID: Final = ErrorCode("NAME_INVALID", 400, "invalid repository name")
NAME_UNKNOWN: Final = ErrorCode("NAME_UNKNOWN", 404, "repository name not known to registry")
SIZE_INVALID: Final = ErrorCode("SIZE_INVALID", 400, "provided length did not match content length")
UNAUTHORIZED: Final = ErrorCode("UNAUTHORIZED", 401, "authentication required")
DENIED: Final = ErrorCode("DENIED", 403, "requested access to the resource is denied")
UNSUPPORTED: Final = ErrorCode("UNSUPPORTED", 405, "the operation is unsupported")
TOOMANYREQUESTS: Final = ErrorCode("TOOMANYREQUESTS", 429, "too many requests")
RANGE_INVALID: Final = ErrorCode("RANGE_INVALID", 416, "invalid content range")
UNKNOWN: Final = ErrorCode("UNKNOWN", 500, "unknown error")
"""Not in the spec's table; docker distribution's code for errors without a better one."""
UNAVAILABLE: Final = ErrorCode("UNAVAILABLE", 503, "service unavailable")
"""Not in the spec's table; docker distribution's code for 503."""
INSUFFICIENT_STORAGE: Final = ErrorCode("INSUFFICIENT_STORAGE", 507, "insufficient storage")
"""Not in the spec's table (nor docker distribution's): the registry's disk is full."""

REGISTRY_ERROR_CODES: Final[Mapping[str, ErrorCode]] = {
    c.name: c
    for c in (
        BLOB_UNKNOWN,
        BLOB_UPLOAD_INVALID,
        BLOB_UPLOAD_UNKNOWN,
        DIGEST_INVALID,
        MANIFEST_BLOB_UNKNOWN,
        MANIFEST_INVALID,
        MANIFEST_UNKNOWN,
        NAME_INVALID,
        NAME_UNKNOWN,
        SIZE_INVALID,
        UNAUTHORIZED,
        DENIED,
        UNSUPPORTED,
        TOOMANYREQUESTS,
        RANGE_INVALID,
        UNKNOWN,
        UNAVAILABLE,
        INSUFFICIENT_STORAGE,
    )
}
"""Every registry error code by name."""

_CODE_BY_STATUS: Final[Mapping[int, ErrorCode]] = {
    401: UNAUTHORIZED,
    403: DENIED,
    405: UNSUPPORTED,
    416: RANGE_INVALID,
    429: TOOMANYREQUESTS,
    503: UNAVAILABLE,
    507: INSUFFICIENT_STORAGE,
}

DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""``errno`` values of a write the disk (or the quota) has no room for: 507."""
LOCAL_IO_ERRNOS: Final = frozenset(
    {errno.EIO, errno.EROFS, errno.EACCES, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)
"""``errno`` values of other failures of the daemon's own files: 503 with the reason."""

#: SQLite's primary result codes for the same two cases (its ``sqlite_errorcode``'s low byte).
_SQLITE_FULL: Final = 13
_SQLITE_LOCAL_IO: Final = frozenset({8, 10, 14})  # READONLY, IOERR, CANTOPEN


class APIError(Exception):
    """An error a route raises to answer with ``status`` and ``message``.

    ``code`` and ``detail`` are used by the registry renderer; without a
    code it picks one from the status (``UNKNOWN`` if none fits). ``headers``
    are added to the response (e.g. ``Allow``, ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        message: str = "",
        *,
        code: ErrorCode | None = None,
        detail: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.code = code
        self.detail = detail
        self.headers: Mapping[str, str] = dict(headers or {})

    @property
    def registry_code(self) -> ErrorCode:
        """The code the registry renderer sends."""
        if self.code is not None:
            return self.code
        return _CODE_BY_STATUS.get(self.status, UNKNOWN)

    def __str__(self) -> str:
        return f"HTTP {self.status}" + (f": {self.message}" if self.message else "")


class RegistryError(APIError):
    """An :class:`APIError` named by a registry error code (status and default message from it)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        detail: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            code.status,
            code.message if message is None else message,
            code=code,
            detail=detail,
            headers=headers,
        )


@frozen
class _Rule:
    status: int
    code: ErrorCode | None


def _local_io_error(exc: BaseException, daemon: str) -> APIError | None:
    """507 or 503 for a failure of the daemon's own disk, naming it and the path; else None."""
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in DISK_FULL_ERRNOS:
            status, code = 507, INSUFFICIENT_STORAGE
        elif exc.errno in LOCAL_IO_ERRNOS:
            status, code = 503, UNAVAILABLE
        else:
            return None
        reason = exc.strerror or os.strerror(exc.errno)
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        where = "an unnamed file" if exc.filename is None else os.fsdecode(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)}"
        return APIError(status, f"{daemon}: {reason} ({name}) at {where}", code=code)
    if isinstance(exc, sqlite3.Error):
        primary = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if primary == _SQLITE_FULL:
            status, code = 507, INSUFFICIENT_STORAGE
        elif primary in _SQLITE_LOCAL_IO:
            status, code = 503, UNAVAILABLE
        else:
            return None
        return APIError(status, f"{daemon}: its SQLite database failed: {exc}", code=code)
    return None


@frozen
class ErrorMap:
    """Which status (and registry code) each domain exception is answered with.

    Lookups follow the exception's MRO, so mapping a base class covers its
    subclasses and a subclass's own entry wins. Each daemon extends
    :data:`CORE_ERRORS` with its own exceptions and its name in one place, e.g.
    ``CORE_ERRORS.extended({BlobNotFound: BLOB_UNKNOWN}, daemon="origin")``.
    Failures of the local disk that no rule names are answered 507 or 503 with
    a message naming ``daemon`` and the path.
    """

    _rules: Mapping[type[BaseException], _Rule]
    daemon: str = "kraken"

    @classmethod
    def of(cls, rules: Mapping[type[BaseException], int | ErrorCode]) -> ErrorMap:
        """A map from exception types to a status, or to a registry code (status implied)."""
        return cls({}).extended(rules)

    def extended(
        self,
        rules: Mapping[type[BaseException], int | ErrorCode],
        *,
        daemon: str | None = None,
    ) -> ErrorMap:
        """A new map with ``rules`` added (replacing entries for the same types)."""
        merged = dict(self._rules)
        for exc_type, target in rules.items():
            if isinstance(target, ErrorCode):
                merged[exc_type] = _Rule(target.status, target)
            else:
                merged[exc_type] = _Rule(target, None)
        return ErrorMap(merged, self.daemon if daemon is None else daemon)

    def to_api_error(self, exc: BaseException) -> APIError | None:
        """The :class:`APIError` to answer ``exc`` with, or None if it is unexpected."""
        if isinstance(exc, APIError):
            return exc
        for klass in type(exc).__mro__:
            rule = self._rules.get(klass)
            if rule is not None:
                return APIError(rule.status, str(exc), code=rule.code)
        local = _local_io_error(exc, self.daemon)
        if local is not None:
            return local
        if isinstance(exc, HTTPException) and exc.code is not None:
            # Klein's routing errors: no route (404), wrong method (405).
            headers = {}
            if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
                headers["Allow"] = ", ".join(exc.valid_methods)
            return APIError(exc.code, exc.name.lower(), headers=headers)
        return None


CORE_ERRORS: Final = ErrorMap.of(
    {
        InvalidDigest: DIGEST_INVALID,
        DigestMismatch: DIGEST_INVALID,
        InvalidJSON: 400,
        InvalidMetaInfo: 400,
        InvalidBitfield: 400,
        InvalidPeerInfo: 400,
    }
)
"""The mapping of :mod:`kraken.core`'s exceptions, for every daemon to extend."""


class ErrorRenderer(Protocol):
    """Writes an :class:`APIError` into a response: sets headers, returns the body."""

    def __call__(self, request: Request, error: APIError) -> bytes:
        """Set Content-Type (and anything else) on ``request``; return the body bytes."""


def render_text(request: Request, error: APIError) -> bytes:
    """The message as plain UTF-8 text (empty for a bare status), as the Go handlers answer."""
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
    return error.message.encode("utf-8")


def render_registry_json(request: Request, error: APIError) -> bytes:
    """The registry v2 error document; ``detail`` is included when set."""
    entry: dict[str, Any] = {"code": error.registry_code.name, "message": error.message}
    if error.detail is not None:
        entry["detail"] = error.detail
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")  # type: ignore[no-untyped-call]
    return json.dumps({"errors": [entry]}, default=str).encode("utf-8")


_INTERNAL: Final = "internal server error"


def render_error(
    request: Request,
    failure: Failure,
    *,
    errors: ErrorMap = CORE_ERRORS,
    renderer: ErrorRenderer = render_text,
) -> bytes:
    """Answer ``failure`` on ``request``: set status and headers, return the body.

    Unexpected exceptions are logged with their traceback and become a 500
    whose body says only "internal server error".
    """
    method = request.method.decode("latin-1")
    path = request.uri.decode("latin-1")
    error = errors.to_api_error(failure.value) if failure.value is not None else None
    if error is None:
        log.failure("Unhandled error answering {method} {path}", failure, method=method, path=path)
        error = APIError(500, _INTERNAL, code=UNKNOWN)
    elif error.status >= 500:
        log.warn(
            "{method} {path} answered {status}: {message}",
            method=method,
            path=path,
            status=error.status,
            message=error.message,
        )
    request.setResponseCode(error.status)
    for name, value in error.headers.items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))  # type: ignore[no-untyped-call]
    return renderer(request, error)


def install_error_handler(
    app: Klein,
    errors: ErrorMap = CORE_ERRORS,
    renderer: ErrorRenderer = render_text,
    *,
    exceptions: Iterable[type[Exception]] = (Exception,),
) -> None:
    """Make ``app`` answer every exception its routes raise through ``errors`` and ``renderer``.

    Call once per app, in the class body right after ``app = Klein()``; it
    also covers Klein's own 404 and 405 for unknown routes and methods.
    """

    def handle(*args: Any) -> bytes:
        # Klein passes (instance, request, failure) for apps bound to an
        # instance and (request, failure) for a bare app.
        request, failure = args[-2], args[-1]
        return render_error(request, failure, errors=errors, renderer=renderer)

    decorate: Callable[[Callable[..., bytes]], object] = app.handle_errors(*exceptions)
    decorate(handle)
