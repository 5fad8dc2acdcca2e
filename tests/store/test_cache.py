"""Tests for the cache state of kraken.store.BlobStore (readers, persist, access, delete)."""

from __future__ import annotations

import os
import socket

from kraken.core import Digest, MetaInfo
from kraken.store import (
    ACCESS_UPDATE_INTERVAL,
    BlobInUse,
    BlobNotFound,
    BlobPersisted,
    MetaInfoConflict,
)
from kraken.store.layout import StoreLayout
from tests.store.base import START, StoreTestCase, blob_bytes

UNKNOWN = Digest("0" * 64)


class CacheTests(StoreTestCase):
    """has, stat, metainfo, persist, touch, delete and listing of cached blobs."""

    def setUp(self) -> None:
        super().setUp()
        self.data = blob_bytes(3000)
        self.metainfo = self.store.put_bytes(self.data)
        self.digest = self.metainfo.digest

    def test_has_and_stat(self) -> None:
        """has is True for a cached blob; stat gives its size and times."""
        self.assertTrue(self.store.has(self.digest))
        self.assertFalse(self.store.has(UNKNOWN))
        info = self.store.stat(self.digest)
        self.assertEqual(
            (info.digest, info.size, info.mtime, info.last_access, info.persisted),
            (self.digest, 3000, START, START, False),
        )

    def test_unknown_blob(self) -> None:
        """Every cache method raises BlobNotFound naming the digest for an unknown blob."""
        for call in (
            lambda: self.store.stat(UNKNOWN),
            lambda: self.store.get_metainfo(UNKNOWN),
            lambda: self.store.set_metainfo(UNKNOWN, MetaInfo(UNKNOWN, 0, 1, (b"\0" * 32,))),
            lambda: self.store.open_reader(UNKNOWN),
            lambda: self.store.set_persist(UNKNOWN, True),
            lambda: self.store.is_persisted(UNKNOWN),
            lambda: self.store.touch(UNKNOWN),
            lambda: self.store.delete(UNKNOWN),
        ):
            e = self.assertRaises(BlobNotFound, call)
            self.assertEqual(e.digest, UNKNOWN)
            self.assertIn(str(UNKNOWN), str(e))

    def test_metainfo(self) -> None:
        """get_metainfo returns the committed metainfo, also after a restart (from the sidecar)."""
        self.assertEqual(self.store.get_metainfo(self.digest), self.metainfo)
        self.assertEqual(self.restart().get_metainfo(self.digest), self.metainfo)

    def test_set_metainfo(self) -> None:
        """set_metainfo replaces the sidecar (seen after restart) and the pieces follow it."""
        other = MetaInfo.of_bytes(self.data, 1000)
        self.store.set_metainfo(self.digest, other)
        self.assertEqual(self.store.get_metainfo(self.digest), other)
        self.assertEqual(self.restart().get_metainfo(self.digest), other)
        self.assertEqual(self.store.read_piece(self.digest, 2), self.data[2000:])

    def test_set_metainfo_conflicts(self) -> None:
        """Metainfo of another digest or another length is refused with MetaInfoConflict."""
        other_blob = MetaInfo.of_bytes(b"other", 10)
        self.assertRaises(MetaInfoConflict, self.store.set_metainfo, self.digest, other_blob)
        wrong_length = MetaInfo(self.digest, 10, 10, (b"\0" * 32,))
        e = self.assertRaises(MetaInfoConflict, self.store.set_metainfo, self.digest, wrong_length)
        self.assertIn("3000", str(e))
        self.assertEqual(self.store.get_metainfo(self.digest), self.metainfo)

    def test_reader(self) -> None:
        """A reader exposes path, size and fd; pread and a stream read the blob."""
        with self.store.open_reader(self.digest) as reader:
            self.assertEqual(reader.size, 3000)
            self.assertEqual(reader.digest, self.digest)
            self.assertEqual(reader.pread(10, 2990), self.data[2990:])
            self.assertEqual(reader.pread(10, 5000), b"")
            self.assertEqual(os.pread(reader.fileno(), 5, 0), self.data[:5])
            with open(reader.path, "rb") as f:
                self.assertEqual(f.read(), self.data)
            with reader.stream() as s1, reader.stream() as s2:
                self.assertEqual(s1.read(100), self.data[:100])
                self.assertEqual(s2.read(), self.data)
            self.assertEqual(self.store.open_readers(self.digest), 1)
        self.assertTrue(reader.closed)
        self.assertEqual(self.store.open_readers(self.digest), 0)
        reader.close()
        self.assertEqual(self.store.open_readers(self.digest), 0)

    def test_reader_sendfile(self) -> None:
        """A reader's fd works with os.sendfile."""
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        with self.store.open_reader(self.digest) as reader:
            sent = os.sendfile(a.fileno(), reader.fd, 1000, 500)
        self.assertEqual(sent, 500)
        self.assertEqual(b.recv(1000), self.data[1000:1500])

    def test_delete(self) -> None:
        """delete removes the blob, its sidecars and its metainfo."""
        self.store.delete(self.digest)
        self.assertFalse(self.store.has(self.digest))
        self.assertRaises(BlobNotFound, self.store.get_metainfo, self.digest)
        self.assertFalse(os.path.exists(StoreLayout.at(self.root).cache(self.digest).dir))
        self.assertEqual(os.listdir(os.path.join(self.root, "tmp")), [])
        self.assertRaises(BlobNotFound, self.store.delete, self.digest)

    def test_delete_while_reading(self) -> None:
        """delete raises BlobInUse while any reader is open, and works after the last closes."""
        r1 = self.store.open_reader(self.digest)
        r2 = self.store.open_reader(self.digest)
        e = self.assertRaises(BlobInUse, self.store.delete, self.digest)
        self.assertEqual(e.readers, 2)
        self.assertIn(str(self.digest), str(e))
        r1.close()
        self.assertRaises(BlobInUse, self.store.delete, self.digest)
        self.assertEqual(r2.pread(3000, 0), self.data)
        r2.close()
        self.store.delete(self.digest)
        self.assertFalse(self.store.has(self.digest))

    def test_persist(self) -> None:
        """A persisted blob cannot be deleted (BlobPersisted) until unpersisted."""
        self.assertFalse(self.store.is_persisted(self.digest))
        self.store.set_persist(self.digest, True)
        self.assertTrue(self.store.is_persisted(self.digest))
        self.assertTrue(self.restart().is_persisted(self.digest))
        e = self.assertRaises(BlobPersisted, self.store.delete, self.digest)
        self.assertIn(str(self.digest), str(e))
        self.store.set_persist(self.digest, False)
        self.store.set_persist(self.digest, False)
        self.assertFalse(self.store.is_persisted(self.digest))
        self.store.delete(self.digest)

    def test_touch_throttled(self) -> None:
        """touch writes the access time at most every 5 minutes per blob, unless forced."""
        self.assertEqual(ACCESS_UPDATE_INTERVAL, 300.0)
        self.clock.advance(100)
        self.store.touch(self.digest)
        self.assertEqual(self.store.stat(self.digest).last_access, START)
        self.clock.advance(200)
        self.store.touch(self.digest)
        self.assertEqual(self.store.stat(self.digest).last_access, START + 300)
        self.clock.advance(1)
        self.store.touch(self.digest, force=True)
        self.assertEqual(self.store.stat(self.digest).last_access, START + 301)

    def test_reads_record_access(self) -> None:
        """open_reader and read_piece count as accesses (throttled like touch)."""
        self.clock.advance(400)
        self.store.open_reader(self.digest).close()
        self.assertEqual(self.store.stat(self.digest).last_access, START + 400)
        self.clock.advance(400)
        self.store.read_piece(self.digest, 0)
        self.assertEqual(self.store.stat(self.digest).last_access, START + 800)

    def test_first_touch_after_restart_writes(self) -> None:
        """A restarted store does not know when it last wrote, so its first touch writes."""
        self.clock.advance(10)
        self.restart().touch(self.digest)
        self.assertEqual(self.store.stat(self.digest).last_access, START + 10)

    def test_list_cache(self) -> None:
        """list_cache lists every cached blob and ignores junk in the cache directory."""
        self.clock.advance(5)
        second = self.store.put_bytes(b"second", persist=True)
        os.makedirs(os.path.join(self.root, "cache", "zz", "yy", "not-a-digest"))
        os.makedirs(os.path.join(self.root, "cache", "00", "00", "ab" * 32))  # wrong shard
        infos = {i.digest: i for i in self.store.list_cache()}
        self.assertEqual(set(infos), {self.digest, second.digest})
        self.assertEqual(infos[second.digest].size, 6)
        self.assertEqual(infos[second.digest].mtime, START + 5)
        self.assertTrue(infos[second.digest].persisted)
        self.assertFalse(infos[self.digest].persisted)

    def test_metainfo_cache_bounded(self) -> None:
        """With a tiny in-memory metainfo cache, metainfo still comes right from the sidecars."""
        from kraken.store import BlobStore

        store = BlobStore(self.root, self.clock, metainfo_cache_size=1)
        others = [store.put_bytes(bytes([i]) * 10) for i in range(3)]
        for m in [*others, self.metainfo]:
            self.assertEqual(store.get_metainfo(m.digest), m)
        self.assertEqual(len(store._metainfo), 1)
