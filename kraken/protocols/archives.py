"""
Torrent archives over :class:`kraken.store.BlobStore`: the agent's and the origin's.

:class:`AgentArchive` downloads into the store's download area and moves the
blob into the cache on commit; :class:`OriginArchive` serves the cache
read-only (always complete).  Both are blocking like the store: the peer
driver calls them through its thread pool.  They live here rather than in
:mod:`kraken.torrent` because the store logs through Twisted.
"""

from __future__ import annotations

import contextlib
import functools
import os

from zope.interface import implementer

from kraken.core import Bitfield, Digest, MetaInfo
from kraken.store import BlobExists, BlobNotFound, BlobStore, PieceMissing
from kraken.torrent.archive import (
    IArchive,
    IPieceFiles,
    IPieceStorage,
    PieceFile,
    PieceUnavailable,
    ReadOnlyArchive,
)


@implementer(IPieceStorage, IPieceFiles)
class StorePieceStorage:
    """One blob of a BlobStore, in the download area or the cache."""

    def __init__(self, store: BlobStore, metainfo: MetaInfo, *, read_only: bool) -> None:
        self.store = store
        self.metainfo = metainfo
        self.read_only = read_only

    def bitfield(self) -> Bitfield:
        """The pieces present (all of them once cached)."""
        return self.store.piece_status(self.metainfo.digest)

    def complete(self) -> bool:
        """Whether the blob is in the cache."""
        return self.store.has(self.metainfo.digest)

    def read_piece(self, index: int) -> bytes:
        """``pread`` of one piece."""
        try:
            return self.store.read_piece(self.metainfo.digest, index)
        except (PieceMissing, BlobNotFound) as e:
            raise PieceUnavailable(str(e)) from e

    def open_piece(self, index: int) -> PieceFile | None:
        """
        A piece as a region of a data file (for ``sendfile``), else None.

        A cached blob's piece holds a store reader (the blob cannot be deleted)
        until the PieceFile is closed; a download's piece, once its status byte
        says it is there, is a region of the download's data file.  None when
        the piece is missing (read_piece then says why).
        """
        meta = self.metainfo
        if not 0 <= index < meta.num_pieces:
            raise PieceUnavailable(f"piece {index} of {meta.digest} does not exist")
        offset, size = meta.piece_offset(index), meta.piece_size(index)
        try:
            reader = self.store.open_reader(meta.digest)
        except BlobNotFound:
            fd = None if self.read_only else self.store.open_download_piece(meta.digest, index)
            if fd is None:
                return None
            return PieceFile(fd, offset, size, functools.partial(os.close, fd))
        return PieceFile(reader.fd, offset, size, reader.close)

    def write_piece(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """``pwrite`` of a verified piece and its status byte."""
        if self.read_only:
            raise ReadOnlyArchive(f"{self.metainfo.digest} is read-only here")
        self.store.write_piece(self.metainfo.digest, index, data)

    def commit(self) -> None:
        """Move the finished download into the cache (idempotent)."""
        if self.read_only:
            if not self.complete():
                raise ReadOnlyArchive(f"{self.metainfo.digest} is not cached")
            return
        self.store.complete_download(self.metainfo.digest)


@implementer(IArchive)
class AgentArchive:
    """Downloads into a BlobStore; serves cached blobs and partial downloads."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def create(self, namespace: str, metainfo: MetaInfo) -> IPieceStorage:
        """Start or resume the download (or return the cached blob).

        The store records ``namespace`` with a new download, so that the blob
        can be announced under it again after a restart.
        """
        with contextlib.suppress(BlobExists):
            self.store.create_download(metainfo, namespace=namespace)
        return StorePieceStorage(self.store, metainfo, read_only=False)

    def open(self, namespace: str, digest: Digest) -> IPieceStorage | None:
        """The cached blob or download of ``digest``, if any."""
        try:
            metainfo = self.store.get_metainfo(digest)
        except BlobNotFound:
            return None
        return StorePieceStorage(self.store, metainfo, read_only=False)


@implementer(IArchive)
class OriginArchive:
    """Serves an origin's cache read-only; never downloads."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def create(self, namespace: str, metainfo: MetaInfo) -> IPieceStorage:
        """Origins do not download over P2P."""
        raise ReadOnlyArchive("an origin does not download over the peer protocol")

    def open(self, namespace: str, digest: Digest) -> IPieceStorage | None:
        """The cached blob of ``digest``, if any."""
        if not self.store.has(digest):
            return None
        try:
            metainfo = self.store.get_metainfo(digest)
        except BlobNotFound:
            return None
        return StorePieceStorage(self.store, metainfo, read_only=True)
