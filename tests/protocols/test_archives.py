"""The agent's and the origin's archives over a BlobStore: pieces as file regions."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kraken.core import MetaInfo, PieceLengthTable
from kraken.protocols.archives import AgentArchive, OriginArchive
from kraken.store import BlobStore
from kraken.torrent.archive import PieceUnavailable


class OpenPieceTests(SynchronousTestCase):
    """``open_piece`` serves cached blobs and the present pieces of downloads."""

    def setUp(self) -> None:
        self.data = os.urandom(5000)
        self.meta = MetaInfo.of_bytes(self.data, 1000)
        self.store = BlobStore(self.mktemp(), Clock())

    def read(self, region) -> bytes:
        try:
            return os.pread(region.fd, region.length, region.offset)
        finally:
            region.close()

    def test_download_in_progress(self) -> None:
        """A piece the download has is a region of its data file; a missing one is None."""
        storage = AgentArchive(self.store).create("ns", self.meta)
        storage.write_piece(2, self.data[2000:3000])
        self.assertEqual(self.read(storage.open_piece(2)), self.data[2000:3000])
        self.assertIsNone(storage.open_piece(1))
        self.assertRaises(PieceUnavailable, storage.read_piece, 1)
        self.assertRaises(PieceUnavailable, storage.open_piece, 5)

    def test_cached_blob(self) -> None:
        """Every piece of a cached blob, for the agent and the origin alike."""
        self.store.put_bytes(self.data, PieceLengthTable(((0, 1000),)))
        for storage in (
            AgentArchive(self.store).open("ns", self.meta.digest),
            OriginArchive(self.store).open("ns", self.meta.digest),
        ):
            assert storage is not None
            self.assertEqual(self.read(storage.open_piece(4)), self.data[4000:])
