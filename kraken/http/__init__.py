"""
Shared HTTP pieces: the one client factory and the error mapping of our APIs.

* :mod:`kraken.http.client`: :class:`HTTPClientFactory` (TLS, timeouts,
  retries, one connection pool) and its errors.
* :mod:`kraken.http.errors`: exceptions -> status codes, rendered as plain
  text or as registry v2 error JSON, installed once per Klein app.
* :mod:`kraken.http.request_body`: bounded request bodies and JSON parsing.
* :mod:`kraken.http.testing`: in-memory agents for tests.
"""

from kraken.http.client import (
    NO_RETRY,
    RETRYABLE_STATUSES,
    BodyTooLarge,
    HTTPClientFactory,
    HTTPStatusError,
    KrakenHTTPClient,
    NetworkError,
    RequestError,
    RequestTimeout,
    RetryPolicy,
    collect_body,
    read_body,
    save_body,
)
from kraken.http.errors import (
    CORE_ERRORS,
    APIError,
    ErrorCode,
    ErrorMap,
    RegistryError,
    install_error_handler,
    render_registry_json,
    render_text,
)

__all__ = [
    "CORE_ERRORS",
    "NO_RETRY",
    "RETRYABLE_STATUSES",
    "APIError",
    "BodyTooLarge",
    "ErrorCode",
    "ErrorMap",
    "HTTPClientFactory",
    "HTTPStatusError",
    "KrakenHTTPClient",
    "NetworkError",
    "RegistryError",
    "RequestError",
    "RequestTimeout",
    "RetryPolicy",
    "collect_body",
    "install_error_handler",
    "read_body",
    "render_registry_json",
    "render_text",
    "save_body",
]
