"""
The storage backend seam: :class:`IBackend`, its values and its errors.

A backend is the durable home of every blob and tag; origins and build-indexes are caches in
front of it.  This module fixes the contract that every implementation (filesystem, noop, and
later S3, registry and HTTP) follows and that ``tests/backends/base.py`` checks.

Names
    A *name* is what a backend stores an object under.  Exactly two shapes exist (see
    :mod:`kraken.backends.names` for the grammar):

    - a blob: the 64 lowercase hex characters of its sha256 digest, without ``sha256:``
      (``Digest.hex``);
    - a tag: ``<repo>:<tag>``, e.g. ``library/alpine:3.19``; the object holds the manifest
      digest as text (``sha256:<hex>``).

    Anything else (``sha256:<hex>``, ``../x``, absolute paths, NUL, empty segments) is rejected
    with :class:`InvalidName`.  Backends store bytes and never check content against a name:
    the origin verifies digests before it writes back.

Namespaces
    A *namespace* (``library/alpine``, a whole tag for the build-index, ``__noop__``) picks the
    backend through :class:`kraken.backends.router.BackendRouter`.  Storage backends (fs, S3)
    key objects by name alone, so one name under two namespaces routed to the same backend is
    one object; a registry backend uses the namespace as the upstream repository.

Errors
    Every method returns a :class:`~twisted.internet.defer.Deferred` and reports every error,
    bad arguments included, by failing it (never by raising): :class:`BlobNotFound`,
    :class:`InvalidName`, :class:`OperationNotSupported`, :class:`TransferStopped`, or the
    backend's own I/O error.
"""

from __future__ import annotations

import os
from typing import TypeAlias

from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from zope.interface import Interface

#: What :meth:`IBackend.upload` accepts: the content itself (``bytes``), or the path of a local
#: file (``str`` or ``os.PathLike``) that the backend streams from without reading it whole.
UploadSource: TypeAlias = bytes | str | os.PathLike[str]

#: The page size of :meth:`IBackend.list` when the caller gives none (as in Go Kraken).
DEFAULT_LIST_LIMIT = 250

#: The largest page a caller may ask for (S3 returns at most 1000 keys per request).
MAX_LIST_LIMIT = 1000


class BackendError(Exception):
    """Base class of the errors a backend reports on purpose."""


class BlobNotFound(BackendError):
    """The backend has no object under this name."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"blob {name!r} not found in namespace {namespace!r}")
        self.namespace = namespace
        self.name = name


class NamespaceNotFound(BackendError):
    """No configured backend serves this namespace."""

    def __init__(self, namespace: str) -> None:
        super().__init__(f"no backend is configured for namespace {namespace!r}")
        self.namespace = namespace


class InvalidName(BackendError, ValueError):
    """A name, namespace, list prefix or page size that no backend accepts (HTTP 400)."""


class OperationNotSupported(BackendError):
    """The backend cannot do this at all (e.g. upload to a read-only registry backend)."""

    def __init__(self, backend: str, operation: str) -> None:
        super().__init__(f"the {backend} backend does not support {operation}")
        self.backend = backend
        self.operation = operation


class TransferStopped(BackendError):
    """A download ended early because its consumer called ``stopProducing``."""


def _non_negative(_instance: object, _attribute: object, value: int) -> None:
    if value < 0:
        raise ValueError(f"blob size must be >= 0, got {value}")


@frozen
class BlobInfo:
    """What :meth:`IBackend.stat` knows about a stored object."""

    size: int = field(validator=_non_negative)
    """Length in bytes."""


@frozen
class ListResult:
    """One page of :meth:`IBackend.list`."""

    names: tuple[str, ...]
    """Names in the backend's stable order (code-point order for fs)."""

    continuation_token: str | None
    """Pass it back to get the next page; ``None`` when there is nothing after this page."""


class IBackend(Interface):
    """
    Durable storage of blobs and tags, addressed by ``(namespace, name)``.

    Implementations never block the reactor thread: blocking I/O runs in a thread pool given
    to them.  Concurrent uploads of one name are allowed; readers see either the old or the new
    content, never a mixture (last write wins: tags are mutable, blobs immutable by content).
    """

    def stat(namespace: str, name: str) -> Deferred[BlobInfo]:
        """
        Fire with the size of the object, or fail with :class:`BlobNotFound`.
        """

    def upload(namespace: str, name: str, source: UploadSource) -> Deferred[None]:
        """
        Store ``source`` under ``name``, replacing any previous object atomically.

        ``source`` is the content as ``bytes`` or the path of a local file, which is streamed
        (never read whole into memory) and must not change until the Deferred fires.  Fires
        with ``None`` once the object is durable in the backend.
        """

    def download(namespace: str, name: str, consumer: IConsumer) -> Deferred[int]:
        """
        Write the object into ``consumer`` and fire with the number of bytes written.

        The backend registers a push producer (``streaming=True``) with ``consumer`` before
        the first ``write`` and unregisters it before the Deferred fires, so the consumer
        controls the pace with ``pauseProducing``/``resumeProducing``; ``consumer`` must have
        no other producer meanwhile.  Writes happen on the reactor thread, in order.  If the
        consumer calls ``stopProducing`` the Deferred fails with :class:`TransferStopped`.
        Fails with :class:`BlobNotFound` before any write if the object does not exist.

        To land a blob in a file without blocking the reactor use
        :func:`kraken.backends.streams.download_to_path`; for small objects (tags)
        :func:`kraken.backends.streams.download_bytes`.
        """

    def list(
        prefix: str, limit: int = DEFAULT_LIST_LIMIT, continuation_token: str | None = None
    ) -> Deferred[ListResult]:
        """
        Fire with one page of the names that start with ``prefix`` (a plain string prefix).

        ``""`` lists everything; ``"library/"`` the tags of every repository under
        ``library``; ``"library/alpine:"`` the tags of ``library/alpine``; ``"ab"`` blobs
        whose hex starts with ``ab`` (and tags of repositories starting with ``ab``).  A
        prefix that no valid name can start with (``"../"``, ``"/x"``) fails with
        :class:`InvalidName`, as does ``limit`` outside ``1..MAX_LIST_LIMIT``.

        A page holds at most ``limit`` names (possibly fewer, even none, while more follow).
        Keep calling with the returned ``continuation_token`` until it is ``None``: every name
        present for the whole walk is then returned exactly once.  Tokens are opaque and only
        meaningful to the backend that issued them.
        """

    def delete(namespace: str, name: str) -> Deferred[None]:
        """
        Remove the object; fire once it is gone for good, or fail with :class:`BlobNotFound`.

        Only the build-index (a deleted tag) and the garbage collector (a blob no manifest
        references) call it.  Read-only backends fail with :class:`OperationNotSupported`.
        """

    def close() -> Deferred[None]:
        """
        Release connections and other resources; the backend is not used afterwards.
        """
