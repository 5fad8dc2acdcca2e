"""
The failures of the blob store, one type per thing a caller can act on.

Every error carries the offending value as an attribute (``digest``, ``uid``,
``index``) and names it in its message.  :class:`kraken.core.DigestMismatch`
(content that is not the digest it claims) comes from :mod:`kraken.core` and
is raised as is.  Operating-system errors (a full disk) are raised as they are too,
named after the file (:func:`naming_file`) so that the HTTP answer can say which.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kraken.core import Digest


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class BlobNotFound(StoreError):
    """No such blob in the state(s) that were looked in (HTTP 404)."""

    def __init__(self, digest: Digest, where: str = "the store") -> None:
        super().__init__(f"blob {digest} not found in {where}")
        self.digest = digest
        self.where = where


class BlobExists(StoreError):
    """The blob is already in the cache, so the upload or download was not needed."""

    def __init__(self, digest: Digest) -> None:
        super().__init__(f"blob {digest} is already in the cache")
        self.digest = digest


class UploadNotFound(StoreError):
    """No upload with this id (never created, aborted, committed or being committed)."""

    def __init__(self, uid: str, reason: str = "no such upload") -> None:
        super().__init__(f"upload {uid!r}: {reason}")
        self.uid = uid
        self.reason = reason


class InvalidUploadID(StoreError, ValueError):
    """An upload id that is not 32 lowercase hex characters (HTTP 400; never a path)."""

    def __init__(self, uid: object) -> None:
        super().__init__(f"invalid upload id {uid!r}: expected 32 lowercase hex characters")
        self.uid = uid


class BlobPersisted(StoreError):
    """The blob is marked persisted (e.g. write-back pending) and must not be deleted."""

    def __init__(self, digest: Digest) -> None:
        super().__init__(f"blob {digest} is persisted and cannot be deleted")
        self.digest = digest


class BlobInUse(StoreError):
    """The blob has open readers and cannot be deleted now; retry later."""

    def __init__(self, digest: Digest, readers: int) -> None:
        super().__init__(f"blob {digest} has {readers} open reader(s) and cannot be deleted")
        self.digest = digest
        self.readers = readers


class DownloadIncomplete(StoreError):
    """A download cannot move to the cache: some pieces are not written yet."""

    def __init__(self, digest: Digest, missing: int, total: int) -> None:
        super().__init__(f"download {digest} is missing {missing} of {total} pieces")
        self.digest = digest
        self.missing = missing
        self.total = total


class MetaInfoConflict(StoreError):
    """
    A download or cached blob exists with different metainfo than the one given.

    For a download the caller may :meth:`~kraken.store.BlobStore.abort_download`
    and create it again with the new metainfo (the pieces already written were
    cut differently, so they cannot be kept).
    """

    def __init__(self, digest: Digest, detail: str) -> None:
        super().__init__(f"blob {digest}: metainfo conflict: {detail}")
        self.digest = digest


class PieceMissing(StoreError):
    """A read of a piece that the download does not have yet."""

    def __init__(self, digest: Digest, index: int) -> None:
        super().__init__(f"download {digest} does not have piece {index} yet")
        self.digest = digest
        self.index = index


@contextlib.contextmanager
def naming_file(path: str) -> Iterator[None]:
    """
    Name ``path`` in an :class:`OSError` raised inside that names no file.

    Writes through a file descriptor (``pwrite``, a file object's ``write``) raise
    ``ENOSPC`` without a file name; the error map answers 507 naming the file.
    """
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = path
        raise
