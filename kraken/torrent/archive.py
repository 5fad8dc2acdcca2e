"""
The storage the P2P engine runs over: torrents' pieces on disk (or in memory).

These interfaces are *blocking* and thread-safe: the engine never calls them,
its driver does, from a thread pool (whole-piece reads, writes and hashing
must not run on the reactor thread).  :class:`MemoryArchive` is the in-memory
implementation used by tests and the simulator; :mod:`kraken.protocols.archives`
adapts :mod:`kraken.store` for agents (read/write) and origins (read-only).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from attrs import frozen
from zope.interface import Attribute, Interface, implementer

from kraken.core import Bitfield, Digest, MetaInfo


class ArchiveError(Exception):
    """Base of the errors raised by archives."""


class PieceUnavailable(ArchiveError):
    """The piece asked for is not (yet) stored."""


class ReadOnlyArchive(ArchiveError):
    """A write to an archive that only serves (an origin's cache)."""


class PieceHashMismatch(ArchiveError):
    """Received piece bytes whose length or sha256 is not the metainfo's; nothing was written."""


class IPieceStorage(Interface):
    """The pieces of one blob (blocking, thread-safe)."""

    metainfo: MetaInfo = Attribute("The blob's MetaInfo.")

    def bitfield() -> Bitfield:
        """A copy of the set of pieces verified and stored (resume state)."""

    def complete() -> bool:
        """Whether the blob is whole and in its final (cache) place."""

    def read_piece(index: int) -> bytes:
        """The bytes of stored piece ``index``; raises PieceUnavailable if it is not stored."""

    def write_piece(index: int, data: bytes | bytearray | memoryview) -> None:
        """Store piece ``index`` whose bytes the caller has verified; then mark it present.

        ``data`` is only valid during the call (drivers reuse receive buffers):
        copy it to keep it.
        """

    def commit() -> None:
        """All pieces are stored: make the blob final (move it into the cache), idempotent."""


@frozen
class PieceFile:
    """Where a stored piece's bytes are: an open descriptor, offset and length; ``close()`` it."""

    fd: int
    offset: int
    length: int
    close: Callable[[], None]


class IPieceFiles(Interface):
    """Optional for an IPieceStorage: its pieces as file regions (for ``sendfile``)."""

    def open_piece(index: int) -> PieceFile | None:
        """
        Open stored piece ``index`` as a file region (blocking), or None to use read_piece.

        The caller closes the PieceFile; while it is open the bytes stay in place.
        Raises PieceUnavailable if the piece is not stored.
        """


class IArchive(Interface):
    """Finds or creates the storage of torrents (blocking, thread-safe)."""

    def create(namespace: str, metainfo: MetaInfo) -> IPieceStorage:
        """Storage for downloading ``metainfo`` (resumes a partial download); idempotent."""

    def open(namespace: str, digest: Digest) -> IPieceStorage | None:
        """Storage of a blob stored here, complete or partial, or None if unknown."""


def verify_and_write(
    storage: IPieceStorage,
    index: int,
    data: bytes | bytearray | memoryview,
    write_lock: AbstractContextManager[Any] | None = None,
) -> None:
    """
    Check piece ``index`` against its sha256 in the metainfo, then write it (blocking).

    Raises PieceHashMismatch without writing anything when the bytes are wrong.
    With ``write_lock`` only the write holds it: threads hash in parallel and
    write one at a time (concurrent writes to one file only contend for the
    file system's inode lock).
    """
    meta = storage.metainfo
    if len(data) != meta.piece_size(index):
        raise PieceHashMismatch(
            f"piece {index} of {meta.digest} has {len(data)} bytes, "
            f"expected {meta.piece_size(index)}"
        )
    if hashlib.sha256(data).digest() != meta.piece_hashes[index]:
        raise PieceHashMismatch(f"piece {index} of {meta.digest} fails its sha256")
    if write_lock is None:
        storage.write_piece(index, data)
        return
    with write_lock:
        storage.write_piece(index, data)


@implementer(IPieceStorage)
class MemoryPieceStorage:
    """Pieces held in a bytearray (tests, simulator)."""

    def __init__(
        self, metainfo: MetaInfo, data: bytes | None = None, *, read_only: bool = False
    ) -> None:
        self.metainfo = metainfo
        self._lock = threading.Lock()
        self._read_only = read_only
        if data is not None:
            if len(data) != metainfo.length:
                raise ValueError(f"{len(data)} bytes for a blob of {metainfo.length}")
            self._data = bytearray(data)
            self._have = Bitfield(metainfo.num_pieces, full=True)
            self._committed = True
        else:
            self._data = bytearray(metainfo.length)
            self._have = Bitfield(metainfo.num_pieces)
            self._committed = False
        self.writes = 0
        self.reads = 0

    def bitfield(self) -> Bitfield:
        """A copy of the stored pieces."""
        with self._lock:
            return self._have.copy()

    def complete(self) -> bool:
        """Whether committed."""
        with self._lock:
            return self._committed

    def read_piece(self, index: int) -> bytes:
        """The piece bytes."""
        with self._lock:
            if index not in self._have:
                raise PieceUnavailable(f"piece {index} of {self.metainfo.digest} is not stored")
            self.reads += 1
            offset = self.metainfo.piece_offset(index)
            return bytes(self._data[offset : offset + self.metainfo.piece_size(index)])

    def write_piece(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Copy the bytes in and mark the piece."""
        if self._read_only:
            raise ReadOnlyArchive(f"{self.metainfo.digest} is read-only here")
        size = self.metainfo.piece_size(index)
        if len(data) != size:
            raise PieceHashMismatch(f"piece {index}: {len(data)} bytes, expected {size}")
        with self._lock:
            offset = self.metainfo.piece_offset(index)
            self._data[offset : offset + size] = data
            self._have.set(index)
            self.writes += 1

    def commit(self) -> None:
        """Mark complete once every piece is present."""
        with self._lock:
            if not self._have.complete():
                raise PieceUnavailable(
                    f"{self.metainfo.digest}: {self.metainfo.num_pieces - self._have.count()} "
                    "pieces missing"
                )
            self._committed = True

    def content(self) -> bytes:
        """All the bytes (tests)."""
        with self._lock:
            return bytes(self._data)


@implementer(IArchive)
class MemoryArchive:
    """An archive of :class:`MemoryPieceStorage` keyed by digest; storage survives 'restarts'."""

    def __init__(self, *, read_only: bool = False) -> None:
        self._lock = threading.Lock()
        self._read_only = read_only
        self.torrents: dict[Digest, MemoryPieceStorage] = {}

    def seed(self, metainfo: MetaInfo, data: bytes) -> MemoryPieceStorage:
        """Add a complete blob."""
        storage = MemoryPieceStorage(metainfo, data, read_only=self._read_only)
        with self._lock:
            self.torrents[metainfo.digest] = storage
        return storage

    def create(self, namespace: str, metainfo: MetaInfo) -> IPieceStorage:
        """Existing storage of the digest or a new empty one."""
        if self._read_only:
            raise ReadOnlyArchive("this archive does not download")
        with self._lock:
            storage = self.torrents.get(metainfo.digest)
            if storage is None:
                storage = self.torrents[metainfo.digest] = MemoryPieceStorage(metainfo)
            return storage

    def open(self, namespace: str, digest: Digest) -> IPieceStorage | None:
        """The storage of the digest, if any."""
        with self._lock:
            return self.torrents.get(digest)
