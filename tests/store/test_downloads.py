"""Tests for the download state of kraken.store.BlobStore (P2P pieces, resume, completion)."""

from __future__ import annotations

import hashlib
import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from kraken.core import Bitfield, Digest, MetaInfo, PieceLengthTable
from kraken.core.metainfo import GiB, MiB
from kraken.store import (
    BlobExists,
    BlobNotFound,
    BlobStore,
    DownloadIncomplete,
    MetaInfoConflict,
    PieceMissing,
)
from tests.store.base import START, StoreTestCase, blob_bytes, files_under, pieces_of


class DownloadTests(StoreTestCase):
    """Creating downloads, writing and reading pieces, completing and aborting."""

    def setUp(self) -> None:
        super().setUp()
        self.data = blob_bytes(10_500)
        self.metainfo = MetaInfo.of_bytes(self.data, 1000)
        self.digest = self.metainfo.digest
        self.pieces = pieces_of(self.data, self.metainfo)

    def entry(self, state: str = "download") -> str:
        """The entry directory of the test blob in ``state``."""
        h = self.digest.hex
        return os.path.join(self.root, state, h[:2], h[2:4], h)

    def test_create_download_sparse_with_sidecars(self) -> None:
        """create_download makes a full-length sparse file, a zeroed status and the metainfo."""
        status = self.store.create_download(self.metainfo)
        self.assertEqual(status, Bitfield(11))
        entry = self.entry()
        self.assertEqual(
            set(os.listdir(entry)), {"data", "metainfo", "piece_status", "last_access"}
        )
        self.assertEqual(os.stat(os.path.join(entry, "data")).st_size, 10_500)
        with open(os.path.join(entry, "piece_status"), "rb") as f:
            self.assertEqual(f.read(), bytes(11))
        with open(os.path.join(entry, "metainfo"), "rb") as f:
            self.assertEqual(f.read(), self.metainfo.to_json())
        self.assertTrue(self.store.has_download(self.digest))
        self.assertFalse(self.store.has(self.digest))
        self.assertEqual(self.store.get_metainfo(self.digest), self.metainfo)

    def test_create_download_idempotent(self) -> None:
        """A second create_download with the same metainfo keeps the pieces and returns them."""
        self.store.create_download(self.metainfo)
        self.store.write_piece(self.digest, 3, self.pieces[3])
        self.assertEqual(self.store.create_download(self.metainfo), Bitfield.of(11, [3]))
        self.assertEqual(self.store.read_piece(self.digest, 3), self.pieces[3])

    def test_create_download_conflict(self) -> None:
        """A download of the same digest with other metainfo raises MetaInfoConflict."""
        self.store.create_download(self.metainfo)
        other = MetaInfo.of_bytes(self.data, 2000)
        e = self.assertRaises(MetaInfoConflict, self.store.create_download, other)
        self.assertIn(str(self.digest), str(e))
        self.store.abort_download(self.digest)
        self.assertEqual(self.store.create_download(other), Bitfield(6))
        self.assertEqual(self.store.get_metainfo(self.digest), other)

    def test_create_download_when_cached(self) -> None:
        """create_download of a cached blob raises BlobExists."""
        self.store.put_bytes(self.data)
        self.assertRaises(BlobExists, self.store.create_download, self.metainfo)

    def test_write_and_read_pieces(self) -> None:
        """write_piece marks the status byte in place; read_piece gives the bytes back."""
        self.store.create_download(self.metainfo)
        self.assertTrue(self.store.write_piece(self.digest, 10, self.pieces[10]))
        self.assertTrue(self.store.write_piece(self.digest, 0, bytearray(self.pieces[0])))
        self.assertEqual(self.store.piece_status(self.digest), Bitfield.of(11, [0, 10]))
        with open(os.path.join(self.entry(), "piece_status"), "rb") as f:
            self.assertEqual(f.read(), b"\x01" + bytes(9) + b"\x01")
        self.assertEqual(self.store.read_piece(self.digest, 10), self.pieces[10])
        self.assertEqual(self.store.read_piece(self.digest, 0), self.pieces[0])

    def test_open_download_piece(self) -> None:
        """A download's present piece opens as a descriptor of its data file (for sendfile),
        which keeps the bytes through completion; a missing piece or an unknown blob gives
        None."""
        self.assertIsNone(self.store.open_download_piece(self.digest, 3))
        self.store.create_download(self.metainfo)
        self.assertIsNone(self.store.open_download_piece(self.digest, 3))
        self.store.write_piece(self.digest, 3, self.pieces[3])
        fd = self.store.open_download_piece(self.digest, 3)
        assert fd is not None
        try:
            for i, piece in enumerate(self.pieces):
                self.store.write_piece(self.digest, i, piece)
            self.store.complete_download(self.digest)
            offset = self.metainfo.piece_offset(3)
            self.assertEqual(os.pread(fd, 1000, offset), self.pieces[3])
        finally:
            os.close(fd)

    def test_write_piece_twice(self) -> None:
        """Writing a piece already present returns False."""
        self.store.create_download(self.metainfo)
        self.assertTrue(self.store.write_piece(self.digest, 2, self.pieces[2]))
        self.assertFalse(self.store.write_piece(self.digest, 2, self.pieces[2]))

    def test_write_piece_bad_input(self) -> None:
        """Wrong piece size is ValueError, an index out of range IndexError, nothing marked."""
        self.store.create_download(self.metainfo)
        self.assertRaises(ValueError, self.store.write_piece, self.digest, 10, self.pieces[0])
        self.assertRaises(IndexError, self.store.write_piece, self.digest, 11, b"x")
        self.assertRaises(IndexError, self.store.write_piece, self.digest, -1, b"x")
        self.assertEqual(self.store.piece_status(self.digest).count(), 0)

    def test_write_piece_unknown(self) -> None:
        """Writing to a download that does not exist raises BlobNotFound naming the digest."""
        e = self.assertRaises(BlobNotFound, self.store.write_piece, self.digest, 0, b"x")
        self.assertIn(str(self.digest), str(e))

    def test_write_piece_after_completion(self) -> None:
        """A late duplicate piece for a blob already completed into the cache is a no-op."""
        self.store.create_download(self.metainfo)
        for i, piece in enumerate(self.pieces):
            self.store.write_piece(self.digest, i, piece)
        self.store.complete_download(self.digest)
        self.assertFalse(self.store.write_piece(self.digest, 4, self.pieces[4]))

    def test_read_missing_piece(self) -> None:
        """Reading a piece the download lacks raises PieceMissing naming digest and index."""
        self.store.create_download(self.metainfo)
        e = self.assertRaises(PieceMissing, self.store.read_piece, self.digest, 5)
        self.assertEqual(e.index, 5)
        self.assertIn(str(self.digest), str(e))

    def test_read_piece_unknown(self) -> None:
        """read_piece and piece_status of an unknown blob raise BlobNotFound."""
        self.assertRaises(BlobNotFound, self.store.read_piece, self.digest, 0)
        self.assertRaises(BlobNotFound, self.store.piece_status, self.digest)

    def test_read_piece_from_cache(self) -> None:
        """read_piece serves any piece of a cached blob; piece_status of it is full."""
        self.store.put_bytes(self.data, _table(1000))
        self.assertEqual(self.store.read_piece(self.digest, 10), self.pieces[10])
        self.assertEqual(self.store.piece_status(self.digest), Bitfield(11, full=True))

    def test_complete_download(self) -> None:
        """A complete download moves with its metainfo into the cache, status sidecar dropped."""
        self.store.create_download(self.metainfo)
        for i in reversed(range(11)):
            self.store.write_piece(self.digest, i, self.pieces[i])
        self.clock.advance(60)
        self.assertEqual(self.store.complete_download(self.digest), self.metainfo)
        self.assertFalse(self.store.has_download(self.digest))
        self.assertTrue(self.store.has(self.digest))
        self.assertEqual(set(os.listdir(self.entry("cache"))), {"data", "metainfo", "last_access"})
        self.assertFalse(os.path.exists(self.entry()))
        with self.store.open_reader(self.digest) as reader:
            self.assertEqual(reader.pread(reader.size, 0), self.data)
        info = self.store.stat(self.digest)
        self.assertEqual((info.mtime, info.last_access), (START + 60, START + 60))
        self.assertEqual(self.store.get_metainfo(self.digest), self.metainfo)

    def test_namespace_recorded_and_moved_to_cache(self) -> None:
        """create_download(namespace=) records it; it moves to the cache and survives a restart."""
        self.assertIsNone(self.store.get_namespace(self.digest))
        self.store.create_download(self.metainfo, namespace="library/ubuntu")
        self.assertEqual(self.store.get_namespace(self.digest), "library/ubuntu")
        # A resumed download keeps the first namespace.
        self.store.create_download(self.metainfo, namespace="other")
        for i, piece in enumerate(self.pieces):
            self.store.write_piece(self.digest, i, piece)
        self.store.complete_download(self.digest)
        self.assertIn("namespace", os.listdir(self.entry("cache")))
        self.assertEqual(self.restart().get_namespace(self.digest), "library/ubuntu")
        self.store.delete(self.digest)
        self.assertIsNone(self.store.get_namespace(self.digest))

    def test_no_namespace_recorded(self) -> None:
        """Without a namespace (or for an uploaded blob) get_namespace is None."""
        self.store.create_download(self.metainfo)
        self.assertIsNone(self.store.get_namespace(self.digest))
        other = self.store.put_bytes(b"uploaded")
        self.assertIsNone(self.store.get_namespace(other.digest))

    def test_complete_idempotent(self) -> None:
        """Completing again after completion returns the cached metainfo."""
        self.store.create_download(self.metainfo)
        for i, piece in enumerate(self.pieces):
            self.store.write_piece(self.digest, i, piece)
        self.store.complete_download(self.digest)
        self.assertEqual(self.store.complete_download(self.digest), self.metainfo)

    def test_complete_incomplete(self) -> None:
        """Completing with pieces missing raises DownloadIncomplete and keeps the download."""
        self.store.create_download(self.metainfo)
        for i in range(10):
            self.store.write_piece(self.digest, i, self.pieces[i])
        e = self.assertRaises(DownloadIncomplete, self.store.complete_download, self.digest)
        self.assertEqual((e.missing, e.total), (1, 11))
        self.assertIn(str(self.digest), str(e))
        self.assertTrue(self.store.has_download(self.digest))
        self.assertFalse(self.store.has(self.digest))

    def test_complete_unknown(self) -> None:
        """Completing an unknown blob raises BlobNotFound."""
        self.assertRaises(BlobNotFound, self.store.complete_download, self.digest)

    def test_abort_download(self) -> None:
        """Aborting removes the download; further use is BlobNotFound."""
        self.store.create_download(self.metainfo)
        self.store.abort_download(self.digest)
        self.assertFalse(self.store.has_download(self.digest))
        self.assertEqual(files_under(self.root), set())
        self.assertRaises(BlobNotFound, self.store.abort_download, self.digest)
        self.assertRaises(BlobNotFound, self.store.get_metainfo, self.digest)
        self.assertRaises(BlobNotFound, self.store.write_piece, self.digest, 0, self.pieces[0])

    def test_list_downloads(self) -> None:
        """list_downloads reports full length, last write time and last access."""
        self.store.create_download(self.metainfo)
        self.clock.advance(30)
        self.store.write_piece(self.digest, 1, self.pieces[1])
        [info] = self.store.list_downloads()
        self.assertEqual(
            (info.digest, info.size, info.mtime, info.last_access, info.persisted),
            (self.digest, 10_500, START + 30, START, False),
        )

    def test_resume_after_restart(self) -> None:
        """A new store over the same root sees the pieces written before, and finishes."""
        self.store.create_download(self.metainfo)
        for i in (0, 4, 7):
            self.store.write_piece(self.digest, i, self.pieces[i])
        store = self.restart()
        self.assertEqual(store.piece_status(self.digest), Bitfield.of(11, [0, 4, 7]))
        self.assertEqual(store.create_download(self.metainfo), Bitfield.of(11, [0, 4, 7]))
        self.assertEqual(store.read_piece(self.digest, 4), self.pieces[4])
        for i in Bitfield.of(11, [0, 4, 7]).missing():
            self.assertTrue(store.write_piece(self.digest, i, self.pieces[i]))
        store.complete_download(self.digest)
        self.assertEqual(hashlib.sha256(_read(store, self.digest)).hexdigest(), self.digest.hex)

    def test_durable_download(self) -> None:
        """A durable store (fdatasync per piece, fsync on completion) downloads the same blob."""
        store = BlobStore(self.mktemp(), self.clock, durable=True)
        store.create_download(self.metainfo)
        for i, piece in enumerate(self.pieces):
            store.write_piece(self.digest, i, piece)
        store.complete_download(self.digest)
        self.assertEqual(_read(store, self.digest), self.data)

    @settings(max_examples=25, deadline=None)
    @given(st.binary(max_size=3000), st.integers(1, 500), st.data())
    def test_pieces_in_any_order(self, data: bytes, piece_length: int, draw: st.DataObject) -> None:
        """Any subset of pieces in any order gives that status; all of them the exact blob."""
        store = BlobStore(self.mktemp(), self.clock)
        metainfo = MetaInfo.of_bytes(data, piece_length)
        pieces = pieces_of(data, metainfo)
        order = list(range(metainfo.num_pieces))
        random.Random(draw.draw(st.integers())).shuffle(order)
        cut = draw.draw(st.integers(0, len(order)))
        store.create_download(metainfo)
        for i in order[:cut]:
            store.write_piece(metainfo.digest, i, pieces[i])
        restarted = BlobStore(store.layout.root, self.clock)
        self.assertEqual(
            restarted.piece_status(metainfo.digest), Bitfield.of(metainfo.num_pieces, order[:cut])
        )
        for i in order[cut:]:
            restarted.write_piece(metainfo.digest, i, pieces[i])
        restarted.complete_download(metainfo.digest)
        self.assertEqual(_read(restarted, metainfo.digest), data)


class SparseTests(StoreTestCase):
    """Downloads larger than 4 GiB are sparse files addressed with 64-bit offsets."""

    def test_five_gib_sparse(self) -> None:
        """A 5 GiB download allocates only what was written; its last piece reads back."""
        last = blob_bytes(4096, seed=3)
        length = 5 * GiB + len(last)
        piece_length = 8 * MiB
        count = -(-length // piece_length)
        hashes = (b"\0" * 32,) * (count - 1) + (hashlib.sha256(last).digest(),)
        metainfo = MetaInfo(Digest("ab" * 32), length, piece_length, hashes)
        self.assertEqual(metainfo.piece_size(count - 1), len(last))
        self.store.create_download(metainfo)
        self.assertTrue(self.store.write_piece(metainfo.digest, count - 1, last))
        self.assertEqual(self.store.read_piece(metainfo.digest, count - 1), last)
        self.assertEqual(self.store.piece_status(metainfo.digest), Bitfield.of(count, [count - 1]))
        h = metainfo.digest.hex
        st_ = os.stat(os.path.join(self.root, "download", h[:2], h[2:4], h, "data"))
        self.assertEqual(st_.st_size, length)
        self.assertLess(st_.st_blocks * 512, 1 * MiB)
        self.assertRaises(DownloadIncomplete, self.store.complete_download, metainfo.digest)
        self.store.abort_download(metainfo.digest)


def _table(piece_length: int) -> PieceLengthTable:
    return PieceLengthTable(((0, piece_length),))


def _read(store: BlobStore, digest: Digest) -> bytes:
    with store.open_reader(digest) as reader:
        return reader.pread(reader.size, 0)
