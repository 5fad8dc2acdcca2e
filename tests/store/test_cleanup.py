"""Tests for kraken.store.cleanup: TTI, TTL and watermark eviction over a BlobStore."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from kraken.core import Digest, MetaInfo
from kraken.store import BlobStore, CleanupPolicy, StoreCleaner
from kraken.store.cleanup import DEFAULT_TTI, DEFAULT_TTL, HOUR
from tests.store.base import START, StoreTestCase, blob_bytes

NO_TIME_RULES = CleanupPolicy(tti=None, ttl=None)


def cache_only(store: BlobStore, policy: CleanupPolicy) -> StoreCleaner:
    """A cleaner that looks at the cache only."""
    return StoreCleaner(store, cache=policy, downloads=None, uploads=None)


class PolicyTests(StoreTestCase):
    """CleanupPolicy values."""

    def test_defaults(self) -> None:
        """Defaults are DESIGN 8's: TTI 6 h, TTL 24 h, no watermark."""
        policy = CleanupPolicy()
        self.assertEqual((policy.tti, policy.ttl), (6 * HOUR, 24 * HOUR))
        self.assertEqual((DEFAULT_TTI, DEFAULT_TTL), (21600.0, 86400.0))
        self.assertIsNone(policy.eviction_target)
        cleaner = StoreCleaner(self.store)
        self.assertEqual(cleaner.cache, policy)
        self.assertEqual(cleaner.downloads, policy)
        self.assertEqual(cleaner.uploads, CleanupPolicy(tti=None, ttl=24 * HOUR))

    def test_invalid(self) -> None:
        """Negative values and a low watermark above the high one (or alone) are refused."""
        for kwargs in (
            {"tti": -1.0},
            {"ttl": -1.0},
            {"high_watermark": -1},
            {"high_watermark": 10, "low_watermark": 11},
            {"low_watermark": 5},
        ):
            self.assertRaises(ValueError, CleanupPolicy, **kwargs)

    def test_low_defaults_to_high(self) -> None:
        """Without a low watermark, eviction stops at the high watermark."""
        self.assertEqual(CleanupPolicy(high_watermark=100).eviction_target, 100)
        self.assertEqual(CleanupPolicy(high_watermark=100, low_watermark=50).eviction_target, 50)


class TimeRuleTests(StoreTestCase):
    """TTL (by mtime) and TTI (by last access)."""

    def test_ttl(self) -> None:
        """A cached blob goes once more than TTL has passed since it entered the cache."""
        digest = self.store.put_bytes(b"blob").digest
        cleaner = cache_only(self.store, CleanupPolicy(tti=None, ttl=100.0))
        self.clock.advance(100)
        self.store.touch(digest, force=True)  # access does not extend a TTL
        self.assertEqual(cleaner.run_cleanup().removed, ())
        self.clock.advance(1)
        result = cleaner.run_cleanup()
        self.assertEqual(result.removed_digests(), {digest})
        self.assertEqual(result.removed[0].reason, "ttl")
        self.assertEqual(result.freed_bytes, 4)
        self.assertFalse(self.store.has(digest))

    def test_tti(self) -> None:
        """A cached blob goes after TTI without access; an access restarts the count."""
        digest = self.store.put_bytes(b"blob").digest
        cleaner = cache_only(self.store, CleanupPolicy(tti=1000.0, ttl=None))
        self.clock.advance(900)
        self.store.open_reader(digest).close()
        self.clock.advance(900)
        self.assertEqual(cleaner.run_cleanup().removed, ())
        self.clock.advance(101)
        result = cleaner.run_cleanup()
        self.assertEqual([(r.name, r.reason) for r in result.removed], [(str(digest), "tti")])

    def test_now_argument(self) -> None:
        """run_cleanup(now) uses the given time rather than the clock."""
        digest = self.store.put_bytes(b"blob").digest
        cleaner = cache_only(self.store, CleanupPolicy(tti=None, ttl=10.0))
        self.assertEqual(cleaner.run_cleanup(START + 5).removed, ())
        self.assertEqual(cleaner.run_cleanup(START + 11).removed_digests(), {digest})

    def test_persisted_never_removed(self) -> None:
        """A persisted blob survives TTL and TTI however old, and goes once unpersisted."""
        digest = self.store.put_bytes(b"keep", persist=True).digest
        cleaner = cache_only(self.store, CleanupPolicy(tti=1.0, ttl=1.0))
        self.clock.advance(10 * DEFAULT_TTL)
        result = cleaner.run_cleanup()
        self.assertEqual(result.removed, ())
        self.assertTrue(self.store.has(digest))
        self.store.set_persist(digest, False)
        self.assertEqual(cleaner.run_cleanup().removed_digests(), {digest})

    def test_open_blob_never_removed(self) -> None:
        """A blob with an open reader is refused, kept, and removed after the reader closes."""
        digest = self.store.put_bytes(b"busy").digest
        cleaner = cache_only(self.store, CleanupPolicy(tti=1.0, ttl=1.0))
        reader = self.store.open_reader(digest)
        self.clock.advance(10 * DEFAULT_TTL)
        result = cleaner.run_cleanup()
        self.assertEqual(result.removed, ())
        self.assertEqual(result.refused, (str(digest),))
        self.assertEqual(reader.pread(4, 0), b"busy")
        reader.close()
        self.assertEqual(cleaner.run_cleanup().removed_digests(), {digest})

    def test_downloads_ttl_since_last_piece(self) -> None:
        """A download goes after TTL without a piece written; each piece restarts the count."""
        data = blob_bytes(3000)
        metainfo = MetaInfo.of_bytes(data, 1000)
        self.store.create_download(metainfo)
        cleaner = StoreCleaner(
            self.store, cache=None, downloads=CleanupPolicy(tti=None, ttl=100.0), uploads=None
        )
        self.clock.advance(90)
        self.store.write_piece(metainfo.digest, 0, data[:1000])
        self.clock.advance(90)
        self.assertEqual(cleaner.run_cleanup().removed, ())
        self.clock.advance(11)
        result = cleaner.run_cleanup()
        self.assertEqual(result.removed_digests("download"), {metainfo.digest})
        self.assertFalse(self.store.has_download(metainfo.digest))

    def test_downloads_tti(self) -> None:
        """A download goes after TTI without reads or writes of pieces."""
        data = blob_bytes(3000)
        metainfo = MetaInfo.of_bytes(data, 1000)
        self.store.create_download(metainfo)
        cleaner = StoreCleaner(
            self.store, cache=None, downloads=CleanupPolicy(tti=500.0, ttl=None), uploads=None
        )
        self.clock.advance(400)
        self.store.write_piece(metainfo.digest, 1, data[1000:2000])
        self.clock.advance(400)
        self.assertEqual(cleaner.run_cleanup().removed, ())
        self.clock.advance(101)
        self.assertEqual(cleaner.run_cleanup().removed[0].reason, "tti")

    def test_uploads_ttl_since_last_write(self) -> None:
        """An abandoned upload goes after TTL since its last write; a live one stays."""
        old = self.store.create_upload()
        live = self.store.create_upload()
        cleaner = StoreCleaner(
            self.store, cache=None, downloads=None, uploads=CleanupPolicy(tti=None, ttl=100.0)
        )
        self.clock.advance(60)
        self.store.write_upload(live, 0, b"more")
        self.clock.advance(41)
        result = cleaner.run_cleanup()
        self.assertEqual([(r.state, r.name) for r in result.removed], [("upload", old)])
        self.assertEqual([u.uid for u in self.store.list_uploads()], [live])

    def test_none_policy_leaves_state_alone(self) -> None:
        """A state whose policy is None is not even scanned."""
        digest = self.store.put_bytes(b"x").digest
        self.store.create_upload()
        self.clock.advance(100 * DEFAULT_TTL)
        result = StoreCleaner(self.store, cache=None, downloads=None, uploads=None).run_cleanup()
        self.assertEqual((result.removed, result.totals), ((), {}))
        self.assertTrue(self.store.has(digest))


class WatermarkTests(StoreTestCase):
    """Eviction of least recently used blobs above the high watermark."""

    def fill(self, count: int, size: int = 1000, first_seed: int = 0) -> list[Digest]:
        """``count`` new blobs of ``size`` bytes, accessed in order one minute apart."""
        digests = []
        for i in range(first_seed, first_seed + count):
            digests.append(self.store.put_bytes(blob_bytes(size, seed=i)).digest)
            self.clock.advance(60)
        return digests

    def test_evicts_lru_down_to_low(self) -> None:
        """Above the high watermark the least recently used go until at or below the low one."""
        d = self.fill(5)
        self.clock.advance(400)
        self.store.touch(d[0])  # now the most recently used
        cleaner = cache_only(
            self.store, CleanupPolicy(tti=None, ttl=None, high_watermark=3500, low_watermark=2500)
        )
        result = cleaner.run_cleanup()
        self.assertEqual([r.name for r in result.removed], [str(x) for x in d[1:4]])
        self.assertEqual({r.reason for r in result.removed}, {"watermark"})
        self.assertEqual(result.totals["cache"], 2000)
        self.assertEqual({b.digest for b in self.store.list_cache()}, {d[0], d[4]})

    def test_stops_exactly_at_low(self) -> None:
        """Eviction stops as soon as the total is at the low watermark, not below it."""
        d = self.fill(4)
        cleaner = cache_only(
            self.store, CleanupPolicy(tti=None, ttl=None, high_watermark=3500, low_watermark=3000)
        )
        result = cleaner.run_cleanup()
        self.assertEqual(result.removed_digests(), {d[0]})
        self.assertEqual(result.totals["cache"], 3000)

    def test_at_high_watermark_nothing_evicted(self) -> None:
        """Exactly at the high watermark nothing is evicted."""
        self.fill(3)
        cleaner = cache_only(self.store, CleanupPolicy(tti=None, ttl=None, high_watermark=3000))
        self.assertEqual(cleaner.run_cleanup().removed, ())
        result = cache_only(
            self.store, CleanupPolicy(tti=None, ttl=None, high_watermark=2999)
        ).run_cleanup()
        self.assertEqual(len(result.removed), 1)
        self.assertEqual(result.totals["cache"], 2000)

    def test_persisted_and_open_count_but_stay(self) -> None:
        """Persisted and open blobs count toward the total but are never evicted."""
        d = self.fill(4)
        self.store.set_persist(d[0], True)
        reader = self.store.open_reader(d[1])
        self.addCleanup(reader.close)
        cleaner = cache_only(
            self.store, CleanupPolicy(tti=None, ttl=None, high_watermark=1500, low_watermark=0)
        )
        result = cleaner.run_cleanup()
        self.assertEqual(result.removed_digests(), {d[2], d[3]})
        self.assertIn(str(d[1]), result.refused)
        self.assertNotIn(str(d[0]), result.refused)  # persisted ones are not even attempted
        self.assertTrue(self.store.has(d[0]))
        self.assertTrue(self.store.has(d[1]))
        self.assertEqual(result.totals["cache"], 2000)

    def test_time_rules_first(self) -> None:
        """Blobs removed by TTL no longer count toward the watermark."""
        old = self.fill(2)
        self.clock.advance(1000)
        new = self.fill(2, first_seed=2)
        cleaner = cache_only(self.store, CleanupPolicy(tti=None, ttl=1000.0, high_watermark=2000))
        result = cleaner.run_cleanup()
        self.assertEqual(result.removed_digests(), set(old))
        self.assertEqual({r.reason for r in result.removed}, {"ttl"})
        self.assertEqual({b.digest for b in self.store.list_cache()}, set(new))

    @settings(max_examples=20, deadline=None)
    @given(
        st.lists(
            st.tuples(st.integers(1, 3000), st.integers(0, 10_000), st.booleans(), st.booleans()),
            min_size=1,
            max_size=8,
        ),
        st.integers(0, 12_000),
        st.integers(0, 12_000),
    )
    def test_eviction_invariants(
        self, blobs: list[tuple[int, int, bool, bool]], a: int, b: int
    ) -> None:
        """
        Whatever the blobs, eviction never removes persisted or open ones, removes the least
        recently used first, and stops at the low watermark or when nothing removable is left.
        """
        low, high = sorted((a, b))
        clock = Clock()
        store = BlobStore(self.mktemp(), clock)
        protected: set[Digest] = set()
        readers = []
        digests = []
        for i, (size, _accessed, persisted, open_) in enumerate(blobs):
            digest = store.put_bytes(blob_bytes(size, seed=i)).digest
            digests.append(digest)
            if persisted:
                store.set_persist(digest, True)
                protected.add(digest)
            if open_:
                readers.append(store.open_reader(digest))
                protected.add(digest)
        for digest, accessed in sorted(
            zip(digests, (x[1] for x in blobs), strict=True), key=lambda p: p[1]
        ):
            clock.advance(accessed - clock.seconds())
            store.touch(digest, force=True)
        before = {x.digest: x for x in store.list_cache()}
        result = cache_only(
            store, CleanupPolicy(tti=None, ttl=None, high_watermark=high, low_watermark=low)
        ).run_cleanup()
        removed = result.removed_digests()
        after = {x.digest: x for x in store.list_cache()}
        self.assertFalse(removed & protected)
        self.assertEqual(set(before) - removed, set(after))
        total_before = sum(x.size for x in before.values())
        total_after = sum(x.size for x in after.values())
        self.assertEqual(result.totals["cache"], total_after)
        if total_before <= high:
            self.assertEqual(removed, set())
        else:
            removable_left = [x for x in after.values() if x.digest not in protected]
            self.assertTrue(total_after <= low or not removable_left)
            if removed and removable_left:
                newest_removed = max(before[d].last_access or 0 for d in removed)
                oldest_kept = min(x.last_access or 0 for x in removable_left)
                self.assertLessEqual(newest_removed, oldest_kept)
        for reader in readers:
            reader.close()
