"""Tests for the upload state of kraken.store.BlobStore (origin uploads, ingest, commit)."""

from __future__ import annotations

import io
import os
import random
from errno import ENOSPC
from unittest import SkipTest

from hypothesis import given, settings
from hypothesis import strategies as st

from kraken.core import DEFAULT_PIECE_LENGTHS, Digest, DigestMismatch, MetaInfo, PieceLengthTable
from kraken.store import BlobExists, BlobStore, InvalidUploadID, UploadNotFound
from tests.store.base import START, StoreTestCase, blob_bytes, files_under

SMALL_PIECES = PieceLengthTable(((0, 1000),))


class UploadTests(StoreTestCase):
    """Creating, writing, sizing, aborting and listing uploads."""

    def test_create_upload_gives_hex_id_and_empty_file(self) -> None:
        """A new upload has a 32-hex id, is empty, and lives flat under upload/."""
        uid = self.store.create_upload()
        self.assertRegex(uid, r"\A[0-9a-f]{32}\Z")
        self.assertEqual(self.store.upload_size(uid), 0)
        self.assertEqual(files_under(self.root), {f"upload/{uid}/data"})
        self.assertNotEqual(uid, self.store.create_upload())

    def test_write_upload_at_offsets(self) -> None:
        """Chunks written at offsets in any order land in place; the size follows."""
        uid = self.store.create_upload()
        self.store.write_upload(uid, 5, b"world")
        self.assertEqual(self.store.upload_size(uid), 10)
        self.store.write_upload(uid, 0, b"hello")
        self.store.write_upload(uid, 10, memoryview(b"!"))
        with open(os.path.join(self.root, "upload", uid, "data"), "rb") as f:
            self.assertEqual(f.read(), b"helloworld!")

    def test_write_upload_on_a_full_disk_names_the_file(self) -> None:
        """ENOSPC from the kernel (``/dev/full`` as the upload file) names the upload's file."""
        if not os.path.exists("/dev/full"):
            raise SkipTest("no /dev/full on this system")
        uid = self.store.create_upload()
        data = os.path.join(self.root, "upload", uid, "data")
        os.unlink(data)
        os.symlink("/dev/full", data)
        for chunk in (b"x" * 10, [b"x" * 10, b"y"]):
            with self.assertRaises(OSError) as caught:
                self.store.write_upload(uid, 0, chunk)
            self.assertEqual((caught.exception.errno, caught.exception.filename), (ENOSPC, data))

    def test_write_upload_negative_offset(self) -> None:
        """A negative offset is a ValueError naming it."""
        uid = self.store.create_upload()
        e = self.assertRaises(ValueError, self.store.write_upload, uid, -1, b"x")
        self.assertIn("-1", str(e))

    def test_unknown_upload(self) -> None:
        """Every upload method raises UploadNotFound, naming the id, for an unknown id."""
        uid = "ab" * 16
        for call in (
            lambda: self.store.write_upload(uid, 0, b"x"),
            lambda: self.store.upload_size(uid),
            lambda: self.store.commit_upload(uid, Digest.of_bytes(b"")),
            lambda: self.store.abort_upload(uid),
        ):
            e = self.assertRaises(UploadNotFound, call)
            self.assertEqual(e.uid, uid)
            self.assertIn(uid, str(e))
        self.assertEqual(files_under(self.root), set())

    def test_invalid_upload_ids(self) -> None:
        """Ids that are not 32 lowercase hex never become paths: InvalidUploadID, no I/O."""
        before = files_under(os.path.dirname(self.root))
        bad_ids = ("../" * 10 + "etc", "..", "", "A" * 32, "g" * 32, "a" * 31, "a" * 33, "a/" * 16)
        for bad in bad_ids:
            for call in (
                lambda b=bad: self.store.write_upload(b, 0, b"x"),
                lambda b=bad: self.store.upload_size(b),
                lambda b=bad: self.store.commit_upload(b, Digest.of_bytes(b"x")),
                lambda b=bad: self.store.abort_upload(b),
            ):
                e = self.assertRaises(InvalidUploadID, call)
                self.assertIn(repr(bad), str(e))
        self.assertEqual(files_under(os.path.dirname(self.root)), before)

    @given(st.text(max_size=40))
    def test_arbitrary_ids_rejected_or_hex(self, uid: str) -> None:
        """Any text is either 32 lowercase hex or rejected before touching the disk."""
        try:
            self.store.upload_size(uid)
        except InvalidUploadID:
            self.assertNotRegex(uid, r"\A[0-9a-f]{32}\Z")
        except UploadNotFound:
            self.assertRegex(uid, r"\A[0-9a-f]{32}\Z")

    def test_abort_upload(self) -> None:
        """Aborting removes the upload; using it afterwards is UploadNotFound."""
        uid = self.store.create_upload()
        self.store.write_upload(uid, 0, b"data")
        self.store.abort_upload(uid)
        self.assertEqual(files_under(self.root), set())
        self.assertRaises(UploadNotFound, self.store.write_upload, uid, 0, b"x")
        self.assertRaises(UploadNotFound, self.store.abort_upload, uid)

    def test_list_uploads(self) -> None:
        """list_uploads reports id, size and the store-clock time of the last write."""
        a = self.store.create_upload()
        self.clock.advance(10)
        b = self.store.create_upload()
        self.clock.advance(10)
        self.store.write_upload(b, 0, b"12345")
        infos = {u.uid: u for u in self.store.list_uploads()}
        self.assertEqual(set(infos), {a, b})
        self.assertEqual((infos[a].size, infos[a].mtime), (0, START))
        self.assertEqual((infos[b].size, infos[b].mtime), (5, START + 20))

    def test_stale_uploads_removed_at_start(self) -> None:
        """The constructor removes uploads (and staging) of a previous run; the cache stays."""
        kept = self.store.put_bytes(b"kept")
        for _ in range(3):
            self.store.write_upload(self.store.create_upload(), 0, b"partial")
        os.mkdir(os.path.join(self.root, "tmp", "abcd"))
        store = self.restart()
        self.assertEqual(store.stale_uploads_removed, 3)
        self.assertEqual(store.list_uploads(), [])
        self.assertEqual(os.listdir(os.path.join(self.root, "tmp")), [])
        self.assertTrue(store.has(kept.digest))


class CommitTests(StoreTestCase):
    """Committing an upload into the cache."""

    def test_commit_moves_into_cache_with_metainfo(self) -> None:
        """Commit verifies, returns the metainfo, and moves data + sidecars to the sharded cache."""
        data = blob_bytes(4500)
        digest = Digest.of_bytes(data)
        uid = self.store.create_upload()
        self.store.write_upload(uid, 0, data[:2000])
        self.store.write_upload(uid, 2000, data[2000:])
        self.clock.advance(7)
        metainfo = self.store.commit_upload(uid, digest, SMALL_PIECES)
        self.assertEqual(metainfo, MetaInfo.of_bytes(data, 1000))
        h = digest.hex
        entry = f"cache/{h[:2]}/{h[2:4]}/{h}"
        self.assertEqual(
            files_under(self.root),
            {f"{entry}/data", f"{entry}/metainfo", f"{entry}/last_access"},
        )
        with open(os.path.join(self.root, entry, "metainfo"), "rb") as f:
            self.assertEqual(MetaInfo.from_json(f.read()), metainfo)
        self.assertEqual(self.store.get_metainfo(digest), metainfo)
        info = self.store.stat(digest)
        self.assertEqual((info.size, info.mtime, info.last_access), (4500, START + 7, START + 7))
        self.assertFalse(info.persisted)
        self.assertRaises(UploadNotFound, self.store.upload_size, uid)

    def test_commit_default_piece_lengths(self) -> None:
        """Without a table, commit uses DEFAULT_PIECE_LENGTHS (256 KiB for small blobs)."""
        metainfo = self.store.put_bytes(b"abc")
        self.assertEqual(metainfo.piece_length, DEFAULT_PIECE_LENGTHS.for_size(3))
        self.assertEqual(metainfo.piece_length, 256 * 1024)

    def test_commit_empty_blob(self) -> None:
        """An empty upload commits to an empty blob with one empty piece."""
        uid = self.store.create_upload()
        metainfo = self.store.commit_upload(uid, Digest.of_bytes(b""))
        self.assertEqual((metainfo.length, metainfo.num_pieces), (0, 1))
        self.assertEqual(self.store.read_piece(metainfo.digest, 0), b"")

    def test_commit_with_callers_metainfo(self) -> None:
        """A caller's metainfo of the right digest and length is stored as it is."""
        data = blob_bytes(4500)
        digest = Digest.of_bytes(data)
        hashed = MetaInfo.of_bytes(data, 1500)  # not the table's 1000: proves it is not redone
        uid = self.store.create_upload()
        self.store.write_upload(uid, 0, data)
        metainfo = self.store.commit_upload(uid, digest, SMALL_PIECES, hashed=hashed)
        self.assertEqual(metainfo, hashed)
        self.assertEqual(self.store.get_metainfo(digest), hashed)

    def test_commit_with_callers_metainfo_checks_digest_and_length(self) -> None:
        """A caller's metainfo of another digest or length: DigestMismatch, upload discarded."""
        data = blob_bytes(4500)
        digest = Digest.of_bytes(data)
        for hashed in (MetaInfo.of_bytes(data[:4000], 1000), MetaInfo.of_bytes(b"x" * 4500, 1000)):
            uid = self.store.create_upload()
            self.store.write_upload(uid, 0, data)
            self.assertRaises(
                DigestMismatch, self.store.commit_upload, uid, digest, SMALL_PIECES, hashed=hashed
            )
            self.assertFalse(self.store.has(digest))
            self.assertEqual(files_under(self.root), set())

    def test_commit_mismatch_discards(self) -> None:
        """A wrong digest raises DigestMismatch naming both digests and the upload is discarded."""
        uid = self.store.create_upload()
        self.store.write_upload(uid, 0, b"actual")
        claimed = Digest.of_bytes(b"claimed")
        e = self.assertRaises(DigestMismatch, self.store.commit_upload, uid, claimed)
        self.assertIn(str(claimed), str(e))
        self.assertIn(str(Digest.of_bytes(b"actual")), str(e))
        self.assertIn(uid, str(e))
        self.assertFalse(self.store.has(claimed))
        self.assertFalse(self.store.has(Digest.of_bytes(b"actual")))
        self.assertRaises(UploadNotFound, self.store.upload_size, uid)
        self.assertEqual(files_under(self.root), set())

    def test_commit_existing_blob_discards(self) -> None:
        """Committing a blob already cached raises BlobExists and discards the upload only."""
        first = self.store.put_bytes(b"same")
        uid = self.store.create_upload()
        self.store.write_upload(uid, 0, b"same")
        e = self.assertRaises(BlobExists, self.store.commit_upload, uid, first.digest)
        self.assertIn(str(first.digest), str(e))
        self.assertRaises(UploadNotFound, self.store.upload_size, uid)
        self.assertEqual(self.store.list_uploads(), [])
        self.assertTrue(self.store.has(first.digest))

    def test_commit_existing_digest_wrong_bytes_is_mismatch(self) -> None:
        """Claiming a cached blob's digest for other bytes is DigestMismatch, not BlobExists."""
        first = self.store.put_bytes(b"same")
        uid = self.store.create_upload()
        self.store.write_upload(uid, 0, b"different")
        self.assertRaises(DigestMismatch, self.store.commit_upload, uid, first.digest)
        self.assertRaises(UploadNotFound, self.store.upload_size, uid)
        self.assertEqual(self.store.read_piece(first.digest, 0), b"same")
        hashed = MetaInfo.of_bytes(b"different", 1000)
        uid = self.store.create_upload()
        self.store.write_upload(uid, 0, b"different")
        self.assertRaises(
            DigestMismatch, self.store.commit_upload, uid, first.digest, hashed=hashed
        )
        self.assertEqual(self.store.list_uploads(), [])

    def test_commit_persist(self) -> None:
        """commit_upload(persist=True) lands in the cache already persisted."""
        metainfo = self.store.put_bytes(b"keep me", persist=True)
        self.assertTrue(self.store.is_persisted(metainfo.digest))
        self.assertTrue(self.store.stat(metainfo.digest).persisted)

    def test_commit_reads_file_once(self) -> None:
        """Commit reads the upload in one pass: total bytes read equal the blob size."""
        data = blob_bytes(3 * 1024 * 1024 + 17)
        uid = self.store.create_upload()
        self.store.write_upload(uid, 0, data)
        reads: list[int] = []
        real_readv = os.readv

        def counting_readv(fd: int, buffers: list[bytearray]) -> int:
            n = real_readv(fd, buffers)
            reads.append(n)
            return n

        self.patch(os, "readv", counting_readv)
        self.store.commit_upload(uid, Digest.of_bytes(data))
        self.assertEqual(sum(reads), len(data))

    def test_durable_commit(self) -> None:
        """A durable store (fsync on commit) commits and serves the same bytes."""
        store = BlobStore(self.mktemp(), self.clock, durable=True)
        metainfo = store.put_bytes(b"durable bytes")
        self.assertEqual(store.read_piece(metainfo.digest, 0), b"durable bytes")

    @settings(max_examples=30, deadline=None)
    @given(st.binary(max_size=5000), st.data())
    def test_chunks_in_any_order(self, data: bytes, draw: st.DataObject) -> None:
        """Writing an upload in chunks of any size and order commits to the blob's metainfo."""
        store = BlobStore(self.mktemp(), self.clock)
        cuts = sorted(draw.draw(st.sets(st.integers(0, len(data)), max_size=8)))
        bounds = list(zip([0, *cuts], [*cuts, len(data)], strict=True))
        random.Random(draw.draw(st.integers())).shuffle(bounds)
        uid = store.create_upload()
        for start, end in bounds:
            store.write_upload(uid, start, data[start:end])
        metainfo = store.commit_upload(uid, Digest.of_bytes(data), SMALL_PIECES)
        self.assertEqual(metainfo, MetaInfo.of_bytes(data, 1000))
        with store.open_reader(metainfo.digest) as reader:
            self.assertEqual(reader.pread(len(data) + 1, 0), data)


class IngestTests(StoreTestCase):
    """Streaming a blob into an upload through a file object (the origin's backend fetch)."""

    def test_ingest_commit(self) -> None:
        """Bytes written through the ingest's file commit into the cache."""
        data = blob_bytes(2500)
        with self.store.open_ingest() as ingest:
            ingest.write(data[:1000])
            ingest.file.write(data[1000:])
            metainfo = ingest.commit(Digest.of_bytes(data), SMALL_PIECES, persist=True)
        self.assertEqual(metainfo, MetaInfo.of_bytes(data, 1000))
        self.assertTrue(self.store.is_persisted(metainfo.digest))
        self.assertEqual(self.store.list_uploads(), [])

    def test_ingest_copy_from_stream(self) -> None:
        """An ingest file works with shutil-style copying from any stream."""
        import shutil

        data = blob_bytes(10_000)
        with self.store.open_ingest() as ingest:
            shutil.copyfileobj(io.BytesIO(data), ingest.file)
            metainfo = ingest.commit(Digest.of_bytes(data))
        self.assertEqual(self.store.stat(metainfo.digest).size, 10_000)

    def test_ingest_without_commit_aborts(self) -> None:
        """Leaving the with block without committing (e.g. on an error) discards the upload."""
        with self.assertRaises(ZeroDivisionError), self.store.open_ingest() as ingest:
            ingest.write(b"partial")
            1 / 0  # noqa: B018
        self.assertEqual(self.store.list_uploads(), [])
        self.assertRaises(UploadNotFound, self.store.upload_size, ingest.uid)

    def test_ingest_mismatch(self) -> None:
        """An ingest committed with the wrong digest raises DigestMismatch and leaves nothing."""
        with self.store.open_ingest() as ingest:
            ingest.write(b"abc")
            self.assertRaises(DigestMismatch, ingest.commit, Digest.of_bytes(b"xyz"))
        self.assertEqual(files_under(self.root), set())

    def test_put_bytes_exists(self) -> None:
        """put_bytes of content already cached raises BlobExists and leaves no upload."""
        self.store.put_bytes(b"x")
        self.assertRaises(BlobExists, self.store.put_bytes, b"x")
        self.assertEqual(self.store.list_uploads(), [])
