"""
The noop backend, always behind the reserved namespace ``__noop__``.

It keeps nothing: stat and download report :class:`BlobNotFound`, upload succeeds and discards
its source, list is empty.  Names and namespaces are still validated, so a bad name is an error
here as everywhere.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from kraken.backends.interface import (
    DEFAULT_LIST_LIMIT,
    BlobInfo,
    BlobNotFound,
    IBackend,
    InvalidName,
    ListResult,
    UploadSource,
)
from kraken.backends.names import check_list_arguments, name_error

NOOP_NAMESPACE = "__noop__"


@implementer(IBackend)
class NoopBackend:
    """An :class:`IBackend` that stores nothing and says so."""

    def stat(self, namespace: str, name: str) -> Deferred[BlobInfo]:
        """Fail with :class:`BlobNotFound` (or :class:`InvalidName`)."""
        return fail(_not_found(namespace, name))

    def upload(self, namespace: str, name: str, source: UploadSource) -> Deferred[None]:
        """Discard ``source`` and succeed (unless the name is invalid)."""
        error = name_error(namespace, name)
        return succeed(None) if error is None else fail(error)

    def download(self, namespace: str, name: str, consumer: IConsumer) -> Deferred[int]:
        """Fail with :class:`BlobNotFound` (or :class:`InvalidName`) without writing."""
        return fail(_not_found(namespace, name))

    def list(
        self,
        prefix: str,
        limit: int = DEFAULT_LIST_LIMIT,
        continuation_token: str | None = None,
    ) -> Deferred[ListResult]:
        """Fire with an empty last page (or fail with :class:`InvalidName`)."""
        try:
            check_list_arguments(prefix, limit)
        except InvalidName:
            return fail()
        return succeed(ListResult((), None))

    def delete(self, namespace: str, name: str) -> Deferred[None]:
        """Fail with :class:`BlobNotFound` (or :class:`InvalidName`): nothing is stored."""
        return fail(_not_found(namespace, name))

    def close(self) -> Deferred[None]:
        """Nothing to release."""
        return succeed(None)


def _not_found(namespace: str, name: str) -> Exception:
    return name_error(namespace, name) or BlobNotFound(namespace, name)
